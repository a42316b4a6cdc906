"""TransformerLens hook names from short kinds, and the one parser of names filters.

A leaf module (standard library only), like TransformerLens' ``utils.get_act_name``: the model, the
caches and the interventions import it, and importing it pulls in none of them.

Short kinds: ``resid_pre``, ``resid_mid``, ``resid_post``, ``attn_out``, ``mlp_out`` (block level),
``q``, ``k``, ``v``, ``z``, ``pattern``, ``attn_scores``, ``result`` (``attn.hook_*``) and
``mlp_pre``, ``mlp_post`` (``mlp.hook_*``). A kind containing ``hook_`` is used as the
block-relative name as is (``"attn.hook_z"``).

Example:
    >>> layer_hook_name("resid_post", 3)
    'blocks.3.hook_resid_post'
    >>> layer_hook_name("z", 0)
    'blocks.0.attn.hook_z'
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Collection, Sequence

__all__ = ["layer_hook_name", "hook_layer", "NamesFilter", "resolve_names", "ATTN_KINDS"]

ATTN_KINDS = frozenset({"q", "k", "v", "z", "pattern", "attn_scores", "result", "rot_q", "rot_k"})
_MLP_KINDS = {"mlp_pre": "mlp.hook_pre", "mlp_post": "mlp.hook_post"}
_BLOCK = re.compile(r"blocks\.(\d+)\.")

#: A hook selection: one name, a sequence of names, a predicate on names, or None (all).
NamesFilter = str | Sequence[str] | Callable[[str], bool] | None


def layer_hook_name(kind: str, layer: int) -> str:
    """The TransformerLens name of hook ``kind`` in decoder block ``layer``."""
    if "hook_" in kind:
        suffix = kind
    elif kind in ATTN_KINDS:
        suffix = f"attn.hook_{kind}"
    elif kind in _MLP_KINDS:
        suffix = _MLP_KINDS[kind]
    else:
        suffix = f"hook_{kind}"
    return f"blocks.{int(layer)}.{suffix}"


def hook_layer(name: str) -> int | None:
    """The decoder layer of a hook name, None outside the blocks.

    Example:
        >>> hook_layer("blocks.3.attn.hook_z"), hook_layer("ln_final.hook_normalized")
        (3, None)
    """
    found = _BLOCK.match(name)
    return None if found is None else int(found.group(1))


def resolve_names(names_filter: NamesFilter, valid: Collection[str]) -> list[str]:
    """Turn a names filter into the list of valid hook names it selects.

    Raises:
        ValueError: a named hook does not exist (the message lists the 5 closest valid names), a
            predicate selects nothing, or the filter has an unsupported type.
    """
    if names_filter is None:
        return list(valid)
    if callable(names_filter) and not isinstance(names_filter, str):
        names = [n for n in valid if names_filter(n)]
        if not names:
            raise ValueError("The names_filter predicate matched no hook of this model.")
        return names
    if isinstance(names_filter, str):
        names = [names_filter]
    elif isinstance(names_filter, Sequence):
        names = list(names_filter)
    else:
        raise ValueError(
            f"names_filter must be a hook name, a sequence of names, a predicate or None; got {type(names_filter)}."
        )
    valid_set = set(valid)
    for name in names:
        if name not in valid_set:
            close = difflib.get_close_matches(str(name), list(valid), n=5, cutoff=0.5)
            raise ValueError(f"Unknown hook name {name!r}. Closest valid names: {close}.")
    return names
