"""What both paper protocols share: one resumable run folder, generation cells, scoring, the tables.

A :class:`Protocol` run generates responses cell by cell (a benchmark x condition x method, each
through :class:`vlminterp.eval.steering.Run`, so ``responses.jsonl`` resumes and nothing is
generated twice), scores every benchmark by its kind (a safety judge, ScienceQA letters, MME pairs,
an LLM grader for LLaVA-Bench and MM-Vet), puts the published numbers beside the measured ones
(:func:`vlminterp.reproduce.tables.with_published`) and writes ``tables.json`` / ``tables.csv``
(tidy rows), ``tables.md`` (the paper's layout), ``verdicts.jsonl``, ``grades.jsonl`` and
``skipped.json``. LLM judges and graders keep their replies in the run folder
(``judge_cache.jsonl``, ``grader_cache.jsonl``), so a resumed run asks nothing twice; seconds per
response are kept per cell in ``timing.json``, so the timing table survives a resume.

Example:
    >>> Cell("figstep", "image", "none").method_name
    'none'
    >>> Cell("figstep", "image", "cmrm_dataset", alpha=0.5).method_name
    'cmrm_dataset(alpha=0.5)'
"""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vlminterp.eval.metrics import (
    llava_bench_scores,
    mme_scores,
    mmvet_scores,
    rate_table,
    scienceqa_accuracy,
)
from vlminterp.io import read_json, write_json_atomic, write_text_atomic
from vlminterp.parallel import is_main
from vlminterp.prompts import Condition, Sample
from vlminterp.reproduce.benchmarks import Benchmark
from vlminterp.specs import DatasetSpec, JudgeSpec

if TYPE_CHECKING:
    from vlminterp.eval.steering import Run
    from vlminterp.interventions import Intervention

__all__ = ["Cell", "Protocol", "check_config", "grader_from_spec", "TIMING"]

#: Seconds and responses per generated cell, kept across resumes.
TIMING = "timing.json"


@dataclasses.dataclass(frozen=True)
class Cell:
    """One generation: a benchmark's samples under a condition, unsteered or with a method.

    Attributes:
        benchmark: The benchmark key.
        condition: A :class:`Condition` value.
        method: ``"none"`` or the method's table name (``"cmrm_dataset"``, ``"shiftdc"``).
        alpha: The method's strength (None for ``"none"``).
    """

    benchmark: str
    condition: str
    method: str
    alpha: float | None = None

    def timing_key(self, dataset: str) -> str:
        """Its key in ``timing.json`` on ``dataset`` (the ``dataset`` column of its response rows)."""
        return f"{dataset}|{self.condition}|{self.method_name}"

    @property
    def method_name(self) -> str:
        """The ``method`` column of its response rows (the alpha included, so cells never mix)."""
        return self.method if self.alpha is None else f"{self.method}(alpha={self.alpha:g})"


def check_config(out: Path, config: dict[str, Any], ignore: Sequence[str] = ("limit",)) -> None:
    """Refuse a folder that holds a run with other settings; else (re)write its ``config.json``.

    ``ignore`` names settings a rerun may change (``--limit``: a larger one reuses every response).
    """
    path = out / "config.json"
    if path.is_file():
        old = read_json(path)
        diff = sorted(k for k in {*old, *config} - set(ignore) if old.get(k) != config.get(k))
        if diff:
            raise ValueError(
                f"{str(out)!r} holds a run with other settings ({', '.join(diff)}); pass another --out or delete it."
            )
    write_json_atomic(path, config)


def grader_from_spec(text: str | None, prompt_set: str, cache: Path | None):
    """The LLM grader of ``--grader llm:MODEL`` for ``prompt_set`` (None when no grader was given)."""
    if text is None:
        return None
    from vlminterp.eval.endpoint import BASE_URL_ENV, ChatEndpoint, base_url_from_env
    from vlminterp.eval.http_judge import EndpointGrader

    kind, _, model = text.partition(":")
    if kind != "llm" or not model:
        raise ValueError(f"--grader {text!r}: use llm:<model> (an OpenAI-compatible chat model).")
    if base_url_from_env() is None:
        raise ValueError(
            f"--grader {text!r}: set {BASE_URL_ENV[0]} (or {BASE_URL_ENV[1]}) to the grader's base URL."
        )
    return EndpointGrader(ChatEndpoint(model, cache=cache), prompt_set)


