"""Generate responses for a benchmark under one condition (and an optional intervention), resumably.

Each sample gives one JSON line ``{id, dataset, condition, method, query, response, label, meta,
settings}`` in ``out_path`` (``settings`` names the model by its spec, :func:`vlminterp.specs.model_name`,
never a machine path). Rows of one (condition, method, dataset) are one run; a file may hold
several. Lines are appended per batch by rewriting the file to a temporary file and renaming it (so
an interrupted run leaves only whole lines), and a rerun skips the ids already there, so a long run
never loses finished work.

Any :class:`~vlminterp.interventions.Intervention` is run the same way: per batch of samples,
``intervention.generate(model, intervention.prompts(model, chunk, condition))`` (per-input methods
build their twin rows there; the responses are the output rows).

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
from vlminterp.prompts import Condition, PromptBatch, Sample
from vlminterp.specs import model_name

if TYPE_CHECKING:
    from vlminterp.models.hooked_vlm import HookedVLM

__all__ = ["generate_responses", "read_responses"]


def read_responses(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a responses file (empty if it does not exist); a malformed line raises naming it."""
    path = Path(path)
    if not path.is_file():
        return []
    rows = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(
                    f"{path}, line {n}: not valid JSON ({e.msg}). The file was not written by generate_responses; "
                    "move it away to start over."
                ) from None
    return rows


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
        Every row of ``out_path`` for these samples (earlier runs' and new ones), in sample order.
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
    done = {
        r["id"]: r
        for r in read_responses(path)
        if (r.get("condition"), r.get("method"), r.get("dataset")) == (cond.value, method, dataset)
    }
    todo = [s for s in samples if s.id not in done]
    bar = tqdm(
        total=len(samples),
        initial=len(samples) - len(todo),
        disable=not progress,
        desc=f"generate {cond.value}",
    )
    for start in range(0, len(todo), batch_size):
        chunk = todo[start : start + batch_size]
        if intervention is None:
            batch = PromptBatch.paired(model, chunk, [cond], **prompt_options)
            gen = model.generate(batch, max_new_tokens=max_new_tokens)
        else:
            batch = intervention.prompts(model, chunk, cond, **prompt_options)
            gen = intervention.generate(model, batch, max_new_tokens=max_new_tokens)
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
        _append_atomic(path, [json.dumps(r, default=str) + "\n" for r in rows])
        done.update((r["id"], r) for r in rows)
        bar.update(len(chunk))
    bar.close()
    return [done[i] for i in ids]
