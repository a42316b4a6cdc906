"""Activation patching: copy activations of a source run into this run (prompt pass only).

The source is an :class:`~vlminterp.cache.ActivationCache` of the same rows in the same order (e.g.
the TEXT_ONLY twins of IMAGE prompts). Positions count from the end, so a source run of another
length (no image tokens) lines up with the target at its last tokens (left padding aligns every
row's last token).

Example:
    >>> from vlminterp import HookedVLM, Sample, Condition, PromptBatch
    >>> from vlminterp.interventions.patching import ActivationPatch
    >>> model = HookedVLM.tiny("llava")
    >>> text = PromptBatch.paired(model, [Sample(id="a", query="hi")], [Condition.TEXT_ONLY])
    >>> _, cache = model.run_with_cache(text, names_filter=model.hook_names("resid_post", [1]))
    >>> patch = ActivationPatch(cache, hook="resid_post", layers=1, positions="last")
    >>> with patch.applied(model):
    ...     patched = model.forward(text)
    >>> bool((patched == model.forward(text)).all())
    True
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any

from jaxtyping import Float
from torch import Tensor

from vlminterp.interventions.base import Intervention, PreparedRun, model_dtype
from vlminterp.interventions.site import LayerSpec, PositionSpec

if TYPE_CHECKING:
    from vlminterp.models.hooked_vlm import HookedVLM
    from vlminterp.prompts import PromptBatch

__all__ = ["ActivationPatch"]


def _patch_hook(
    x: Float[Tensor, "batch pos ..."],
    hook: Any,
    *,
    source: Float[Tensor, "batch src_pos ..."],
    positions: list[int] | None,
    heads: list[int] | None,
    name: str,
) -> Float[Tensor, "batch pos ..."]:
    if source.shape[0] != x.shape[0] or source.shape[2:] != x.shape[2:]:
        raise ValueError(
            f"ActivationPatch at {name!r}: the source cache has shape {tuple(source.shape)} but the run has "
            f"{tuple(x.shape)}; the source must come from a run of the same rows (same order) as this batch."
        )
    if positions is None and source.shape[1] != x.shape[1]:
        raise ValueError(
            f"ActivationPatch at {name!r}: positions='all' needs source and run of equal length, got "
            f"{source.shape[1]} and {x.shape[1]}. Patch positions counted from the end instead (e.g. positions=[-1])."
        )
    idx = list(range(-x.shape[1], 0)) if positions is None else positions
    if -min(idx) > min(x.shape[1], source.shape[1]):
        raise ValueError(
            f"ActivationPatch at {name!r}: position {min(idx)} is outside a run of {x.shape[1]} and a source of "
            f"{source.shape[1]} positions."
        )
    out = x.clone()
    if heads is None:
        out[:, idx] = source[:, idx]
    else:
        patched = out[:, idx]
        patched[:, :, heads] = source[:, idx][:, :, heads]
        out[:, idx] = patched
    return out


class ActivationPatch(Intervention):
    """Copy activations of a source run into this run at a hook kind, layers and positions (prompt pass only).

    Args:
        source_cache: An :class:`~vlminterp.cache.ActivationCache` (or ``{hook name: tensor}``) of a run
            of the same rows, captured with ``positions=None`` (``[batch, src_pos, ...]``) or, for
            ``positions="last"``, with ``positions="last"`` (``[batch, ...]``).
        hook: Short hook kind to patch (``"resid_post"``, ``"z"``, ``"attn_out"``, ...).
        layers: None/``"all"`` (every layer), ``"second_half"``, an int or a list (negative: from the
            end); each layer's hook must be in the cache.
        positions: ``"all"`` (source and run of equal length), ``"last"``, or negative ints counted
            from the end (``[-3, -2, -1]``); left padding aligns every row's last token.
        heads: For head-shaped hooks (``"z"``, ``[batch, pos, head, d_head]``): patch only these heads.

    Example:
        >>> from vlminterp import HookedVLM, Sample, Condition, PromptBatch
        >>> model = HookedVLM.tiny("llava")
        >>> batch = PromptBatch.paired(model, [Sample(id="a", query="hi")], [Condition.TEXT_ONLY])
        >>> _, cache = model.run_with_cache(batch, names_filter=model.hook_names("z"))
        >>> patch = ActivationPatch(cache, hook="z", layers=-1, positions=[-2, -1], heads=[0])
        >>> patch.to_dict()["positions"], patch.to_dict()["layers"]
        ([-2, -1], [-1])
    """

    def __init__(
        self,
        source_cache: Mapping[str, Tensor],
        hook: str = "resid_post",
        layers: LayerSpec = None,
        positions: PositionSpec = "all",
        heads: Sequence[int] | None = None,
    ):
        super().__init__(layers=layers, hook=hook, positions=positions, steps="prefill")
        self.captured_last = getattr(source_cache, "positions", None) == "last"
        if self.captured_last and self.positions not in ("last", (-1,)):
            raise ValueError(
                "ActivationPatch: a cache captured with positions='last' can only patch positions='last'."
            )
        self.source_cache = source_cache
        self.heads = None if heads is None else [int(h) for h in heads]

    def prepare(self, model: HookedVLM, batch: PromptBatch | None) -> PreparedRun:
        """One hook per layer copying the source, cast once to the model's device and dtype."""
        names = self.site.hook_names(model)
        missing = [n for n in names if n not in self.source_cache]
        if missing:
            raise ValueError(
                f"ActivationPatch: hooks {missing} are not in the source cache (it holds "
                f"{sorted(self.source_cache)[:8]}). Capture them with model.run_with_cache(source_batch, "
                "names_filter=...), or choose layers= that were captured."
            )
        positions = (
            None if self.positions == "all" else [-1] if self.positions == "last" else list(self.positions)
        )
        dtype, hooks = model_dtype(model), []
        for name in names:
            source = self.source_cache[name].unsqueeze(1) if self.captured_last else self.source_cache[name]
            source = source.to(model.device, dtype if source.is_floating_point() else source.dtype)
            hooks.append(
                (name, partial(_patch_hook, source=source, positions=positions, heads=self.heads, name=name))
            )
        return PreparedRun(batch, hooks)

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "heads": self.heads}
