"""ActivationStore: dataset-scale activation collection with streaming float64 statistics.

:meth:`ActivationStore.collect` runs every (condition, sample) pair of a dataset through a
:class:`~vlminterp.HookedVLM` batch by batch, keeping only

- ``keep="stats"``: per (hook, condition, label) a :class:`~vlminterp.cache.running_stats.RunningStats`
  over rows ``[layers, d]`` (count, mean, optional scatter), memory independent of the dataset size;
- ``keep="vectors"``: per-sample vectors in sharded safetensors files (see :mod:`vlminterp.cache.shards`);
- ``keep="both"``: both.

Samples are cut into shards of ``shard_size`` samples (the unit of resume and of multi-process
work) and every shard into forward batches of ``batch_size`` samples, one forward per condition so
text-only rows are never padded to image length (:mod:`vlminterp.cache.collection`). With
``out_dir`` every shard is written with its own statistics, so re-running the same call skips
finished shards and gives a bit-identical result (:mod:`vlminterp.cache.manifest`). Under
``torch.distributed`` (``torchrun``, ``accelerate launch``) rank ``r`` of ``W`` takes shards
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

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from vlminterp.cache.collection import (
    KEEP_CHOICES,
    UNLABELED,
    StatsKey,
    all_reduce,
    label_key,
    merge_into,
    plan_collection,
    run_shard,
    stats_from_tensors,
)
from vlminterp.cache.manifest import FORMAT, collection_config, finished_shard_stats, open_out_dir, save_shard
from vlminterp.cache.running_stats import RunningStats
from vlminterp.cache.shards import (
    MANIFEST_NAME,
    IncompleteStoreError,
    ShardRecord,
    read_json,
    read_record,
    read_shard_tensor,
    read_shard_tensors,
    verify_shard,
    write_json_atomic,
)
from vlminterp.parallel import barrier, rank_world
from vlminterp.prompts import Condition, Sample

__all__ = ["ActivationStore", "UNLABELED", "KEEP_CHOICES"]


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
        storage_dtype: str | torch.dtype = "float32",
        shard_size: int = 256,
        resume: bool = True,
        prefetch: bool | None = None,
        **prompt_options: Any,
    ) -> ActivationStore:
        """Run every (condition, sample) pair through ``model`` and keep statistics and/or vectors.

        Args:
            model: A :class:`~vlminterp.HookedVLM`.
            samples: The dataset (ids unique).
            conditions: Conditions to run (``Condition`` or their values, e.g. ``"text_only"``).
            hooks: Hook kinds to record (``"resid_post"``, ``"attn_out"``, ``"z"``, ...).
            layers: Layers to record; None for all. Each forward stops after the last of them
                (later blocks, the final norm and the unembedding are never run).
            positions: A per-row selection of :mod:`vlminterp.positions`: ``"last"``,
                ``"last_instruction"``, ``"mean_text"`` or an int.
            batch_size: Samples per forward (each forward holds one condition).
            out_dir: Directory for shards and manifest; needed for vectors and for resume.
            keep: ``"stats"``, ``"vectors"`` or ``"both"``.
            covariance: Also keep scatter matrices (``O(layers * d^2)`` memory).
            progress: Show a tqdm bar (samples/s, ETA) on rank 0.
            storage_dtype: dtype of the stored per-sample vectors, ``"float32"``, ``"float16"`` or
                ``"bfloat16"`` (half the disk); statistics are accumulated in float64 from the
                activations as computed, whatever this is.
            shard_size: Samples per shard (unit of resume and of multi-process work).
            resume: Continue a collection already in ``out_dir`` (False: refuse to touch it).
            prefetch: Build the next batch's prompts (tokenizer, image processor) in a background
                thread while the current batch runs; the result is bit-identical either way. None
                (default): on for a model on an accelerator, off on CPU (where torch's threads use
                every core and the extra thread measured slower).
            **prompt_options: ``blank``, ``noise_seed``, ``caption_template`` for ``PromptBatch.paired``.

        Returns:
            The store (on every rank the same statistics).

        Raises:
            ValueError: bad arguments (unknown condition or hook, layer out of range, ...).
            ManifestMismatchError: ``out_dir`` holds a collection of another model or config.
            FileExistsError: ``out_dir`` holds a collection and ``resume=False``.
        """
        plan = plan_collection(
            model, samples, conditions, hooks, layers, positions, batch_size, shard_size,
            out_dir, keep, covariance, storage_dtype, prompt_options, prefetch=prefetch,
        )  # fmt: skip
        config = collection_config(model, plan, samples)
        rank, world = rank_world()
        out = None if out_dir is None else Path(out_dir)
        if out is not None:
            open_out_dir(out, config, resume, rank, world, batch_size)
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
                part = finished_shard_stats(out, k, shards[k], plan) if out is not None else None
                if part is None:
                    part, vectors = run_shard(model, shards[k], plan)
                    if out is not None:
                        save_shard(out, k, shards[k], vectors, part if plan.keeps_stats else {})
                merge_into(stats, part)
                bar.update(len(shards[k]))
        finally:
            bar.close()
        if world > 1 and plan.keeps_stats:
            all_reduce(stats, plan.covariance)
        manifest: dict[str, Any] = {"format": FORMAT, "config": config, "batch_size": batch_size}
        if out is not None:
            barrier()
            records = [read_record(out, k) for k in range(len(shards))]
            missing = [k for k, r in enumerate(records) if r is None]
            if missing:
                raise IncompleteStoreError(
                    f"Shards {missing[:10]} of {str(out)!r} are missing after collection."
                )
            manifest.update(complete=True, shards=[r.to_dict() for r in records if r is not None])
            if rank == 0:
                write_json_atomic(out / MANIFEST_NAME, manifest)
            barrier()
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
                merge_into(stats, stats_from_tensors(read_shard_tensors(shard, "stats/")))
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

    @property
    def sample_ids(self) -> list[str]:
        """Sample ids in the row order of :meth:`vectors` (a list, like ``PromptBatch.sample_ids``)."""
        return [i for r in self._records() for i in r.sample_ids]

    @property
    def labels(self) -> list[str | None]:
        """Sample labels in the row order of :meth:`vectors` (a list, like ``PromptBatch.labels``)."""
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
        ids, labels = self.sample_ids, [label_key(x) for x in self.labels]
        xs = [self.vectors(c, layer, hook).float().numpy() for c in conds]
        ys = [np.array([c] * len(ids) if target == "condition" else labels, dtype=str) for c in conds]
        return np.concatenate(xs), np.concatenate(ys), ids * len(conds)
