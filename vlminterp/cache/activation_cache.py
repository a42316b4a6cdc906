"""ActivationCache: hook name -> detached CPU tensor, with TransformerLens-style lookups.

Shape glossary (``pos`` is absent when positions were selected at capture time with ``"last"``,
``"last_instruction"``, ``"mean_text"`` or an int):

- ``blocks.{l}.hook_resid_pre/mid/post``, ``hook_attn_out``, ``hook_mlp_out``: ``[batch, pos, d_model]``
- ``blocks.{l}.attn.hook_q/k/v/z``: ``[batch, pos, head_index, d_head]``
- ``blocks.{l}.attn.hook_pattern/hook_attn_scores``: ``[batch, head_index, query_pos, key_pos]``

The cache holds no reference to the model.

Example:
    >>> from vlminterp import HookedVLM, Sample, Condition, PromptBatch
    >>> model = HookedVLM.tiny("llava")
    >>> batch = PromptBatch.paired(model, [Sample(id="a", query="what is this ?")], [Condition.TEXT_ONLY])
    >>> _, cache = model.run_with_cache(batch, names_filter=model.hook_names("resid_post"), positions="last")
    >>> cache["resid_post", 1].shape
    torch.Size([1, 64])
    >>> cache.stack("resid_post").shape
    torch.Size([2, 1, 64])
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from vlminterp.hook_names import layer_hook_name

__all__ = ["ActivationCache"]


class ActivationCache(Mapping[str, Tensor]):
    """A read-only mapping of hook names to cached activations.

    Args:
        data: hook name -> tensor.
        positions: The position selection applied at capture time (``None`` = full sequences).
        meta: Row metadata of the batch (conditions, sample ids, labels).
    """

    def __init__(self, data: dict[str, Tensor], positions: Any = None, meta: dict[str, Any] | None = None):
        self._data = dict(data)
        self.positions = positions
        self.meta = meta or {}

    def __getitem__(self, key: str | tuple[str, int]) -> Tensor:
        name = layer_hook_name(key[0], key[1]) if isinstance(key, tuple) else key
        if name not in self._data:
            import difflib

            close = difflib.get_close_matches(name, list(self._data), n=5, cutoff=0.3)
            raise KeyError(f"{name!r} is not in this cache. Cached names close to it: {close}.")
        return self._data[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __repr__(self) -> str:
        return f"ActivationCache({len(self)} hooks, positions={self.positions!r})"

    def stack(self, kind: str, layers: Sequence[int] | None = None) -> Float[Tensor, "layers ..."]:
        """Stack one hook kind over layers: ``cache.stack("resid_post")`` -> ``[layers, batch, ...]``.

        Args:
            kind: A short hook kind (``"resid_post"``, ``"z"``, ...) or a block-relative name.
            layers: Layers to stack; default every layer present in the cache, ascending.
        """
        if layers is None:
            layers = sorted(
                int(n.split(".")[1])
                for n in self._data
                if n.startswith("blocks.") and n == layer_hook_name(kind, int(n.split(".")[1]))
            )
            if not layers:
                raise KeyError(
                    f"No {kind!r} activations in this cache; cached names: {list(self._data)[:8]}..."
                )
        return torch.stack([self[kind, layer] for layer in layers])

    def to(self, device: str | torch.device) -> ActivationCache:
        """A copy with every tensor on ``device``."""
        return ActivationCache({k: v.to(device) for k, v in self._data.items()}, self.positions, self.meta)