@dataclasses.dataclass
class Protocol:
    """One paper protocol's run: the generation run, its judge, grader spec and the benchmarks present.

    Attributes:
        paper: ``"cmrm"`` or ``"shiftdc"`` (the published rows it is compared with).
        run: Model, output folder and generation settings (resumable responses).
        judge: The safety judge's spec (built when scoring, on rank 0 only).
        grader: ``llm:MODEL`` for LLaVA-Bench / MM-Vet grades, or None (those are then generated but
            not graded, and the table says so).
        benchmarks: ``[(benchmark, spec)]`` present (:func:`vlminterp.reproduce.benchmarks.locate`).
        safety_metric: The name of the judged-unsafe share in this paper (``unsafe_rate`` / ``asr``).
    """

    paper: str
    run: Run
    judge: JudgeSpec
    grader: str | None
    benchmarks: list[tuple[Benchmark, DatasetSpec]]
    safety_metric: str
    samples: dict[str, list[Sample]] = dataclasses.field(default_factory=dict)
    responses: list[tuple[Cell, Benchmark, list[dict[str, Any]]]] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)
    _judge: Any = dataclasses.field(default=None, init=False, repr=False)

    def load(self) -> None:
        """Read every present benchmark (images generated or given placeholders where missing)."""
        for b, spec in self.benchmarks:
            self.samples[b.name] = spec.load()
            n_placeholder = sum(bool(s.meta.get("placeholder_image")) for s in self.samples[b.name])
            if n_placeholder:
                self.note(
                    f"{b.name}: {n_placeholder} of {len(self.samples[b.name])} images are grey placeholders "
                    "(image files missing and not drawable); numbers on them do not measure the benchmark."
                )

    def note(self, text: str) -> None:
        """Add a line under the tables (once, however many cells raise it)."""
        if text not in self.notes:
            self.notes.append(text)

    def generate(self, b: Benchmark, cell: Cell, intervention: Intervention | None = None) -> None:
        """Responses of ``cell`` on benchmark ``b`` (resumed from ``responses.jsonl``)."""
        rows = self.run.plain(
            self.samples[b.name], b.name, Condition.parse(cell.condition), cell.method_name, intervention
        )
        self.responses.append((cell, b, rows))
        timed = self.run.seconds.get((b.name, cell.condition, cell.method_name))
        if timed is not None and is_main():  # kept across resumes: a rerun times only what it generates
            path = self.run.out / TIMING
            times = read_json(path) if path.is_file() else {}
            times[cell.timing_key(b.name)] = list(timed)
            write_json_atomic(path, times)

    # ------------------------------------------------------------------ scoring
    def score(self) -> list[dict[str, Any]]:
        """Tidy rows of every metric, one per benchmark / subset / condition / method / alpha."""
        out: list[dict[str, Any]] = []
        verdicts, grades = [], []
        self._judge = self.judge.build(cache=self.run.out / "judge_cache.jsonl")
        for cell, b, rows in self.responses:
            keys = {
                "benchmark": b.key,
                "condition": cell.condition,
                "method": cell.method,
                "alpha": cell.alpha,
            }
            scorer = _SCORERS[b.kind]
            measured, records = scorer(self, b, rows)
            out += [{**keys, **m} for m in measured]
            (verdicts if b.kind == "safety" else grades).extend(
                {**keys, "dataset": b.name, **r} for r in records
            )
        out += self._timing()
        write_text_atomic(self.run.out / "verdicts.jsonl", "".join(json.dumps(v) + "\n" for v in verdicts))
        write_text_atomic(
            self.run.out / "grades.jsonl", "".join(json.dumps(g, default=str) + "\n" for g in grades)
        )
        return out

    def _timing(self) -> list[dict[str, Any]]:
        """Seconds per response per cell, and per benchmark over its cells (``benchmark="timing"``,
        ``subset`` the benchmark, as the paper's time table)."""
        path = self.run.out / TIMING
        times = read_json(path) if path.is_file() else {}
        rows, totals = [], {}
        for cell, b, _ in self.responses:
            timed = times.get(cell.timing_key(b.name))
            if timed is None:
                continue
            seconds, n = timed
            keys = {"condition": cell.condition, "method": cell.method, "alpha": cell.alpha}
            rows.append({"benchmark": b.key, **keys, "subset": b.split or "all",
                         "metric": "seconds_per_response", "value": seconds / n, "n": n})  # fmt: skip
            total = totals.setdefault((b.key, *keys.items()), [0.0, 0])
            total[0], total[1] = total[0] + seconds, total[1] + n
        for (key, *keys), (seconds, n) in totals.items():
            rows.append({"benchmark": "timing", **dict(keys), "subset": key,
                         "metric": "seconds_per_response", "value": seconds / n, "n": n})  # fmt: skip
        return rows

    def _safety(self, b: Benchmark, rows: list[dict[str, Any]]):
        from vlminterp.eval.steering import judge_rows

        judged = judge_rows(self._judge, rows, self.samples[b.name])
        variant = b.split or "all"
        for j, r in zip(judged, rows, strict=True):
            j["subset"] = (
                f"{r['meta']['scenario']}/{variant}" if "scenario" in (r.get("meta") or {}) else variant
            )
        measured = rate_table(judged, "unsafe", ["subset"], metric=self.safety_metric)
        if any("/" in j["subset"] for j in judged):
            measured += rate_table(
                [{**j, "subset": f"all/{variant}"} for j in judged],
                "unsafe",
                ["subset"],
                metric=self.safety_metric,
            )
        return [{**m, "judge": self._judge.name} for m in measured], judged

    def _scienceqa(self, b: Benchmark, rows: list[dict[str, Any]]):
        scored = [{"response": r["response"], **{k: r["meta"][k] for k in ("answer", "options", "has_image")}}
                  for r in rows]  # fmt: skip
        return scienceqa_accuracy(scored), []

    def _mme(self, b: Benchmark, rows: list[dict[str, Any]]):
        import warnings

        scored = [{"response": r["response"], **{k: r["meta"][k] for k in ("subtask", "image_name", "gt_answer")}}
                  for r in rows]  # fmt: skip
        counts = Counter(r["subtask"] for r in scored)
        odd = {t for t, n in counts.items() if n % 2}  # --limit cut an image's pair of questions
        if odd:
            last = {t: max(i for i, r in enumerate(scored) if r["subtask"] == t) for t in odd}
            scored = [r for i, r in enumerate(scored) if i not in last.values()]
            note = (
                f"{b.name}: the last question of {sorted(odd)} left out of the scores (--limit cut its pair)."
            )
            self.note(note)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            measured = mme_scores(scored)
        for message in sorted({str(w.message) for w in caught}):
            self.note(message)
        return [{"subset": m.pop("subtask"), **m, "metric": "mme_" + m["metric"]} for m in measured], []

    def _graded(self, b: Benchmark, rows: list[dict[str, Any]]):
        from vlminterp.eval.http_judge import grade_rows

        grader = grader_from_spec(self.grader, b.kind, self.run.out / "grader_cache.jsonl")
        if grader is None:
            self.note(f"{b.name}: responses generated but not graded; pass --grader llm:MODEL to grade them.")
            return [], []
        graded = grade_rows(grader, rows, self.samples[b.name])
        if b.kind == "mm-vet":
            measured = [{"subset": m.pop("capability"), **m} for m in mmvet_scores(graded)]
        else:
            measured = [{"subset": m.pop("category"), **m} for m in llava_bench_scores(graded)]
        return [{**m, "judge": grader.name} for m in measured], graded


_SCORERS: dict[str, Callable[..., Any]] = {
    "safety": Protocol._safety,
    "scienceqa": Protocol._scienceqa,
    "mme": Protocol._mme,
    "llava-bench": Protocol._graded,
    "mm-vet": Protocol._graded,
}
