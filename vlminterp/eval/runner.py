"""Generate responses for a benchmark under one condition (and an optional intervention), resumably.

Each sample gives one JSON line ``{id, dataset, condition, method, query, response, label, meta,
settings}`` in ``out_path`` (``settings`` names the model by its spec, :func:`vlminterp.specs.model_name`,
never a machine path). Rows of one (condition, method, dataset) are one run; a file may hold
several. Lines are appended per batch by rewriting the file to a temporary file and renaming it (so
an interrupted run leaves only whole lines), and a rerun skips the ids already there, so a long run
never loses finished work.

Under ``torchrun`` / ``accelerate launch`` (:mod:`vlminterp.parallel`) each process generates
:func:`~vlminterp.parallel.shard` of the samples still to do and appends its rows, per batch, to its
own part file next to ``out_path`` (``responses.rank1.jsonl`` for ``responses.jsonl``); after a
barrier rank 0 moves them into ``out_path`` in sample order (one atomic rewrite) and deletes the
parts. The file is then the one a one-process run writes. A run killed midway leaves its finished
rows in the part files: :func:`read_responses` counts them, and the next run (any number of
processes) merges them first and skips them.

Any :class:`~vlminterp.interventions.Intervention` is run the same way, through
:meth:`~vlminterp.interventions.Intervention.generate_chunks` over the batches of samples (by default
``intervention.generate(model, intervention.prompts(model, chunk, condition))`` per batch; per-input
methods build their twin rows there; ShiftDC decodes later batches' captions with earlier batches' responses).
Each batch's rows are written as soon as it is yielded.

Example:
    >>> from vlminterp import HookedVLM, Sample
    >>> model = HookedVLM.tiny("llava")
    >>> import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "responses.jsonl"
    >>> rows = generate_responses(model, [Sample("a", "hi")], "text_only", path, max_new_tokens=2, progress=False)
    >>> len(rows), rows[0]["settings"]["model"], read_responses(path) == rows
    (1, 'tiny:llava', True)
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm.auto import tqdm

from vlminterp.interventions.base import Intervention
from vlminterp.io import write_text_atomic
from vlminterp.parallel import barrier, is_main, part_path, part_paths, rank_world, shard
from vlminterp.prompts import Condition, PromptBatch, Sample
from vlminterp.specs import model_name

if TYPE_CHECKING:
    from vlminterp.models.hooked_vlm import HookedVLM

__all__ = ["generate_responses", "read_responses", "merge_parts"]


def _row_key(row: dict[str, Any]) -> tuple[Any, ...]:
    return row.get("id"), row.get("dataset"), row.get("condition"), row.get("method")


def _read_lines(path: Path) -> list[tuple[str, dict[str, Any]]]:
    """``(line, row)`` per non-empty line of ``path`` (none when it does not exist); bad JSON raises naming it."""
    if not path.is_file():
        return []
    out = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                out.append((line if line.endswith("\n") else line + "\n", json.loads(line)))
            except json.JSONDecodeError as e:
                raise ValueError(
                    f"{path}, line {n}: not valid JSON ({e.msg}). The file was not written by generate_responses; "
                    "move it away to start over."
                ) from None
    return out


def _unmerged(path: Path) -> list[tuple[str, dict[str, Any]]]:
    """Lines of the part files of ``path`` whose row is in neither ``path`` nor an earlier part."""
    seen = {_row_key(row) for _, row in _read_lines(path)}
    extra = []
    for part in part_paths(path):
        for line, row in _read_lines(part):
            if _row_key(row) not in seen:
                seen.add(_row_key(row))
                extra.append((line, row))
    return extra


def read_responses(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a responses file and of any part files an interrupted data-parallel run left beside it.

    Empty if none exists; a malformed line raises naming its file and line.
    """
    path = Path(path)
    return [row for _, row in _read_lines(path)] + [row for _, row in _unmerged(path)]


def merge_parts(path: str | Path, order: Sequence[str] = ()) -> int:
    """Move the rows of ``path``'s part files into ``path`` (one atomic rewrite), then delete the parts.

    Rows already in ``path`` are not repeated. Call it on one process (rank 0) while the others wait.

    Args:
        path: The responses file.
        order: Sample ids: the moved rows are appended in this order (ids not in it last, as found),
            so a merged data-parallel run writes the file a one-process run writes.

    Returns:
        The number of rows moved.

    Example:
        >>> import tempfile, pathlib
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "responses.jsonl"
        >>> _ = path.with_name("responses.rank1.jsonl").write_text('{"id": "b"}\\n')
        >>> _ = path.with_name("responses.rank0.jsonl").write_text('{"id": "a"}\\n{"id": "c"}\\n')
        >>> [r["id"] for r in read_responses(path)]
        ['a', 'c', 'b']
        >>> merge_parts(path, order=["a", "b", "c"]), path.read_text(), part_paths(path)
        (3, '{"id": "a"}\\n{"id": "b"}\\n{"id": "c"}\\n', [])
    """
    path = Path(path)
    parts = part_paths(path)
    if not parts:
        return 0
    extra = _unmerged(path)
    rank = {sample_id: i for i, sample_id in enumerate(order)}
    extra.sort(key=lambda line_row: rank.get(line_row[1].get("id"), len(rank)))  # stable: as found otherwise
    if extra:
        _append_atomic(path, [line for line, _ in extra])
    for part in parts:
        part.unlink()
    return len(extra)


