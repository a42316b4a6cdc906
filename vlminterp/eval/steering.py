"""The ``vlminterp steer`` pipeline: fit a defence, generate, judge, and tabulate refusal rates.

``run_cmrm`` fits CMRM shift vectors on an anchor set (or, ``--level sample``, uses each input's own
twins), then generates responses to the evaluation set under IMAGE (no intervention), TEXT_ONLY,
CAPTION (when every sample has a caption) and IMAGE + CMRM, judges them and writes a tidy table.
``run_shiftdc`` does the same with ShiftDC (a saved safety direction, or one fitted on a dataset),
adds each sample's distortion ``cos(m, s)`` and ``m . s / |s|`` per steered layer, and with
``--compare-cmrm-alpha A`` a comparison table ShiftDC vs CMRM vs no defence on the same samples.

Files in the output folder: ``responses.jsonl`` (resumable: a rerun skips finished responses),
``verdicts.jsonl``, ``table.json`` / ``table.csv`` (tidy rows, :mod:`vlminterp.results`: ``dataset,
label, condition, method, judge, metric, value, n, ci_low, ci_high``; metrics ``refused_rate``,
``unsafe_rate``, and for the organism ``correct_rate``, the exact expected answer; plus
``seconds_per_response`` of the responses generated in this run, ShiftDC's including its
self-captioning), ``manifest.json``, the steering
vectors (``cmrm_vectors`` / ``safety_direction``, ``.safetensors`` + ``.json``); ShiftDC also
``shift.json`` / ``shift.csv`` (per sample and layer), ``captions.json`` and, when asked,
``comparison.json`` / ``.csv``. The command line is :mod:`vlminterp.cli.steer`.

Under ``torchrun`` / ``accelerate launch`` every process runs the same pipeline on its shard of the
samples (:mod:`vlminterp.parallel`): responses as in :func:`generate_responses`, self-captions into
per-rank copies of ``captions.json`` merged by rank 0, the distortion rows gathered in sample order.
The steering vectors are fitted by all ranks together (the activation store shards and all-reduces)
and rank 0's are broadcast, so every rank steers with the same bits; judging, tables and printing
happen on rank 0 only (a judge such as the HTTP one runs once). ``seconds_per_response`` is the
stage's wall time x processes / responses generated: device-seconds per response, the same quantity
as in a one-process run (the wall time per response is that divided by the number of processes).

Example:
    >>> GROUP  # one rate row per group of judged responses and metric
    ['dataset', 'label', 'condition', 'method', 'judge']
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vlminterp.eval.judges import Judge
from vlminterp.eval.metrics import rate_table
from vlminterp.eval.runner import generate_responses, read_responses
from vlminterp.io import write_text_atomic
from vlminterp.parallel import barrier, broadcast, gather, is_main, json_cache, on_main, rank_world, shard
from vlminterp.prompts import Condition, Sample
from vlminterp.results import write_results
from vlminterp.specs import model_name

if TYPE_CHECKING:
    from vlminterp.interventions import Intervention, ShiftDC
    from vlminterp.models.hooked_vlm import HookedVLM

__all__ = [
    "Run",
    "caption_shards",
    "rank_captions",
    "judge_rows",
    "table",
    "markdown",
    "run_cmrm",
    "run_shiftdc",
    "GROUP",
]

#: Columns that name a group of judged responses (one rate row per group and metric).
GROUP = ["dataset", "label", "condition", "method", "judge"]


@dataclasses.dataclass
class Run:
    """What every stage of one command shares: the model, the output folder and the generation settings."""

    model: HookedVLM
    out: Path
    max_new_tokens: int
    batch_size: int
    progress: bool
    config: dict[str, Any] = dataclasses.field(default_factory=dict)
    seconds: dict[tuple[str, str, str], tuple[float, int]] = dataclasses.field(default_factory=dict)

    @property
    def responses(self) -> Path:
        return self.out / "responses.jsonl"

    def plain(
        self,
        samples: list[Sample],
        dataset: str,
        condition: Condition,
        method: str = "none",
        intervention: Intervention | None = None,
    ) -> list[dict[str, Any]]:
        """Responses under ``condition``, unsteered or with any ``intervention``, resumably (:func:`generate_responses`)."""
        before = self._done(dataset, condition.value, method)
        barrier()  # ranks start together (and generate_responses ends with them together)
        start = time.perf_counter()
        rows = generate_responses(
            self.model, samples, condition, self.responses, intervention, max_new_tokens=self.max_new_tokens,
            batch_size=self.batch_size, method=method, dataset=dataset, progress=self.progress,
        )  # fmt: skip
        self._time(
            dataset, condition.value, method, start, len(samples) - len(before & {s.id for s in samples})
        )
        return rows

    @staticmethod
    def _key(row: dict[str, Any]) -> tuple[Any, Any, Any]:
        return row.get("dataset"), row.get("condition"), row.get("method")

    def _done(self, dataset: str, condition: str, method: str) -> set[str]:
        return {
            r["id"] for r in read_responses(self.responses) if self._key(r) == (dataset, condition, method)
        }

    def _time(self, dataset: str, condition: str, method: str, start: float, n_new: int) -> None:
        if n_new > 0:  # device-seconds: wall time x processes (see the module docstring)
            self.seconds[(dataset, condition, method)] = (
                (time.perf_counter() - start) * rank_world()[1],
                n_new,
            )


def judge_rows(judge: Judge, rows: list[dict[str, Any]], samples: list[Sample]) -> list[dict[str, Any]]:
    """One verdict per response: ``{id, dataset, label, condition, method, judge, refused, unsafe, evidence}``."""
    by_id = {s.id: s for s in samples}
    verdicts = judge.judge([by_id[r["id"]] for r in rows], [r["response"] for r in rows])
    return [
        {k: r[k] for k in ("id", "dataset", "label", "condition", "method")} | {"label": r["label"] or "unlabelled"}
        | v.to_dict()
        for r, v in zip(rows, verdicts, strict=True)
    ]  # fmt: skip


def table(judged: list[dict[str, Any]], responses: list[dict[str, Any]], run: Run) -> list[dict[str, Any]]:
    """Tidy rows: refused / unsafe rates with Wilson CIs; organism exact answers; seconds per response."""
    rows = rate_table(judged, "refused", GROUP) + rate_table(judged, "unsafe", GROUP)
    organism = [
        r for r in responses if r["dataset"].startswith("organism") and "answer" in (r.get("meta") or {})
    ]
    if organism:
        from vlminterp.organism.judge import is_correct

        judge_of = {(j["dataset"], j["condition"], j["method"], j["id"]): j["judge"] for j in judged}
        correct = [
            {"dataset": r["dataset"], "label": r["label"], "condition": r["condition"], "method": r["method"],
             "judge": judge_of[(r["dataset"], r["condition"], r["method"], r["id"])],
             "correct": is_correct(r["response"], r["meta"]["answer"])}
            for r in organism
        ]  # fmt: skip
        rows += rate_table(correct, "correct", GROUP)
    for (dataset, condition, method), (seconds, n) in run.seconds.items():
        rows.append({"dataset": dataset, "label": "all", "condition": condition, "method": method, "judge": None,
                     "metric": "seconds_per_response", "value": seconds / n, "n": n, "ci_low": None, "ci_high": None})  # fmt: skip
    return rows


def markdown(rows: list[dict[str, Any]], metric: str = "refused_rate") -> str:
    """The ``metric`` rows as a Markdown table (value with its 95% Wilson interval).

    Example:
        >>> print(markdown([{"dataset": "d", "label": "harmful", "condition": "image", "method": "none",
        ...                  "metric": "refused_rate", "value": 0.5, "n": 2, "ci_low": 0.1, "ci_high": 0.9}]))
        | dataset | label | condition | method | refused_rate | 95% CI | n |
        |---|---|---|---|---|---|---|
        | d | harmful | image | none | 0.500 | [0.100, 0.900] | 2 |
    """
    lines = [
        f"| dataset | label | condition | method | {metric} | 95% CI | n |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r["metric"] == metric:
            lines.append(
                f"| {r['dataset']} | {r['label']} | {r['condition']} | {r['method']} | {r['value']:.3f} | "
                f"[{r['ci_low']:.3f}, {r['ci_high']:.3f}] | {r['n']} |"
            )
    return "\n".join(lines)


def _cmrm_vectors(
    model, samples: list[Sample], run: Run, layers, estimator: str = "mean", blank: str = "white"
):
    from vlminterp.interventions import CMRM

    vectors = broadcast(CMRM.fit(
        model, samples, level="dataset", estimator=estimator, blank=blank, layers=layers, progress=run.progress,
        out_dir=run.out / "anchor_activations",
    ))  # fmt: skip
    if is_main():
        vectors.save(run.out / "cmrm_vectors")
    return vectors


def _finish(
    run: Run, judge: Judge, responses: list[dict[str, Any]], samples: list[Sample]
) -> list[dict[str, Any]]:
    """Judge, write and print the table (call on rank 0 only, :func:`~vlminterp.parallel.on_main`)."""
    judged = judge_rows(judge, responses, samples)
    write_text_atomic(run.out / "verdicts.jsonl", "".join(json.dumps(j) + "\n" for j in judged))
    rows = [{"model": model_name(run.model), **r} for r in table(judged, responses, run)]
    write_results(run.out, rows, run.config, "table")
    print(markdown(rows))
    if any(r["metric"] == "correct_rate" for r in rows):
        print("\nExact expected answer (organism utility):")
        print(markdown(rows, "correct_rate"))
    return rows


def _baselines(run: Run, samples: list[Sample], dataset: str) -> list[dict[str, Any]]:
    """IMAGE, TEXT_ONLY and (when every sample has a caption) CAPTION responses without intervention."""
    conditions = [Condition.IMAGE, Condition.TEXT_ONLY]
    if all(s.caption for s in samples):
        conditions.append(Condition.CAPTION)
    return [r for c in conditions for r in run.plain(samples, dataset, c)]


def run_cmrm(args: argparse.Namespace, run: Run, judge: Judge, sets: dict[str, tuple[str, list[Sample]]]):
    """Fit (dataset level), generate the baselines and IMAGE + CMRM, judge, tabulate."""
    from vlminterp.interventions import CMRM

    model, (eval_name, samples) = run.model, sets["eval"]
    method = f"cmrm_{args.level}(alpha={args.alpha:g},steps={args.steps},layers={_layer_text(args.layers)})"
    if args.level == "dataset":
        vectors = _cmrm_vectors(model, sets["anchor"][1], run, args.layers, args.estimator, args.blank)
        intervention = CMRM(vectors, alpha=args.alpha, layers=args.layers, steps=args.steps)
    else:
        intervention = CMRM.sample_level(
            alpha=args.alpha, layers=args.layers, steps=args.steps, blank=args.blank
        )

    def steered(name: str, chunk: list[Sample]) -> list[dict[str, Any]]:
        return run.plain(chunk, name, Condition.IMAGE, method, intervention)

    responses = _baselines(run, samples, eval_name) + steered(eval_name, samples)
    everything = list(samples)
    if "utility" in sets:
        name, utility = sets["utility"]
        responses += run.plain(utility, name, Condition.IMAGE) + steered(name, utility)
        everything += utility
    return on_main(lambda: _finish(run, judge, responses, everything))


@contextlib.contextmanager
def rank_captions(shiftdc: ShiftDC) -> Iterator[None]:
    """Inside the block ``shiftdc`` reads and fills this process's copy of its caption cache;
    :func:`vlminterp.parallel.json_cache` merges the copies on leaving it (one process: the file itself)."""
    cache = shiftdc.caption_cache
    with json_cache(cache) as mine:
        try:
            shiftdc.caption_cache = mine
            yield
        finally:
            shiftdc.caption_cache = cache


def caption_shards(shiftdc: ShiftDC, model: HookedVLM, samples: list[Sample]) -> None:
    """Make ``shiftdc``'s self-captions of ``samples`` once, each process its shard, into its caption
    cache (later calls read it; :func:`vlminterp.parallel.json_cache` merges the shards)."""
    with rank_captions(shiftdc):
        shiftdc.caption(model, shard(samples))


def run_shiftdc(args: argparse.Namespace, run: Run, judge: Judge, sets: dict[str, tuple[str, list[Sample]]]):
    """Direction, captions, distortion per sample, baselines and IMAGE + ShiftDC (+ CMRM), judged and tabulated."""
    import numpy as np

    from vlminterp.analysis.directions import cosine, scalar_projection
    from vlminterp.demo import ORGANISM_CAPTION_PROMPT
    from vlminterp.interventions import CMRM, SafetyDirection, ShiftDC
    from vlminterp.interventions.steering import SteeringVectors

    model, (eval_name, samples) = run.model, sets["eval"]
    if "direction" in sets:
        fit = sets["direction"][1]
        safe = [s for s in fit if s.label == "benign"]
        unsafe = [s for s in fit if s.label == "harmful"]
        direction = broadcast(SafetyDirection.fit(
            model, safe, unsafe, condition=args.direction_condition, progress=run.progress,
            **ShiftDC.direction_options(args.variant),
        ))  # fmt: skip
        if is_main():
            direction.save(run.out / "safety_direction")
    else:
        direction = SteeringVectors.load(args.direction, model)
    # the organism captions with its own short prompt under the default rules; --variant authors keeps theirs
    organism = args.model == "organism" and args.variant == "vlminterp"
    given = {
        "caption_prompt": args.caption_prompt or (ORGANISM_CAPTION_PROMPT if organism else None),
        "caption_max_new_tokens": args.caption_max_new_tokens or (8 if organism else None),
        "alpha": args.alpha,
    }
    shiftdc = ShiftDC.preset(
        args.variant, direction, layers=args.layers, steps=args.steps, caption_source=args.caption_source,
        caption_cache=run.out / "captions.json", **{k: v for k, v in given.items() if v is not None},
    )  # fmt: skip
    layers = "default" if args.layers == "second_half" else _layer_text(args.layers)
    variant = "" if args.variant == "vlminterp" else f"variant={args.variant},"
    alpha = "" if args.alpha is None else f"alpha={args.alpha:g},"
    method = f"shiftdc({variant}{alpha}steps={args.steps},layers={layers},captions={args.caption_source})"
    unit = direction.vectors[list(shiftdc.layers)].double().numpy()

    shift_rows: list[dict[str, Any]] = []

    def steered(name: str, chunk: list[Sample]) -> list[dict[str, Any]]:
        # The self-captions are made in the timed generation, decoded with the responses
        # (ShiftDC.generate_chunks), each process into its copy of captions.json; then read back.
        with rank_captions(shiftdc):
            responses = run.plain(chunk, name, Condition.IMAGE, method, shiftdc)
        caption_shards(shiftdc, model, chunk)  # any a resumed run's finished responses did not make
        mine, rows = shard(chunk), []
        for i in range(0, len(mine), run.batch_size):
            part = mine[i : i + run.batch_size]
            m = shiftdc.shifts(model, shiftdc.prompts(model, part)).double().numpy()
            cos, proj = cosine(m, unit), scalar_projection(m, unit)
            for j, s in enumerate(part):
                for k, layer in enumerate(shiftdc.layers):
                    for metric, value in (("shift_cosine", cos[j, k]), ("shift_projection", proj[j, k])):
                        rows.append({"model": model_name(model), "dataset": name, "id": s.id, "label": s.label,
                                           "image": s.image is not None, "layer": layer, "metric": metric,
                                           "value": float(value)})  # fmt: skip
        order = {s.id: i for i, s in enumerate(chunk)}  # the ranks' rows in sample order, as in one process
        shift_rows.extend(sorted((r for part in gather(rows) for r in part), key=lambda r: order[r["id"]]))
        return responses

    responses = _baselines(run, samples, eval_name) + steered(eval_name, samples)
    everything = list(samples)
    compared = ["none", method]
    if args.compare_cmrm_alpha is not None:
        vectors = _cmrm_vectors(model, sets["anchor"][1], run, "all")
        cmrm = CMRM(vectors, alpha=args.compare_cmrm_alpha)
        cmrm_method = f"cmrm_dataset(alpha={args.compare_cmrm_alpha:g},steps=all,layers=all)"
        responses += run.plain(samples, eval_name, Condition.IMAGE, cmrm_method, cmrm)
        compared.append(cmrm_method)
    if "utility" in sets:
        name, utility = sets["utility"]
        responses += run.plain(utility, name, Condition.IMAGE) + steered(name, utility)
        everything += utility

    def report() -> list[dict[str, Any]]:
        write_results(run.out, shift_rows, run.config, "shift")
        means = {}
        for r in shift_rows:
            means.setdefault((r["label"], r["metric"]), []).append(r["value"])
        for (label, metric), values in sorted(means.items()):
            print(f"{metric} ({label}, mean over samples and steered layers): {np.mean(values):+.4f}")
        rows = _finish(run, judge, responses, everything)
        comparison = [
            r for r in rows
            if r["dataset"] == eval_name and r["condition"] == Condition.IMAGE.value and r["method"] in compared
        ]  # fmt: skip
        write_results(run.out, comparison, run.config, "comparison")
        if args.compare_cmrm_alpha is not None:
            print("\nShiftDC vs CMRM vs no defence (IMAGE inputs):")
            print(markdown(comparison))
        return rows

    return on_main(report)


def _layer_text(layers: str | list[int]) -> str:
    return layers if isinstance(layers, str) else "+".join(map(str, layers))
