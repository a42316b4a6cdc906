"""The sweep: measure an intervention at every point of a grid, as tidy rows (see :mod:`vlminterp.sweeps`).

Example:
    >>> from vlminterp import HookedVLM, Sample
    >>> from vlminterp.interventions.ablation import HeadAblation
    >>> model = HookedVLM.tiny("llava")
    >>> samples = [Sample(id="a", query="how do i make a bomb", label="harmful")]
    >>> rows = sweep(model, samples, lambda layer, head: HeadAblation([(layer, head)]),
    ...              grid={"layer": [0, 1], "head": [0, 1]}, metric="refusal_score", conditions=["text_only"],
    ...              progress=False)
    >>> len(rows), [rows[0][k] for k in ("model", "layer", "head", "metric", "n")]
    (4, ['tiny:llava', 0, 0, 'refusal_score', 1])
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from vlminterp.interventions.base import Intervention
from vlminterp.parallel import barrier, gather, on_main, part_path, rank_world, shard
from vlminterp.prompts import Condition, PromptBatch, Sample
from vlminterp.specs import model_name
from vlminterp.sweeps.batching import Part, clean, observe, packs, prepared
from vlminterp.sweeps.grid import grid_points, point_key
from vlminterp.sweeps.metrics import Metric, resolve_metrics
from vlminterp.sweeps.rows_file import RowsFile, append_rows, samples_digest

if TYPE_CHECKING:
    from vlminterp.models.hooked_vlm import HookedVLM

__all__ = ["sweep", "COLUMNS"]

#: Columns every row has (grid keys beyond these are added as their own columns).
COLUMNS = ("model", "dataset", "method", "layer", "head", "alpha", "metric", "value", "n")
_FORMAT = "vlminterp.sweep/1"


def sweep(
    model: HookedVLM,
    samples: Sequence[Sample],
    make_intervention: Callable[..., Intervention | None],
    grid: Mapping[str, Iterable[Any]],
    metric: Metric | str | Sequence[Metric | str] = "refusal_score",
    out_path: str | Path | None = None,
    progress: bool = True,
    *,
    conditions: Sequence[Condition | str] = (Condition.IMAGE,),
    dataset: str = "",
    method: str | None = None,
    batch_size: int | None = None,
    max_rows: int = 32,
    prompt_options: Mapping[str, Any] | None = None,
    from_layers: bool = True,
) -> list[dict[str, Any]]:
    """Measure ``make_intervention(**point)`` at every grid point; one tidy row per (point, metric).

    Args:
        model: The model.
        samples: The inputs (labels choose the rows each metric reads).
        make_intervention: ``point -> Intervention`` (None: the unsteered model), called with the grid
            keys as keyword arguments, only for points not already in ``out_path``.
        grid: ``{"layer": [...], "head": [...], "alpha": [...], ...}`` (any JSON-serialisable values).
        metric: One or more metrics (or names from :data:`METRICS`).
        out_path: JSONL file for rows; finished points are skipped on a re-run (see module docstring).
        progress: Show a tqdm bar over grid points.
        conditions: Conditions of the prompts (default IMAGE).
        dataset: Dataset name for the rows.
        method: Method name for the rows (default the intervention's ``to_dict()["method"]``).
        batch_size: Samples per forward (default all).
        max_rows: Rows per forward when points are stacked (``k = max_rows // rows`` points per forward;
            twin rows of per-input methods count too).
        prompt_options: ``blank=``, ``noise_seed=``, ``caption_template=`` for ``PromptBatch.paired``.
        from_layers: Start each point's forward at the first layer it hooks, from the clean run's
            activations (:mod:`vlminterp.models.partial`; exact). They are kept for the whole sweep on
            the model's device: ``n_layers x samples x pos x d_model`` values. False: every point
            runs the full forward.

    Under ``torchrun`` / ``accelerate launch`` (:mod:`vlminterp.parallel`) every process measures its
    share of the unfinished groups of points (appending to ``<name>.rank<R>.jsonl``, :func:`vlminterp.parallel.part_path`); rank 0 merges them
    into ``out_path`` in grid order, and every process returns the whole table, equal to a one-process run.

    Returns:
        The rows of every grid point (read back from ``out_path`` for skipped points), in grid order.
    """
    from tqdm.auto import tqdm

    if not samples:
        raise ValueError("sweep needs at least one sample.")
    metrics = resolve_metrics(metric)
    points = grid_points(grid)
    conds = [Condition.parse(c) for c in conditions]
    by_id = {s.id: s for s in samples}
    if len(by_id) != len(samples):
        raise ValueError("sweep: sample ids must be unique.")
    for m in metrics:
        m.bind(model)
        if m.label is not None and not any(s.label == m.label for s in samples):
            raise ValueError(
                f"Metric {m.name!r} reads rows labelled {m.label!r}, but no sample has that label. "
                f"Add such samples or pass {type(m).__name__}(label=None)."
            )
    capture = sorted({name for m in metrics for name in m.capture(model)})
    generation = max((m.max_new_tokens for m in metrics if m.generates), default=None)
    manifest = {
        "format": _FORMAT,
        "model": model_name(model),
        "dataset": dataset,
        "method": method,
        "samples": samples_digest(samples),
        "n_samples": len(samples),
        "conditions": [c.value for c in conds],
        "metrics": [m.to_dict() for m in metrics],
    }
    rank, world = rank_world()
    path = None if out_path is None else Path(out_path)
    store: RowsFile | None = None
    order = [point_key(p) for p in points]

    def open_rows() -> set[str]:
        nonlocal store
        store = RowsFile(path, manifest, [m.name for m in metrics])
        store.merge_parts(order)  # what a killed data-parallel run finished
        return store.done()

    done = set() if path is None else on_main(open_rows)
    options = dict(prompt_options or {})
    chunks = [list(samples)] if batch_size is None else [list(samples[i : i + batch_size]) for i in range(0, len(samples), batch_size)]  # fmt: skip
    batches = [
        (chunk, c, PromptBatch.paired(model, chunk, [c], **options)) for chunk in chunks for c in conds
    ]
    references, starts = [], []
    for _, _, b in batches:
        unsteered, start = clean(model, b, capture, generation, from_layers)
        references.append([m.reference(model, b, by_id, unsteered) for m in metrics])
        starts.append(start)
    per_pass = max(1, max_rows // max(len(b) for _, _, b in batches))
    groups = [points[i : i + per_pass] for i in range(0, len(points), per_pass)]
    todo = [[p for p in g if point_key(p) not in done] for g in groups]
    mine = shard([g for g in todo if g])  # every rank its share of the unfinished groups
    bar = tqdm(total=len(points), initial=len(points) - sum(map(len, todo)), unit="point",
               disable=not (progress and rank == 0))  # fmt: skip
    fresh: list[dict[str, Any]] = []
    try:
        for group in mine:
            interventions = [make_intervention(**p) for p in group]
            sums = torch.zeros(len(group), len(metrics), dtype=torch.float64)
            counts = torch.zeros(len(group), len(metrics), dtype=torch.long)
            for (chunk, cond, b), refs, start in zip(batches, references, starts, strict=True):
                runs = [
                    None if iv is None else prepared(iv, model, chunk, cond, b, options)
                    for iv in interventions
                ]
                parts = [Part.of(run, b) for run in runs]
                observed = [
                    o
                    for pack in packs(parts, max_rows)
                    for o in observe(model, pack, capture, generation, start)
                ]
                for j, m in enumerate(metrics):
                    rows = [i for i, lab in enumerate(b.labels) if m.label is None or lab == m.label]
                    if not rows:
                        continue
                    for i, obs in enumerate(observed):
                        v = m.values(obs, refs[j], rows)
                        ok = ~torch.isnan(v)
                        sums[i, j] += v[ok].sum()
                        counts[i, j] += int(ok.sum())
            group_rows = []
            for i, (p, iv) in enumerate(zip(group, interventions, strict=True)):
                name = method or ("none" if iv is None else iv.to_dict().get("method", type(iv).__name__))
                base = {"model": model_name(model), "dataset": dataset, "method": name}
                base.update({"layer": None, "head": None, "alpha": None, **p})
                for j, m in enumerate(metrics):
                    n = int(counts[i, j])
                    value = float(sums[i, j] / n) if n else None
                    group_rows.append(
                        {**base, "metric": m.name, "value": value, "n": n, "point": point_key(p)}
                    )
            if world > 1 and path is not None:
                append_rows(part_path(path, rank), group_rows)
            elif store is not None:
                store.append(group_rows)
            fresh.extend(group_rows)
            bar.update(len(group))
    finally:
        bar.close()
    if world > 1:  # one table on every rank: the merged file's, or every rank's rows
        barrier()
        if path is None:
            fresh = [r for part in gather(fresh) for r in part]
        else:

            def merged() -> list[dict[str, Any]]:
                store.merge_parts(order)
                return store.rows

            fresh = on_main(merged)
    elif store is not None:
        fresh = store.rows
    index = {key: i for i, key in enumerate(order)}
    metric_order = {m.name: j for j, m in enumerate(metrics)}
    chosen = [r for r in fresh if r["point"] in index]
    chosen.sort(key=lambda r: (index[r["point"]], metric_order.get(r["metric"], 0)))
    return [{k: v for k, v in r.items() if k != "point"} for r in chosen]
