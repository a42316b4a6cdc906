"""Exact activation-patching grids across conditions: layers x position groups (x heads).

In the spirit of TransformerLens' ``patching.get_act_patch_resid_pre`` / ``get_act_patch_attn_head_out_*``:
run the **corrupt** prompts and, one cell at a time, overwrite an activation with the one the
**clean** prompts produced, then measure ``metric(patched) - metric(corrupt)``. The clean and corrupt
prompts are the paired conditions of the same requests (row ``i`` of ``clean`` and of ``corrupt`` are
the same sample), e.g. clean = TEXT_ONLY (the model refuses) and corrupt = IMAGE (it complies): a
large positive cell is where the text-only activation brings the refusal back.

Paired conditions have different lengths (an image adds image tokens), so the unit is a **position
group**, not a raw position (shape glossary: ``row`` paired rows, ``layer``, ``group``, ``head``):

- ``image``: the image tokens;
- ``instruction``: the user's text;
- ``template``: every other prompt token (BOS, role markers) except the last one;
- ``last``: the last prompt token (where the next token is read);
- ``generated`` (not in the default :data:`GROUPS`): tokens appended with
  :meth:`~vlminterp.prompts.PromptBatch.with_suffix` (a response), the last of them being ``last``.

Patching group ``g`` means: the k-th token of ``g`` in the corrupt row receives the k-th token of
``g`` in the clean row, for every k. A group is patched in a row pair only when it has the same,
non-zero number of tokens in both rows; otherwise that cell is **undefined** for the pair and holds
NaN. One exception: where an image block brings template tokens of its own (Gemma 3's
``<start_of_image>``, Qwen's ``<|vision_start|>``), the template tokens of the two rows are matched by
their longest common prefix and suffix of token ids, and the block's extra markers stay unpatched
(undefined when the shorter row's template is not covered that way). So ``image`` is undefined for
IMAGE vs TEXT_ONLY (use IMAGE vs BLANK to patch image tokens), and ``instruction`` is undefined for
IMAGE vs CAPTION (the caption is part of that text). Groups made of the same text in both conditions
(instruction, template, last under IMAGE vs TEXT_ONLY) line up token by token. Cell values are means
over the row pairs where the cell is defined.

A metric is any ``metric(logits) -> [batch]`` (one value per row, e.g. a refusal logit difference
at the last position); it sees every row, so a batch is patched in one forward per cell, and the
result equals patching each pair on its own.

Example:
    >>> from vlminterp import HookedVLM, Sample, Condition, PromptBatch
    >>> from PIL import Image
    >>> model = HookedVLM.tiny("llava")
    >>> s = [Sample(id="a", query="what is this ?", image=Image.new("RGB", (30, 30), "red"))]
    >>> clean = PromptBatch.paired(model, s, [Condition.TEXT_ONLY])
    >>> corrupt = PromptBatch.paired(model, s, [Condition.IMAGE])
    >>> grid = resid_grid(model, clean, corrupt, lambda logits: logits[:, -1, 0])
    >>> grid.values.shape, grid.groups
    (torch.Size([2, 4]), ('image', 'instruction', 'template', 'last'))
    >>> bool(grid.values[:, 0].isnan().all()), model.count_hooks()  # no image tokens in TEXT_ONLY
    (True, 0)
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from vlminterp.prompts import PromptBatch

if TYPE_CHECKING:
    from vlminterp.models.hooked_vlm import HookedVLM

__all__ = [
    "GROUPS",
    "ALL_GROUPS",
    "Metric",
    "PatchGrid",
    "GroupPairs",
    "group_pairs",
    "check_paired",
    "check_site",
    "evaluate",
    "resid_grid",
    "head_grid",
]

#: The position groups of a prompt, in grid order (the default of every grid).
GROUPS = ("image", "instruction", "template", "last")
#: Every group name :func:`group_pairs` accepts.
ALL_GROUPS = (*GROUPS, "generated")
#: ``metric(logits [batch, pos, d_vocab]) -> [batch]``: one value per row.
Metric = Callable[[Float[Tensor, "batch pos d_vocab"]], Float[Tensor, " batch"]]
#: Per row pair, the group's (clean positions, corrupt positions), or None where it is undefined
#: (``_k``: each pair's own length; rows differ).
GroupPairs = list[tuple[Int[Tensor, " _k"], Int[Tensor, " _k"]] | None]


@dataclass
class PatchGrid:
    """A patching (or attribution) grid with its labels.

    Attributes:
        effects: ``metric(patched) - metric(corrupt)`` per row pair and cell, NaN where undefined;
            ``[row, layer, group]`` for residual grids, ``[row, layer, group, head]`` for head grids.
        hook: The hook kind patched at every layer (``"resid_pre"``, ``"z"``, ...).
        method: ``"exact"`` (patched forwards) or ``"attribution"`` (linear estimate).
        groups: Labels of the group axis.
        clean_metric: The metric on the clean rows.
        corrupt_metric: The metric on the unpatched corrupt rows.
        sample_ids: Sample id of every row pair.
        conditions: ``(clean condition, corrupt condition)`` values.
    """

    effects: Float[Tensor, "row layer group *head"]
    hook: str
    method: str
    groups: tuple[str, ...]
    clean_metric: Float[Tensor, " row"]
    corrupt_metric: Float[Tensor, " row"]
    sample_ids: list[str]
    conditions: tuple[str, str]

    @property
    def values(self) -> Float[Tensor, "layer group *head"]:
        """Mean effect per cell over the row pairs where it is defined (NaN where none is)."""
        return self.effects.nanmean(0)

    @property
    def axes(self) -> tuple[str, ...]:
        """Names of the axes of :attr:`values`: ``("layer", "group")`` or ``("layer", "group", "head")``."""
        return ("layer", "group", "head")[: self.effects.dim() - 1]

    def to_rows(self, **context: Any) -> list[dict[str, Any]]:
        """One tidy row per cell: ``context`` keys, method, hook, conditions, layer, group, head, value, n.

        ``value`` is the mean effect (None where undefined), ``n`` the row pairs it averages;
        ``clean_metric`` and ``corrupt_metric`` are the means over all rows (for normalising).
        """
        values, counts = self.values, (~self.effects.isnan()).sum(0)
        base = {
            **context,
            "method": self.method,
            "hook": self.hook,
            "clean": self.conditions[0],
            "corrupt": self.conditions[1],
            "clean_metric": float(self.clean_metric.mean()),
            "corrupt_metric": float(self.corrupt_metric.mean()),
        }
        rows = []
        for cell in itertools.product(*map(range, values.shape)):
            value = float(values[cell])
            row = {**base, "layer": cell[0], "group": self.groups[cell[1]]}
            if len(cell) == 3:
                row["head"] = cell[2]
            rows.append(row | {"value": None if math.isnan(value) else value, "n": int(counts[cell])})
        return rows


def _group_mask(batch: PromptBatch, group: str) -> Bool[Tensor, "batch pos"]:
    last = torch.zeros_like(batch.attention_mask, dtype=torch.bool)
    last[:, -1] = True  # left padding: every row's last prompt token is the last column
    if group == "last":
        return last
    if group == "template":
        return batch.template_mask & batch.attention_mask.bool() & ~last
    return batch.masks[group] & ~last


def group_pairs(clean: PromptBatch, corrupt: PromptBatch, group: str) -> GroupPairs:
    """Where ``group`` sits in each clean row and its corrupt twin, matched token by token.

    Args:
        clean: The clean prompts.
        corrupt: The corrupt prompts, row ``i`` the same sample as ``clean``'s row ``i``.
        group: One of :data:`ALL_GROUPS`.

    Returns:
        Per row pair ``(clean positions, corrupt positions)``, or None when the group is empty in
        either row or has a different number of tokens in the two (undefined for that pair; the
        template is matched by common prefix and suffix then, see the module notes).

    Raises:
        ValueError: an unknown group, or batches whose rows are not the same samples.

    Example:
        >>> from vlminterp import HookedVLM, Sample, Condition, PromptBatch
        >>> model = HookedVLM.tiny("llava")
        >>> text = PromptBatch.paired(model, [Sample(id="a", query="hi")], [Condition.TEXT_ONLY])
        >>> group_pairs(text, text, "last")
        [(tensor([5]), tensor([5]))]
    """
    if group not in ALL_GROUPS:
        raise ValueError(f"Unknown position group {group!r}; choose from {list(ALL_GROUPS)}.")
    check_paired(clean, corrupt)
    pairs: GroupPairs = []
    for i, (a, b) in enumerate(zip(_group_mask(clean, group), _group_mask(corrupt, group), strict=True)):
        src, dst = a.nonzero()[:, 0], b.nonzero()[:, 0]
        if group == "template" and len(src) != len(dst):
            src, dst = _common_ends(
                src, dst, clean.input_ids[i, src].tolist(), corrupt.input_ids[i, dst].tolist()
            )
        pairs.append((src, dst) if 0 < len(src) == len(dst) else None)
    return pairs


def _common_ends(
    src: Int[Tensor, " m"], dst: Int[Tensor, " n"], src_ids: list[int], dst_ids: list[int]
) -> tuple[Int[Tensor, " k"], Int[Tensor, " k"]]:
    """Positions of the longest common prefix and suffix of two id lists, when they cover the shorter."""
    shorter = min(len(src_ids), len(dst_ids))
    p = 0
    while p < shorter and src_ids[p] == dst_ids[p]:
        p += 1
    s = 0
    while s < shorter - p and src_ids[-1 - s] == dst_ids[-1 - s]:
        s += 1
    if p + s < shorter:
        return src[:0], dst[:0]
    return torch.cat([src[:p], src[len(src) - s :]]), torch.cat([dst[:p], dst[len(dst) - s :]])


def check_paired(clean: PromptBatch, corrupt: PromptBatch) -> None:
    """Raise unless row ``i`` of ``clean`` and of ``corrupt`` are the same sample, for every ``i``."""
    if len(clean) != len(corrupt):
        raise ValueError(
            f"clean has {len(clean)} rows and corrupt {len(corrupt)}; build both with PromptBatch.paired "
            "from the same samples (one condition each) so row i of both is the same request."
        )
    for i, (a, b) in enumerate(zip(clean.sample_ids, corrupt.sample_ids, strict=True)):
        if a != b:
            raise ValueError(
                f"Row {i}: clean is sample {a!r} but corrupt is sample {b!r}; patching pairs rows of the "
                "same sample. Build both batches from the same samples in the same order."
            )


def evaluate(metric: Metric, logits: Float[Tensor, "batch pos d_vocab"]) -> Float[Tensor, " batch"]:
    """``metric(logits)``, checked to give one value per row."""
    out = metric(logits)
    if not isinstance(out, Tensor) or out.shape != (logits.shape[0],):
        shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ValueError(
            f"metric must return one value per row, a tensor of shape ({logits.shape[0]},); got {shape}. "
            "Reduce over positions and vocabulary inside the metric, not over rows."
        )
    return out


def check_site(hook: str, x: Float[Tensor, "..."], batch: PromptBatch) -> None:
    """Raise unless ``x`` (``hook`` on ``batch``) is ``[batch, pos, d]`` or ``[batch, pos, head, d]``."""
    if x.dim() not in (3, 4) or tuple(x.shape[:2]) != tuple(batch.input_ids.shape):
        raise ValueError(
            f"Hook kind {hook!r} gives activations of shape {tuple(x.shape)} on a batch of shape "
            f"{tuple(batch.input_ids.shape)}; patching grids take [batch, pos, d] hooks (resid_pre, "
            "resid_mid, resid_post, attn_out, mlp_out) or [batch, pos, head, d_head] hooks (z)."
        )


def _patch_hook(
    x: Float[Tensor, "batch pos ..."],
    hook: Any,
    *,
    source: Float[Tensor, "row src_pos ..."],
    blocks: Sequence[tuple[GroupPairs, int | None]],
) -> Float[Tensor, "batch pos ..."]:
    """Block ``b`` (rows ``b * row .. (b + 1) * row``) gets its group's clean tokens (one head, or all)."""
    out = x.clone()
    n = source.shape[0]
    for b, (pairs, head) in enumerate(blocks):
        for i, pair in enumerate(pairs):
            if pair is not None:
                src, dst = pair
                at = () if head is None else (head,)
                out[(b * n + i, dst, *at)] = source[(i, src, *at)].to(out.dtype)
    return out


