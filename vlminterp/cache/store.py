"""ActivationStore: dataset-scale activation collection with streaming float64 statistics.

:meth:`ActivationStore.collect` runs every (condition, sample) pair of a dataset through a
:class:`~vlminterp.HookedVLM` batch by batch, keeping only

- ``keep="stats"``: per (hook, condition, label) a :class:`~vlminterp.cache.running_stats.RunningStats`
  over rows ``[layers, d]`` (count, mean, optional scatter), memory independent of the dataset size;
- ``keep="vectors"``: per-sample vectors in sharded safetensors files (see :mod:`vlminterp.cache.shards`);
- ``keep="both"``: both.

Samples are cut into shards of ``shard_size`` samples (the unit of resume and of multi-process
work) and every shard into forward batches of ``batch_size`` samples, one forward per condition so
text-only rows are never padded to image length. With ``out_dir`` every shard is written with its
own statistics, so re-running the same call skips finished shards and gives a bit-identical result.
Under ``torch.distributed`` (``torchrun``, ``accelerate launch``) rank ``r`` of ``W`` takes shards
``r, r + W, ...`` and the statistics are all-reduced in float64.

Shape glossary: ``layers`` = the collected layers (``store.layers``), ``d`` = the hook's feature size
(``d_model`` for residual hooks, trailing axes flattened), ``n`` = samples.

Example:
    >>> from vlminterp import HookedVLM, Sample, Condition
    >>> model = HookedVLM.tiny("llava")
    >>> samples = [Sample(id=f"s{i}", query="what is this ?", label="benign") for i in range(3)]
    >>> store = ActivationStore.collect(model, samples, [Condition.TEXT_ONLY], progress=False)
    >>> store.mean("text_only").shape, store.count("text_only", label="benign")
    (torch.Size([2, 64]), 3)
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from vlminterp.cache.running_stats import RunningStats
from vlminterp.cache.shards import (
    MANIFEST_NAME,
    IncompleteStoreError,
    ShardRecord,
    check_config,
    read_json,
    read_record,
    read_shard_tensor,
    read_shard_tensors,
    torch_dtype,
    verify_shard,
    write_json_atomic,
    write_shard,
)
from vlminterp.positions import check_positions
from vlminterp.prompts import Condition, PromptBatch, Sample

__all__ = ["ActivationStore", "UNLABELED", "KEEP_CHOICES"]

#: The label key of samples whose ``label`` is None.
UNLABELED = "unlabeled"
KEEP_CHOICES = ("stats", "vectors", "both")
FORMAT = "vlminterp.activation_store/1"

StatsKey = tuple[str, str, str]  # (hook kind, condition value, label key)


def _version() -> str:
    import vlminterp

    return vlminterp.__version__


def _label_key(label: str | None) -> str:
    return UNLABELED if label is None else label


def _dist_rank_world() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _barrier(world: int) -> None:
    if world > 1:
        import torch.distributed as dist

        dist.barrier()


def _samples_digest(samples: Sequence[Sample]) -> str:
    """A digest of what defines the prompts (ids, texts, labels, image sources)."""
    h = hashlib.sha256()
    for s in samples:
        image = s.image
        ident = (
            None
            if image is None
            else str(image)
            if isinstance(image, (str, Path))
            else [image.mode, image.size]
        )
        h.update(json.dumps([s.id, s.query, s.caption, s.label, ident], default=str).encode())
    return h.hexdigest()


@dataclass(frozen=True)
class _Plan:
    """The validated arguments of one collect call."""

    conditions: list[Condition]
    hooks: tuple[str, ...]
    layers: list[int]
    names: dict[str, list[str]]  # hook kind -> hook name per layer
    positions: str | int
    batch_size: int
    shard_size: int
    keep: str
    covariance: bool
    dtype: torch.dtype
    prompt_options: dict[str, Any]

    @property
    def keeps_stats(self) -> bool:
        return self.keep in ("stats", "both")

    @property
    def keeps_vectors(self) -> bool:
        return self.keep in ("vectors", "both")


def _validate(
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
) -> _Plan:
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
    return _Plan(
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
    )


def _config(model: Any, plan: _Plan, samples: Sequence[Sample]) -> dict[str, Any]:
    """The manifest fields a resumed run must match."""
    return {
        "model_id": model.cfg.model_id,
        "family": model.cfg.family,
        "n_layers": model.cfg.n_layers,
        "d_model": model.cfg.d_model,
        "hooks": list(plan.hooks),
        "layers": list(plan.layers),
        "positions": plan.positions,
        "conditions": [c.value for c in plan.conditions],
        "keep": plan.keep,
        "covariance": plan.covariance,
        "dtype": str(plan.dtype).removeprefix("torch."),
        "shard_size": plan.shard_size,
        "n_samples": len(samples),
        "samples_digest": _samples_digest(samples),
        "prompt_options": json.loads(json.dumps(plan.prompt_options, default=list)),
        "vlminterp_version": _version(),
        "hook_names": {
            k: list(v) for k, v in plan.names.items()
        },  # derived: last, so the cause is named first
    }


# ---------------------------------------------------------------------- one shard
def _run_shard(
    model: Any, samples: Sequence[Sample], plan: _Plan
) -> tuple[dict[StatsKey, RunningStats], dict[str, Tensor]]:
    """Statistics and stacked vectors (``vectors/{hook}/{condition}/{layer}`` -> [n, d]) of one shard."""
    stats: dict[StatsKey, RunningStats] = {}
    chunks: dict[tuple[str, str], list[Tensor]] = {}
    all_names = [n for names in plan.names.values() for n in names]
    for start in range(0, len(samples), plan.batch_size):
        batch_samples = samples[start : start + plan.batch_size]
        paired = PromptBatch.paired(model, batch_samples, plan.conditions, **plan.prompt_options)
        for cond in plan.conditions:
            batch = paired.select(paired.rows(cond))
            _, cache = model.run_with_cache(batch, names_filter=all_names, positions=plan.positions)
            for kind, names in plan.names.items():
                x = torch.stack([cache[n].reshape(len(batch), -1) for n in names], dim=1)  # [rows, layers, d]
                if plan.keeps_vectors:
                    chunks.setdefault((kind, cond.value), []).append(x.to(plan.dtype))
                if plan.keeps_stats:
                    for label in dict.fromkeys(batch.labels):
                        rows = [i for i, lab in enumerate(batch.labels) if lab == label]
                        key = (kind, cond.value, _label_key(label))
                        if key not in stats:
                            stats[key] = RunningStats(x.shape[1:], covariance=plan.covariance)
                        stats[key].update(x[rows])
    vectors = {}
    for (kind, cond), parts in chunks.items():
        full = torch.cat(parts)
        for i, layer in enumerate(plan.layers):
            vectors[f"vectors/{kind}/{cond}/{layer}"] = full[:, i].contiguous()
    return stats, vectors


def _stats_tensors(stats: dict[StatsKey, RunningStats]) -> dict[str, Tensor]:
    return {f"stats/{k[0]}/{k[1]}/{k[2]}/{f}": t for k, s in stats.items() for f, t in s.to_state().items()}


def _stats_from_tensors(tensors: dict[str, Tensor]) -> dict[StatsKey, RunningStats]:
    states: dict[StatsKey, dict[str, Tensor]] = {}
    for key, t in tensors.items():
        _, kind, cond, label, field = key.split("/")
        states.setdefault((kind, cond, label), {})[field] = t
    return {k: RunningStats.from_state(v) for k, v in states.items()}


def _merge_into(total: dict[StatsKey, RunningStats], part: dict[StatsKey, RunningStats]) -> None:
    for key in sorted(part):
        if key in total:
            total[key].merge(part[key])
        else:
            total[key] = RunningStats(part[key].shape, part[key].covariance).merge(part[key])


def _all_reduce(stats: dict[StatsKey, RunningStats], covariance: bool) -> None:
    """Make ``stats`` the float64 all-reduce over every process (keys and shapes unioned first)."""
    import torch.distributed as dist

    shapes: list[dict[StatsKey, tuple[int, ...]]] = [{}] * dist.get_world_size()
    dist.all_gather_object(shapes, {k: s.shape for k, s in stats.items()})
    union = {k: v for d in shapes for k, v in d.items()}
    for key in sorted(union):
        if key not in stats:
            stats[key] = RunningStats(union[key], covariance=covariance)
        stats[key].all_reduce()


# ---------------------------------------------------------------------- the store
class ActivationStore:
    """Activations of a dataset under paired conditions: float64 statistics and/or on-disk vectors.

    Build one with :meth:`collect` or :meth:`load`; the constructor is internal.

    Attributes:
        manifest: The collection's manifest (config and, when on disk, the shard list).
        out_dir: Directory of the shards, or None for a statistics-only store in memory.
    """

    def __init__(
        self,
        manifest: dict[str, Any],
        stats: dict[StatsKey, RunningStats] | None,
        out_dir: Path | None,
    ):
        self.manifest = manifest
        self._stats = stats
        self.out_dir = out_dir

    def __repr__(self) -> str:
        c = self.manifest["config"]
        return (
            f"ActivationStore({c['model_id']!r}, conditions={c['conditions']}, hooks={c['hooks']}, "
            f"layers={len(c['layers'])}, n_samples={c['n_samples']}, keep={c['keep']!r})"
        )

    # ------------------------------------------------------------------ building
    @classmethod
    def collect(
        cls,
        model: Any,
        samples: Sequence[Sample],
        conditions: Sequence[Condition | str],
        hooks: Sequence[str] | str = ("resid_post",),
        layers: Sequence[int] | None = None,
        positions: str | int = "last",
        batch_size: int = 8,
        out_dir: str | Path | None = None,
        keep: Literal["stats", "vectors", "both"] = "stats",
        covariance: bool = False,
        progress: bool = True,
        *,
        dtype: str | torch.dtype = "float32",
        shard_size: int = 256,
        resume: bool = True,
        **prompt_options: Any,
    ) -> ActivationStore:
        """Run every (condition, sample) pair through ``model`` and keep statistics and/or vectors.

        Args:
            model: A :class:`~vlminterp.HookedVLM`.
            samples: The dataset (ids unique).
            conditions: Conditions to run (``Condition`` or their values, e.g. ``"text_only"``).
            hooks: Hook kinds to record (``"resid_post"``, ``"attn_out"``, ``"z"``, ...).
            layers: Layers to record; None for all.
            positions: A per-row selection of :mod:`vlminterp.positions`: ``"last"``,
                ``"last_instruction"``, ``"mean_text"`` or an int.
            batch_size: Samples per forward (each forward holds one condition).
            out_dir: Directory for shards and manifest; needed for vectors and for resume.
            keep: ``"stats"``, ``"vectors"`` or ``"both"``.
            covariance: Also keep scatter matrices (``O(layers * d^2)`` memory).
            progress: Show a tqdm bar (samples/s, ETA) on rank 0.
            dtype: dtype of stored vectors, ``"float32"`` or ``"float16"``.
            shard_size: Samples per shard (unit of resume and of multi-process work).
            resume: Continue a collection already in ``out_dir`` (False: refuse to touch it).
            **prompt_options: ``blank``, ``noise_seed``, ``caption_template`` for ``PromptBatch.paired``.

        Returns:
            The store (on every rank the same statistics).

        Raises:
            ValueError: bad arguments (unknown condition or hook, layer out of range, ...).
            ManifestMismatchError: ``out_dir`` holds a collection of another model or config.
            FileExistsError: ``out_dir`` holds a collection and ``resume=False``.
        """
        plan = _validate(
            model, samples, conditions, hooks, layers, positions, batch_size, shard_size,
            out_dir, keep, covariance, dtype, prompt_options,
        )  # fmt: skip
        config = _config(model, plan, samples)
        rank, world = _dist_rank_world()
        out = None if out_dir is None else Path(out_dir)
        if out is not None:
            _open_out_dir(out, config, resume, rank, world, batch_size)
        shards = [list(samples[i : i + shard_size]) for i in range(0, len(samples), shard_size)]
        mine = list(range(rank, len(shards), world))
        stats: dict[StatsKey, RunningStats] = {}
        from tqdm.auto import tqdm

        bar = tqdm(
            total=sum(len(shards[k]) for k in mine),
            unit="sample",
            desc="collect",
            disable=not progress or rank != 0,
        )
        try:
            for k in mine:
                part = _finished_shard_stats(out, k, shards[k], plan) if out is not None else None
                if part is None:
                    part, vectors = _run_shard(model, shards[k], plan)
                    if out is not None:
                        _save_shard(out, k, shards[k], vectors, part if plan.keeps_stats else {})
                _merge_into(stats, part)
                bar.update(len(shards[k]))
        finally:
            bar.close()
        if world > 1 and plan.keeps_stats:
            _all_reduce(stats, plan.covariance)
        manifest: dict[str, Any] = {"format": FORMAT, "config": config, "batch_size": batch_size}
        if out is not None:
            _barrier(world)
            records = [read_record(out, k) for k in range(len(shards))]
            missing = [k for k, r in enumerate(records) if r is None]
            if missing:
                raise IncompleteStoreError(
                    f"Shards {missing[:10]} of {str(out)!r} are missing after collection."
                )
            manifest.update(complete=True, shards=[r.to_dict() for r in records if r is not None])
            if rank == 0:
                write_json_atomic(out / MANIFEST_NAME, manifest)
            _barrier(world)
        return cls(manifest, stats if plan.keeps_stats else None, out)

    @classmethod
    def load(cls, out_dir: str | Path, checksum: bool = False) -> ActivationStore:
        """The store written by a finished :meth:`collect` in ``out_dir``.

        Args:
            out_dir: The collection directory.
            checksum: Also verify every shard's sha256 (reads all data); sizes are always checked.

        Raises:
            FileNotFoundError: no manifest in ``out_dir``.
            IncompleteStoreError: the collection has not finished.
            ShardCorruptError: a shard file is missing, truncated or changed (the error names it).
        """
        out = Path(out_dir)
        path = out / MANIFEST_NAME
        if not path.is_file():
            raise FileNotFoundError(
                f"No {MANIFEST_NAME} in {str(out)!r}: it is not an ActivationStore directory."
            )
        manifest = read_json(path)
        if manifest.get("format") != FORMAT:
            raise ValueError(
                f"{str(path)!r} has format {manifest.get('format')!r}; this vlminterp reads {FORMAT!r}."
            )
        if not manifest.get("complete"):
            raise IncompleteStoreError(
                f"The collection in {str(out)!r} has not finished; re-run the same collect call with this out_dir "
                "(CLI: --resume) to complete it."
            )
        stats: dict[StatsKey, RunningStats] | None = None
        keeps_stats = manifest["config"]["keep"] in ("stats", "both")
        if keeps_stats:
            stats = {}
        for rec in manifest["shards"]:
            shard = verify_shard(out, ShardRecord.from_dict(rec), checksum=checksum)
            if stats is not None:
                _merge_into(stats, _stats_from_tensors(read_shard_tensors(shard, "stats/")))
        return cls(manifest, stats, out)

    # ------------------------------------------------------------------ metadata
    @property
    def config(self) -> dict[str, Any]:
        return self.manifest["config"]

    @property
    def layers(self) -> list[int]:
        """The collected layers (model layer numbers), in the order of the ``layers`` axis."""
        return list(self.config["layers"])

    @property
    def hooks(self) -> tuple[str, ...]:
        """The collected hook kinds."""
        return tuple(self.config["hooks"])

    @property
    def conditions(self) -> list[Condition]:
        return [Condition(c) for c in self.config["conditions"]]

    def _condition(self, condition: Condition | str) -> str:
        cond = Condition.parse(condition)
        if cond.value not in self.config["conditions"]:
            raise ValueError(
                f"Condition {cond.value!r} was not collected; this store has {self.config['conditions']}."
            )
        return cond.value

    def _hook(self, hook: str | None) -> str:
        if hook is None:
            if len(self.hooks) > 1:
                raise ValueError(f"This store has several hooks {list(self.hooks)}: pass hook=.")
            return self.hooks[0]
        if hook not in self.hooks:
            raise ValueError(f"Hook {hook!r} was not collected; this store has {list(self.hooks)}.")
        return hook

    def _layer_index(self, layer: int) -> int:
        if layer not in self.layers:
            raise ValueError(f"Layer {layer!r} was not collected; collected layers: {self.layers}.")
        return self.layers.index(layer)

    # ------------------------------------------------------------------ statistics
    def stats(
        self, condition: Condition | str, label: str | None = None, hook: str | None = None
    ) -> RunningStats:
        """The :class:`RunningStats` of one condition (rows ``[layers, d]``), pooled over labels unless given.

        Raises:
            ValueError: unknown condition / hook, no statistics kept, or no rows with ``label``.
        """
        if self._stats is None:
            raise ValueError(
                "This store kept vectors only (keep='vectors'); use store.vectors(...), or collect with "
                "keep='stats' or keep='both'."
            )
        cond, kind = self._condition(condition), self._hook(hook)
        found = {k[2]: s for k, s in self._stats.items() if k[:2] == (kind, cond)}
        if label is not None:
            if label not in found:
                raise ValueError(
                    f"No rows with label {label!r} under condition {cond!r}; labels present: {sorted(found)} "
                    f"({UNLABELED!r} = samples without a label)."
                )
            return found[label]
        pooled: RunningStats | None = None
        for key in sorted(found):
            pooled = (pooled or RunningStats(found[key].shape, found[key].covariance)).merge(found[key])
        if pooled is None:
            raise ValueError(f"No rows under condition {cond!r}.")
        return pooled

    def count(self, condition: Condition | str, label: str | None = None) -> int:
        """Number of samples collected under ``condition`` (and ``label``)."""
        return self.stats(condition, label).count

    def mean(
        self,
        condition: Condition | str,
        label: str | None = None,
        layer: int | None = None,
        hook: str | None = None,
    ) -> Float[Tensor, "*layers d"]:
        """Float64 mean activation: ``[layers, d]``, or ``[d]`` for one ``layer`` (a model layer number)."""
        mean = self.stats(condition, label, hook).mean
        return mean if layer is None else mean[self._layer_index(layer)]

    def cov(
        self,
        condition: Condition | str,
        label: str | None = None,
        layer: int | None = None,
        hook: str | None = None,
    ) -> Float[Tensor, "*layers d d"]:
        """Float64 covariance (unbiased): ``[layers, d, d]`` or ``[d, d]``; needs ``covariance=True``."""
        cov = self.stats(condition, label, hook).cov()
        return cov if layer is None else cov[self._layer_index(layer)]

    def diff_in_means(
        self,
        a: Condition | str,
        b: Condition | str,
        label: str | None = None,
        layer: int | None = None,
        hook: str | None = None,
    ) -> Float[Tensor, "*layers d"]:
        """``mean(a) - mean(b)`` in float64 (e.g. CMRM's ``text_only - blank``)."""
        return self.mean(a, label, layer, hook) - self.mean(b, label, layer, hook)

    # ------------------------------------------------------------------ vectors
    def _records(self) -> list[ShardRecord]:
        if self.out_dir is None or self.config["keep"] == "stats":
            raise ValueError(
                "This store kept no per-sample vectors: collect with keep='vectors' or 'both' and out_dir."
            )
        return [ShardRecord.from_dict(r) for r in self.manifest["shards"]]

    def vectors(
        self, condition: Condition | str, layer: int, hook: str | None = None
    ) -> Float[Tensor, "n d"]:
        """Per-sample vectors of one condition and layer, in sample order (stored dtype).

        Each shard is read through a memory map, touching only this (hook, condition, layer) tensor.
        """
        cond, kind = self._condition(condition), self._hook(hook)
        self._layer_index(layer)
        key = f"vectors/{kind}/{cond}/{layer}"
        return torch.cat([read_shard_tensor(verify_shard(self.out_dir, r), key) for r in self._records()])

    def sample_ids(self) -> list[str]:
        """Sample ids in the row order of :meth:`vectors`."""
        return [i for r in self._records() for i in r.sample_ids]

    def labels(self) -> list[str | None]:
        """Sample labels in the row order of :meth:`vectors`."""
        return [lab for r in self._records() for lab in r.labels]

    def to_numpy(
        self,
        conditions: Sequence[Condition | str],
        layer: int,
        hook: str | None = None,
        target: Literal["condition", "label"] = "condition",
    ) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """``(X, y, sample_ids)`` for scikit-learn: rows of every condition stacked in order.

        Args:
            conditions: Conditions to stack.
            layer: Model layer number.
            hook: Hook kind (needed when several were collected).
            target: ``y`` holds each row's condition value, or its sample label (``"unlabeled"`` for None).

        Returns:
            ``X`` float32 ``[rows, d]``, ``y`` str ``[rows]``, and the sample id of every row.
        """
        if target not in ("condition", "label"):
            raise ValueError(f"target must be 'condition' or 'label', got {target!r}.")
        conds = [self._condition(c) for c in conditions]
        if not conds:
            raise ValueError("to_numpy needs at least one condition.")
        ids, labels = self.sample_ids(), [_label_key(x) for x in self.labels()]
        xs = [self.vectors(c, layer, hook).float().numpy() for c in conds]
        ys = [np.array([c] * len(ids) if target == "condition" else labels, dtype=str) for c in conds]
        return np.concatenate(xs), np.concatenate(ys), ids * len(conds)


# ---------------------------------------------------------------------- out_dir helpers
def _open_out_dir(
    out: Path, config: dict[str, Any], resume: bool, rank: int, world: int, batch_size: int
) -> None:
    """Check an existing manifest against ``config`` (every rank), or write a new one (rank 0)."""
    path = out / MANIFEST_NAME
    if path.is_file():
        if not resume:
            raise FileExistsError(
                f"{str(out)!r} already holds a collection; pass resume=True (CLI: --resume) to continue it, or use a "
                "new out_dir."
            )
        stored = read_json(path)
        check_config(out, stored.get("config", {}), config)
    elif out.is_dir() and any(out.iterdir()):
        raise FileExistsError(
            f"{str(out)!r} is not empty and holds no {MANIFEST_NAME}; collect writes into an empty or new directory."
        )
    _barrier(world)
    if rank == 0 and not path.is_file():
        write_json_atomic(
            path, {"format": FORMAT, "config": config, "batch_size": batch_size, "complete": False}
        )
    _barrier(world)


def _finished_shard_stats(
    out: Path, index: int, samples: Sequence[Sample], plan: _Plan
) -> dict[StatsKey, RunningStats] | None:
    """The statistics of shard ``index`` if it is finished on disk (else None: compute it)."""
    record = read_record(out, index)
    if record is None or record.sample_ids != [s.id for s in samples]:
        return None
    if not plan.keeps_stats:
        return {}
    return _stats_from_tensors(read_shard_tensors(verify_shard(out, record), "stats/"))


def _save_shard(
    out: Path,
    index: int,
    samples: Sequence[Sample],
    vectors: dict[str, Tensor],
    stats: dict[StatsKey, RunningStats],
) -> ShardRecord:
    return write_shard(
        out, index, {**vectors, **_stats_tensors(stats)}, [s.id for s in samples], [s.label for s in samples]
    )
