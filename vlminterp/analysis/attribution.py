"""Attribution patching across conditions: the linear estimate of every patching cell at once.

For clean and corrupt prompts paired row by row (see :mod:`vlminterp.analysis.patching` for
position groups and when a cell is defined), the effect of patching the clean activation ``c`` into
the corrupt run at the group's tokens is estimated to first order as

``metric(patched) - metric(corrupt) ≈ Σ_k grad_k · (c_k - x_k)``

where ``x_k`` is the corrupt activation at the group's k-th token, ``c_k`` the clean one at the k-th
token of the same group, and ``grad_k = ∂ metric / ∂ x_k`` on the corrupt run. Per head (``attn.hook_z``,
``[batch, pos, head, d_head]``) the sum runs over the group's tokens and ``d_head``, one value per head.
Every layer x group (x head) comes from **2 forwards and 1 backward**: a clean forward with a cache,
a corrupt forward that keeps the activations in the autograd graph, and one backward of the summed
metric (rows do not interact, so each row gets its own metric's gradient). The result is a
:class:`~vlminterp.analysis.patching.PatchGrid` of the same shape as the exact grids, so the two
compare cell by cell (:func:`rank_correlation`).

Example:
    >>> from vlminterp import HookedVLM, Sample, Condition, PromptBatch
    >>> from PIL import Image
    >>> model = HookedVLM.tiny("llava")
    >>> s = [Sample(id="a", query="what is this ?", image=Image.new("RGB", (30, 30), "red"))]
    >>> clean = PromptBatch.paired(model, s, [Condition.TEXT_ONLY])
    >>> corrupt = PromptBatch.paired(model, s, [Condition.IMAGE])
    >>> grids = attribution_grids(model, clean, corrupt, lambda logits: logits[:, -1, 0])
    >>> grids["resid_pre"].values.shape, grids["z"].values.shape, model.count_hooks()
    (torch.Size([2, 4]), torch.Size([2, 4, 4]), 0)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Float
from torch import Tensor

from vlminterp.analysis.patching import GROUPS, Metric, PatchGrid, check_site, evaluate, group_pairs
from vlminterp.prompts import PromptBatch

if TYPE_CHECKING:
    from vlminterp.models.hooked_vlm import HookedVLM

__all__ = ["attribution_grids", "rank_correlation", "compare"]


def attribution_grids(
    model: HookedVLM,
    clean: PromptBatch,
    corrupt: PromptBatch,
    metric: Metric,
    hooks: Sequence[str] = ("resid_pre", "z"),
    groups: Sequence[str] = GROUPS,
) -> dict[str, PatchGrid]:
    """Attribution-patching estimates of patching ``clean`` into ``corrupt``, per hook kind.

    Args:
        model: The model.
        clean: Source prompts (e.g. TEXT_ONLY).
        corrupt: Prompts the gradient is taken on (e.g. IMAGE), row ``i`` the same sample as in ``clean``.
        metric: ``metric(logits) -> [batch]`` (differentiable).
        hooks: Hook kinds estimated at every layer: ``[batch, pos, d]`` kinds (``resid_pre``, ...) give
            ``[layer, group]`` grids, ``[batch, pos, head, d_head]`` kinds (``z``) ``[layer, group, head]``.
        groups: Position groups (default :data:`~vlminterp.analysis.patching.GROUPS`).

    Returns:
        Hook kind -> :class:`~vlminterp.analysis.patching.PatchGrid` (``method="attribution"``), the
        same shape as :func:`~vlminterp.analysis.patching.resid_grid` (``resid_*``) and
        :func:`~vlminterp.analysis.patching.head_grid` (``z``).

    Raises:
        ValueError: unpaired batches, an unknown group or hook, a hook not shaped ``[batch, pos, ...]``,
            a metric that does not return ``[batch]``.
    """
    pairs = {g: group_pairs(clean, corrupt, g) for g in groups}
    names = {kind: model.hook_names(kind) for kind in hooks}
    flat = [n for kind in hooks for n in names[kind]]
    clean_logits, cache = model.run_with_cache(clean, names_filter=flat, device=model.device)
    for kind in hooks:
        check_site(kind, cache[names[kind][0]], clean)
    acts: dict[str, Tensor] = {}

    def keep(x: Float[Tensor, "batch pos ..."], hook: Any, name: str) -> Float[Tensor, "batch pos ..."]:
        acts[name] = x
        return x  # returned, so a hook that converts shapes (hook_z) feeds this very tensor on

    fwd = [(n, lambda x, hook, n=n: keep(x, hook, n)) for n in flat]
    corrupt_metric = evaluate(metric, model.run_with_hooks(corrupt, fwd_hooks=fwd, grad=True))
    grads = dict(zip(flat, torch.autograd.grad(corrupt_metric.sum(), [acts[n] for n in flat]), strict=True))
    with torch.no_grad():
        clean_metric = evaluate(metric, clean_logits)
    out = {}
    for kind in hooks:
        layers = []
        for name in names[kind]:
            x, grad, c = acts[name].detach(), grads[name], cache[name]
            per_group = []
            for g in groups:
                cells = []
                for i, pair in enumerate(pairs[g]):
                    extra = x.shape[2:-1]  # (head,) for per-head hooks, () otherwise
                    if pair is None:
                        cells.append(torch.full(extra, float("nan"), dtype=torch.float64))
                        continue
                    src, dst = pair
                    term = grad[i, dst].double() * (c[i, src] - x[i, dst]).double()
                    cells.append(term.sum(dim=(0, -1)).cpu())
                per_group.append(torch.stack(cells))
            layers.append(torch.stack(per_group, dim=1))
        out[kind] = PatchGrid(
            effects=torch.stack(layers, dim=1),
            hook=kind,
            method="attribution",
            groups=tuple(groups),
            clean_metric=clean_metric.detach().double().cpu(),
            corrupt_metric=corrupt_metric.detach().double().cpu(),
            sample_ids=list(corrupt.sample_ids),
            conditions=(clean.conditions[0].value, corrupt.conditions[0].value),
        )
    return out


def _ranks(x: Float[Tensor, " n"]) -> Float[Tensor, " n"]:
    """Ranks from 1, ties sharing their average rank."""
    order = x.argsort()
    ranks = torch.empty_like(x)
    ranks[order] = torch.arange(1, len(x) + 1, dtype=x.dtype)
    for value in x.unique():
        tied = x == value
        ranks[tied] = ranks[tied].mean()
    return ranks


def rank_correlation(a: Float[Tensor, "*cells"], b: Float[Tensor, "*cells"]) -> tuple[float, int]:
    """Spearman's rank correlation of ``a`` and ``b`` over the cells finite in both, and their count.

    Ties get their average rank; NaN when fewer than two cells remain or either side is constant.

    Example:
        >>> a, b = torch.tensor([1.0, 2.0, 3.0, float("nan")]), torch.tensor([10.0, 30.0, 20.0, 5.0])
        >>> rho, n = rank_correlation(a, b)
        >>> round(rho, 6), n
        (0.5, 3)
    """
    if a.shape != b.shape:
        raise ValueError(
            f"rank_correlation needs two grids of one shape, got {tuple(a.shape)} and {tuple(b.shape)}."
        )
    a, b = a.double().flatten(), b.double().flatten()
    keep = a.isfinite() & b.isfinite()
    n = int(keep.sum())
    if n < 2:
        return math.nan, n
    ra, rb = _ranks(a[keep]), _ranks(b[keep])
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denominator = float(ra.norm() * rb.norm())
    return (float((ra * rb).sum()) / denominator if denominator > 0 else math.nan), n


def compare(exact: PatchGrid, estimate: PatchGrid) -> dict[str, Any]:
    """How well ``estimate`` ranks the cells of ``exact``: Spearman correlation of their mean values.

    Returns:
        ``{"hook", "clean", "corrupt", "spearman", "cells", "max_abs_exact", "max_abs_estimate"}``
        (``cells``: cells defined in both).

    Raises:
        ValueError: grids of different hooks, conditions, groups or shapes.
    """
    same = (exact.hook, exact.conditions, exact.groups) == (
        estimate.hook,
        estimate.conditions,
        estimate.groups,
    )
    if not same or exact.values.shape != estimate.values.shape:
        raise ValueError(
            f"compare needs grids of one hook, condition pair, groups and shape; got {exact.hook} "
            f"{exact.conditions} {tuple(exact.values.shape)} and {estimate.hook} {estimate.conditions} "
            f"{tuple(estimate.values.shape)}."
        )
    rho, cells = rank_correlation(exact.values, estimate.values)
    return {
        "hook": exact.hook,
        "clean": exact.conditions[0],
        "corrupt": exact.conditions[1],
        "spearman": rho,
        "cells": cells,
        "max_abs_exact": float(exact.values.nan_to_num().abs().max()),
        "max_abs_estimate": float(estimate.values.nan_to_num().abs().max()),
    }