def _append_atomic(path: Path, lines: list[str]) -> None:
    old = path.read_text(encoding="utf-8") if path.is_file() else ""
    write_text_atomic(path, old + "".join(lines))


def generate_responses(
    model: HookedVLM,
    samples: Sequence[Sample],
    condition: Condition | str,
    out_path: str | Path,
    intervention: Intervention | None = None,
    *,
    max_new_tokens: int = 256,
    batch_size: int = 8,
    method: str | None = None,
    dataset: str | None = None,
    progress: bool = True,
    **prompt_options: Any,
) -> list[dict[str, Any]]:
    """Generate (greedy) a response per sample and append it to ``out_path`` as JSON lines; resumes.

    Args:
        model: The model.
        samples: The samples (ids must be unique).
        condition: The condition every prompt is built with (``"image"``, ``"text_only"``, ...).
        out_path: JSONL file; rows already there with the same id, condition, method and dataset are
            skipped, so rerunning resumes.
        intervention: Any :class:`~vlminterp.interventions.Intervention`, applied per batch (its
            hooks are removed after each batch, also when generation raises); None: unsteered.
        max_new_tokens: Tokens per response.
        batch_size: Samples per ``generate`` call.
        method: Name recorded per row (default: the intervention's class name, or ``"none"``).
        dataset: Dataset name recorded per row.
        progress: Show a tqdm bar.
        **prompt_options: Passed to the prompts (:meth:`PromptBatch.paired`: ``blank=``,
            ``caption_template=``, ...).

    Returns:
        Every row of ``out_path`` for these samples (earlier runs' and new ones), in sample order, on
        every process of a data-parallel run.
    """
    cond = Condition.parse(condition)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    ids = [s.id for s in samples]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise ValueError(f"Sample ids must be unique to resume a run; {dup!r} appears more than once.")
    if intervention is not None and not isinstance(intervention, Intervention):
        raise TypeError(
            f"intervention must be a vlminterp Intervention (a subclass of vlminterp.interventions.Intervention), "
            f"got {type(intervention).__name__}."
        )
    method = method or ("none" if intervention is None else type(intervention).__name__)
    settings = {
        "model": model_name(model),
        "max_new_tokens": max_new_tokens,
        "do_sample": False,
        "intervention": None
        if intervention is None
        else {"type": type(intervention).__name__, **intervention.to_dict()},
    }
    path = Path(out_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rank, world = rank_world()
    if is_main():
        merge_parts(path)  # rows an interrupted data-parallel run left in part files
    barrier()

    def finished() -> dict[str, dict[str, Any]]:
        return {r["id"]: r for r in read_responses(path) if _row_key(r)[1:] == (dataset, cond.value, method)}

    done = finished()
    remaining = [s for s in samples if s.id not in done]
    todo = shard(remaining)  # this process's part (all of it in a one-process run)
    target = path if world == 1 else part_path(path, rank)
    bar = tqdm(
        total=len(samples),
        initial=len(samples) - len(remaining),
        disable=not progress or not is_main(),
        desc=f"generate {cond.value}",
    )
    chunks = [todo[start : start + batch_size] for start in range(0, len(todo), batch_size)]
    if intervention is None:
        generations = (
            model.generate(
                PromptBatch.paired(model, chunk, [cond], **prompt_options), max_new_tokens=max_new_tokens
            )
            for chunk in chunks
        )
    else:
        generations = intervention.generate_chunks(model, chunks, cond, max_new_tokens, **prompt_options)
    for chunk, gen in zip(chunks, generations, strict=True):
        rows = [
            {
                "id": s.id,
                "dataset": dataset,
                "condition": cond.value,
                "method": method,
                "query": s.query,
                "prompt": text,
                "response": response,
                "label": s.label,
                "meta": s.meta,
                "settings": settings,
            }
            for s, text, response in zip(chunk, gen.batch.texts, gen.texts, strict=True)
        ]
        _append_atomic(target, [json.dumps(r, default=str) + "\n" for r in rows])
        done.update((r["id"], r) for r in rows)
        bar.update(len(chunk) * world)
    bar.close()
    if world > 1:
        barrier()  # every part written
        if is_main():
            merge_parts(path, ids)
        barrier()
        done = finished()
    return [done[i] for i in ids]