def _exact_grid(
    model: HookedVLM,
    clean: PromptBatch,
    corrupt: PromptBatch,
    metric: Metric,
    hook: str,
    groups: Sequence[str],
    per_head: bool,
    max_rows: int,
) -> PatchGrid:
    if max_rows < 1:
        raise ValueError(f"max_rows must be >= 1, got {max_rows}.")
    pairs = {g: group_pairs(clean, corrupt, g) for g in groups}
    names = model.hook_names(hook)
    clean_logits, cache = model.run_with_cache(clean, names_filter=names, device=model.device)
    check_site(hook, cache[names[0]], clean)
    with torch.no_grad():
        clean_metric = evaluate(metric, clean_logits)
        corrupt_metric = evaluate(metric, model(corrupt))
    heads: list[int | None] = list(range(model.cfg.n_heads)) if per_head else [None]
    n = len(corrupt)
    effects = torch.full((n, len(names), len(groups), len(heads)), float("nan"), dtype=torch.float64)
    # Cells (group, head) with a defined row pair; several stacked in one forward, each a copy of the rows.
    cells = [(g, h) for g, group in enumerate(groups) if any(pairs[group]) for h in range(len(heads))]
    per_forward = max(1, max_rows // n)
    stacked: dict[int, PromptBatch] = {}
    for layer, name in enumerate(names):
        for start in range(0, len(cells), per_forward):
            chunk = cells[start : start + per_forward]
            if len(chunk) not in stacked:
                stacked[len(chunk)] = PromptBatch.concat([corrupt] * len(chunk))
            blocks = [(pairs[groups[g]], heads[h]) for g, h in chunk]
            patch = partial(_patch_hook, source=cache[name], blocks=blocks)
            with torch.no_grad():
                logits = model.run_with_hooks(stacked[len(chunk)], fwd_hooks=[(name, patch)])
                patched = evaluate(metric, logits).view(len(chunk), n)
            for (g, h), values in zip(chunk, patched - corrupt_metric, strict=True):
                rows = [i for i, p in enumerate(pairs[groups[g]]) if p is not None]
                effects[rows, layer, g, h] = values[rows].double().cpu()
    if not per_head:
        effects = effects[..., 0]
    return PatchGrid(
        effects=effects,
        hook=hook,
        method="exact",
        groups=tuple(groups),
        clean_metric=clean_metric.detach().double().cpu(),
        corrupt_metric=corrupt_metric.detach().double().cpu(),
        sample_ids=list(corrupt.sample_ids),
        conditions=(clean.conditions[0].value, corrupt.conditions[0].value),
    )


def resid_grid(
    model: HookedVLM,
    clean: PromptBatch,
    corrupt: PromptBatch,
    metric: Metric,
    hook: str = "resid_pre",
    groups: Sequence[str] = GROUPS,
    max_rows: int = 64,
) -> PatchGrid:
    """Exact patching of a residual-stream hook per layer x position group (clean into corrupt).

    One patched corrupt run per (layer, group) cell with at least one defined row pair (plus one
    clean run with a cache and one unpatched corrupt run). Runs of one layer are stacked into one
    forward of up to ``max_rows`` rows (each cell a copy of the corrupt rows); the values equal one
    cell per forward.

    Args:
        model: The model.
        clean: Source prompts (e.g. TEXT_ONLY).
        corrupt: Prompts that are run and patched (e.g. IMAGE), row ``i`` the same sample as in ``clean``.
        metric: ``metric(logits) -> [batch]``.
        hook: A ``[batch, pos, d_model]`` hook kind: ``resid_pre``, ``resid_mid``, ``resid_post``,
            ``attn_out``, ``mlp_out``.
        groups: Position groups to patch (default :data:`GROUPS`).
        max_rows: Rows per forward when cells are stacked (at least one cell per forward).

    Returns:
        A :class:`PatchGrid` whose ``values`` are ``[layer, group]``.

    Raises:
        ValueError: unpaired batches, an unknown group or hook, a metric that does not return ``[batch]``.
    """
    return _exact_grid(model, clean, corrupt, metric, hook, groups, per_head=False, max_rows=max_rows)


def head_grid(
    model: HookedVLM,
    clean: PromptBatch,
    corrupt: PromptBatch,
    metric: Metric,
    groups: Sequence[str] = GROUPS,
    max_rows: int = 64,
) -> PatchGrid:
    """Exact patching of each head's output (``attn.hook_z``) per layer x position group x head.

    The head's ``z`` (its attention-weighted values, before the output projection) at the group's
    tokens is copied from the clean run; other heads and positions keep the corrupt values.

    Args:
        model: The model.
        clean: Source prompts.
        corrupt: Patched prompts, paired row by row with ``clean``.
        metric: ``metric(logits) -> [batch]``.
        groups: Position groups to patch (default :data:`GROUPS`).
        max_rows: Rows per forward when cells are stacked (see :func:`resid_grid`).

    Returns:
        A :class:`PatchGrid` whose ``values`` are ``[layer, group, head]``.
    """
    return _exact_grid(model, clean, corrupt, metric, "z", groups, per_head=True, max_rows=max_rows)
