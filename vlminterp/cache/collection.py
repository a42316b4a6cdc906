"""One ``ActivationStore.collect`` call's work: its validated plan, each shard's forwards and statistics.

:func:`plan_collection` checks every argument once and returns a :class:`CollectPlan`;
:func:`run_shard` runs one shard's samples through the model, one forward per condition and batch
(on an accelerator, prompts of the next batch built by :func:`prompt_batches` in a background
thread meanwhile),
and returns its :class:`~vlminterp.cache.running_stats.RunningStats` per (hook, condition, label)
and its per-sample vectors. Shard statistics are stored as flat tensors
(:func:`stats_tensors` / :func:`stats_from_tensors`), merged in a fixed key order
(:func:`merge_into`) and, under ``torch.distributed``, all-reduced in float64 (:func:`all_reduce`).

Example:
    >>> from vlminterp import HookedVLM, Sample
    >>> model = HookedVLM.tiny("llava")
    >>> samples = [Sample(id="a", query="hi")]
    >>> plan = plan_collection(
    ...     model, samples, ["text_only"], hooks="resid_post", layers=[1], positions="last", batch_size=8,
    ...     shard_size=256, out_dir=None, keep="stats", covariance=False, dtype="float32", prompt_options={},
    ... )
    >>> plan.layers, plan.names["resid_post"]
    ([1], ['blocks.1.hook_resid_post'])
    >>> stats, vectors = run_shard(model, samples, plan)
    >>> stats[("resid_post", "text_only", UNLABELED)].count, vectors
    (1, {})
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from vlminterp.cache.running_stats import RunningStats
from vlminterp.cache.shards import torch_dtype
from vlminterp.positions import check_positions
from vlminterp.prompts import Condition, PromptBatch, Sample

__all__ = [
    "UNLABELED",
    "KEEP_CHOICES",
    "StatsKey",
    "CollectPlan",
    "label_key",
    "plan_collection",
    "prompt_batches",
    "run_shard",
    "stats_tensors",
    "stats_from_tensors",
    "merge_into",
    "all_reduce",
]

#: The label key of samples whose ``label`` is None.
UNLABELED = "unlabeled"
#: What a collection keeps: float64 statistics, per-sample vectors on disk, or both.
KEEP_CHOICES = ("stats", "vectors", "both")
#: A statistics key: (hook kind, condition value, label key).
StatsKey = tuple[str, str, str]


def label_key(label: str | None) -> str:
    """The statistics key of a sample label (:data:`UNLABELED` for None).

    Example:
        >>> label_key(None), label_key("harmful")
        ('unlabeled', 'harmful')
    """
    return UNLABELED if label is None else label


@dataclass(frozen=True)
class CollectPlan:
    """The validated arguments of one collect call (see :meth:`~vlminterp.cache.ActivationStore.collect`)."""

    conditions: list[Condition]
    hooks: tuple[str, ...]
    layers: list[int]
    names: dict[str, list[str]]  # hook kind -> hook name per layer
    positions: str | int
    batch_size: int
    shard_size: int
    keep: str
    covariance: bool
    dtype: torch.dtype  # of stored vectors (statistics are float64)
    prompt_options: dict[str, Any]
    prefetch: bool  # build the next batch's prompts in a background thread

    @property
    def stop_at_layer(self) -> int:
        """Blocks each forward runs: up to the last collected layer (no final norm, no unembedding)."""
        return max(self.layers) + 1

    @property
    def keeps_stats(self) -> bool:
        return self.keep in ("stats", "both")

    @property
    def keeps_vectors(self) -> bool:
        return self.keep in ("vectors", "both")


def plan_collection(
    model: Any,
    samples: Sequence[Sample],
    conditions: Sequence[Condition | str],
    hooks: Sequence[str] | str,
    layers: Sequence[int] | None,
    positions: Any,
    batch_size: int,
    shard_size: int,
    out_dir: str | Path | None,
    keep: str,
    covariance: bool,
    dtype: str | torch.dtype,
    prompt_options: dict[str, Any],
    *,
    prefetch: bool | None = None,
) -> CollectPlan:
    """Check the arguments of :meth:`~vlminterp.cache.ActivationStore.collect` (described there) once.

    Raises:
        ValueError: no samples or repeated ids, no or repeated conditions, bad hooks or layers, a
            non-positive batch or shard size, an unknown ``keep``, vectors without ``out_dir``,
            covariance without statistics, or an unknown prompt option.
    """
    if not samples:
        raise ValueError("ActivationStore.collect needs at least one sample.")
    ids = [s.id for s in samples]
    if len(set(ids)) != len(ids):
        dupes = sorted({i for i in ids if ids.count(i) > 1})[:5]
        raise ValueError(f"Sample ids must be unique within a collection; repeated: {dupes}.")
    conds = [Condition.parse(c) for c in conditions]
    if not conds:
        raise ValueError(
            f"ActivationStore.collect needs at least one condition; choose from {[c.value for c in Condition]}."
        )
    if len(set(conds)) != len(conds):
        raise ValueError(f"Conditions must be distinct, got {[c.value for c in conds]}.")
    hook_kinds = (hooks,) if isinstance(hooks, str) else tuple(hooks)
    if not hook_kinds or len(set(hook_kinds)) != len(hook_kinds):
        raise ValueError(
            f"hooks must be one or more distinct hook kinds such as 'resid_post', got {hooks!r}."
        )
    n_layers = model.cfg.n_layers
    chosen = list(range(n_layers)) if layers is None else list(layers)
    bad = [
        x
        for x in chosen
        if isinstance(x, bool) or not isinstance(x, (int, np.integer)) or not 0 <= x < n_layers
    ]
    if bad or not chosen or len(set(chosen)) != len(chosen):
        raise ValueError(
            f"layers={list(chosen)!r} is invalid for a {n_layers}-layer model: give distinct ints in 0..{n_layers - 1} "
            "(or None for every layer)."
        )
    chosen = [int(x) for x in chosen]
    names = {kind: model.hook_names(kind, chosen) for kind in hook_kinds}
    positions = check_positions(positions, per_row=True)
    for name, value in (("batch_size", batch_size), ("shard_size", shard_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}.")
    if keep not in KEEP_CHOICES:
        raise ValueError(f"keep must be one of {list(KEEP_CHOICES)}, got {keep!r}.")
    if keep != "stats" and out_dir is None:
        raise ValueError(f"keep={keep!r} writes per-sample vectors to disk: pass out_dir=.")
    if covariance and keep == "vectors":
        raise ValueError("covariance=True is a statistic: use keep='stats' or keep='both'.")
    unknown = set(prompt_options) - {"blank", "noise_seed", "caption_template"}
    if unknown:
        raise ValueError(
            f"Unknown prompt options {sorted(unknown)}; PromptBatch.paired accepts blank, noise_seed, caption_template."
        )
    return CollectPlan(
        conditions=conds,
        hooks=hook_kinds,
        layers=chosen,
        names=names,
        positions=positions,
        batch_size=batch_size,
        shard_size=shard_size,
        keep=keep,
        covariance=bool(covariance),
        dtype=torch_dtype(dtype),
        prompt_options=dict(prompt_options),
        prefetch=model.device.type != "cpu" if prefetch is None else bool(prefetch),
    )


# ---------------------------------------------------------------------- one shard
def prompt_batches(model: Any, samples: Sequence[Sample], plan: CollectPlan) -> Iterator[PromptBatch]:
    """The shard's forward batches (``PromptBatch.paired`` of ``plan.batch_size`` samples each), in order.

    With ``plan.prefetch`` one background thread builds batch ``k + 1`` (tokenizer, chat template,
    image processor) while the caller runs batch ``k``'s forward, which releases the GIL inside
    torch; the batches are the same objects the sequential path builds, so results are bit-identical.
    A build error is raised when its batch is reached, as without prefetch. The default turns it on
    for a model on an accelerator, whose forward leaves the host CPU idle, and off on CPU, where
    torch's threads already use every core: there prompt building is 0.3-3% of a forward and the
    extra thread measured slower, not faster (``benchmarks/bench_collect.py``).

    Example:
        >>> from vlminterp import HookedVLM, Sample
        >>> model = HookedVLM.tiny("llava")
        >>> samples = [Sample(id=f"s{i}", query="hi") for i in range(3)]
        >>> plan = plan_collection(
        ...     model, samples, ["text_only"], hooks="resid_post", layers=None, positions="last",
        ...     batch_size=2, shard_size=256, out_dir=None, keep="stats", covariance=False,
        ...     dtype="float32", prompt_options={},
        ... )
        >>> [b.sample_ids for b in prompt_batches(model, samples, plan)]
        [['s0', 's1'], ['s2']]
    """

    def build(start: int) -> PromptBatch:
        chunk = samples[start : start + plan.batch_size]
        return PromptBatch.paired(model, chunk, plan.conditions, **plan.prompt_options)

    starts = range(0, len(samples), plan.batch_size)
    if not plan.prefetch:
        yield from map(build, starts)
        return
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="vlminterp-prompts") as pool:
        pending = pool.submit(build, starts[0])
        for nxt in [*starts[1:], None]:
            batch = pending.result()
            if nxt is not None:
                pending = pool.submit(build, nxt)
            yield batch


def run_shard(
    model: Any, samples: Sequence[Sample], plan: CollectPlan
) -> tuple[dict[StatsKey, RunningStats], dict[str, Tensor]]:
    """Statistics and stacked vectors (``vectors/{hook}/{condition}/{layer}`` -> [n, d]) of one shard.

    Statistics are updated from the activations as the model computed them (float64 accumulation);
    only the stored vectors are cast to ``plan.dtype``. Each forward stops after the last collected
    layer (``plan.stop_at_layer``): later blocks, the final norm and the unembedding are never run,
    and, like every forward that returns no KV cache, it fills none (``use_cache=False``). The hooks keep their slices on the model's
    device and each batch's ``[rows, layers, d]`` block is copied to the host once: a copy inside
    every hook would make an accelerator wait for the host once per hooked layer.
    """
    stats: dict[StatsKey, RunningStats] = {}
    chunks: dict[tuple[str, str], list[Tensor]] = {}
    all_names = [n for names in plan.names.values() for n in names]
    for paired in prompt_batches(model, samples, plan):
        for cond in plan.conditions:
            batch = paired.select(paired.rows(cond))
            _, cache = model.run_with_cache(
                batch,
                names_filter=all_names,
                positions=plan.positions,
                device=model.device,
                stop_at_layer=plan.stop_at_layer,
            )
            for kind, names in plan.names.items():
                x = torch.stack(
                    [cache[n].reshape(len(batch), -1) for n in names], dim=1
                ).cpu()  # [rows, layers, d]
                if plan.keeps_vectors:
                    chunks.setdefault((kind, cond.value), []).append(x.to(plan.dtype))
                if plan.keeps_stats:
                    for label in dict.fromkeys(batch.labels):
                        rows = [i for i, lab in enumerate(batch.labels) if lab == label]
                        key = (kind, cond.value, label_key(label))
                        if key not in stats:
                            stats[key] = RunningStats(x.shape[1:], covariance=plan.covariance)
                        stats[key].update(x[rows])
    vectors = {}
    for (kind, cond), parts in chunks.items():
        full = torch.cat(parts)
        for i, layer in enumerate(plan.layers):
            vectors[f"vectors/{kind}/{cond}/{layer}"] = full[:, i].contiguous()
    return stats, vectors


def stats_tensors(stats: dict[StatsKey, RunningStats]) -> dict[str, Tensor]:
    """``stats`` as flat shard tensors ``stats/{hook}/{condition}/{label}/{field}`` (inverse: :func:`stats_from_tensors`).

    Example:
        >>> import torch
        >>> s = {("resid_post", "image", "benign"): RunningStats((2, 3)).update(torch.ones(4, 2, 3))}
        >>> stats_from_tensors(stats_tensors(s))[("resid_post", "image", "benign")].count
        4
    """
    return {f"stats/{k[0]}/{k[1]}/{k[2]}/{f}": t for k, s in stats.items() for f, t in s.to_state().items()}


def stats_from_tensors(tensors: dict[str, Tensor]) -> dict[StatsKey, RunningStats]:
    """The statistics that :func:`stats_tensors` wrote (keys ``stats/{hook}/{condition}/{label}/{field}``)."""
    states: dict[StatsKey, dict[str, Tensor]] = {}
    for key, t in tensors.items():
        _, kind, cond, label, field = key.split("/")
        states.setdefault((kind, cond, label), {})[field] = t
    return {k: RunningStats.from_state(v) for k, v in states.items()}


def merge_into(total: dict[StatsKey, RunningStats], part: dict[StatsKey, RunningStats]) -> None:
    """Merge ``part`` into ``total`` in sorted key order (the same order on every process and rerun)."""
    for key in sorted(part):
        if key in total:
            total[key].merge(part[key])
        else:
            total[key] = RunningStats(part[key].shape, part[key].covariance).merge(part[key])


def all_reduce(stats: dict[StatsKey, RunningStats], covariance: bool) -> None:
    """Make ``stats`` the float64 all-reduce over every process (keys and shapes unioned first)."""
    import torch.distributed as dist

    shapes: list[dict[StatsKey, tuple[int, ...]]] = [{}] * dist.get_world_size()
    dist.all_gather_object(shapes, {k: s.shape for k, s in stats.items()})
    union = {k: v for d in shapes for k, v in d.items()}
    for key in sorted(union):
        if key not in stats:
            stats[key] = RunningStats(union[key], covariance=covariance)
        stats[key].all_reduce()
