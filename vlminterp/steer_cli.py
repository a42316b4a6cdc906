"""``vlminterp steer cmrm|shiftdc``: fit a defence, generate, judge, and tabulate refusal rates, in one command.

``steer cmrm`` fits CMRM shift vectors on an anchor set (or, ``--level sample``, uses each input's own
twins), then generates responses to the evaluation set under IMAGE (no intervention), TEXT_ONLY,
CAPTION (when every sample has a caption) and IMAGE + CMRM, judges them and writes a tidy table.
``steer shiftdc`` does the same with ShiftDC (a saved safety direction, or one fitted on a dataset),
adds each sample's distortion ``cos(m, s)`` and ``m . s / |s|`` per steered layer, and with
``--compare-cmrm-alpha A`` a comparison table ShiftDC vs CMRM vs no defence on the same samples.

Files in ``--out``: ``responses.jsonl`` (resumable: a rerun skips finished responses),
``verdicts.jsonl``, ``table.json`` / ``table.csv`` (one measurement per row: ``dataset, label,
condition, method, judge, metric, value, n, ci_low, ci_high``; metrics ``refused_rate``,
``unsafe_rate``, and for the organism ``correct_rate``, the exact expected answer; plus
``seconds_per_response`` of the responses generated in this run), the steering vectors
(``cmrm_vectors`` / ``safety_direction``, ``.safetensors`` + ``.json``), ``config.json``; ShiftDC also
``shift.json`` / ``shift.csv`` (per sample and layer), ``captions.json`` and, when asked,
``comparison.json`` / ``comparison.csv``. The refusal-rate rows are printed as a Markdown table.

Datasets are ``DATASET[:split]``: ``organism`` (the shipped organism's ``test``/``val``/``train``
requests, harmful and benign, one image each) or a :mod:`vlminterp.data` name read from ``--root``.
Judges: ``organism`` (the response starts with ``sorry``) or ``keyword:<preset>``
(:data:`vlminterp.eval.judges.KEYWORD_PRESETS`, lists from ``--judges-dir``).

Example:
    >>> from vlminterp.steer_cli import main
    >>> main(["cmrm", "--model", "organism", "--anchor", "organism:train", "--eval", "organism:test",
    ...       "--judge", "organism", "--out", "/tmp/steer", "--limit", "8"])  # doctest: +SKIP
    0
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vlminterp.eval.judges import KEYWORD_PRESETS, Judge, KeywordJudge, Verdict
from vlminterp.eval.metrics import rate_table
from vlminterp.eval.runner import generate_responses, read_responses
from vlminterp.interventions.site import LAYER_WORDS, resolve_layers
from vlminterp.io import atomic_path, read_json, write_json_atomic, write_text_atomic
from vlminterp.prompts import Condition, Sample
from vlminterp.specs import MODEL_SPEC_HELP, ModelSpec

if TYPE_CHECKING:
    from vlminterp.interventions import Intervention
    from vlminterp.models.hooked_vlm import HookedVLM

__all__ = ["main", "build_parser", "DatasetSpec", "PredicateJudge", "make_judge", "load_samples", "markdown"]

#: Folder of the published keyword lists in a source checkout (``shared/data/judges`` next to it).
DEFAULT_JUDGES_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "judges"
GROUP = ["dataset", "label", "condition", "method", "judge"]
COLUMNS = [*GROUP, "metric", "value", "n", "ci_low", "ci_high"]


# ---------------------------------------------------------------------- inputs
@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """``DATASET[:split]`` parsed and checked (the dataset name exists, the organism's split exists).

    Example:
        >>> DatasetSpec.parse("organism:train")
        DatasetSpec(name='organism', split='train')
    """

    name: str
    split: str | None = None

    @classmethod
    def parse(cls, text: str, option: str = "dataset") -> DatasetSpec:
        from vlminterp import data
        from vlminterp.organism.tasks import SPLITS

        name, _, split = text.partition(":")
        name = name.strip().lower()
        if name == "organism":
            split = split or "test"
            if split not in SPLITS:
                raise ValueError(f"{option} {text!r}: the organism has splits {list(SPLITS)}, not {split!r}.")
            return cls(name, split)
        if name.replace("_", "-") not in data.names():
            raise ValueError(
                f"{option} {text!r}: unknown dataset {name!r}. Use 'organism' or one of {data.names()}."
            )
        return cls(name, split or None)

    def __str__(self) -> str:
        return f"{self.name}:{self.split}" if self.split else self.name


def load_samples(spec: DatasetSpec, root: str | None, limit: int | None) -> list[Sample]:
    """The samples of ``spec``: the first ``limit`` of each label (all when None), in dataset order.

    The organism gives its harmful then benign requests of the split (one image each); other
    datasets are read with :func:`vlminterp.data.load` from ``root``.
    """
    if spec.name == "organism":
        from vlminterp.organism.tasks import organism_samples

        samples = [
            s for kind in ("harmful", "benign") for s in organism_samples(spec.split, kind, n_images=1)
        ]
    else:
        from vlminterp import data

        if root is None:
            raise ValueError(
                f"Dataset {spec.name!r} is read from files: pass --root (the folder holding it)."
            )
        samples = data.load(spec.name, root, split=spec.split)
    if limit is None:
        return samples
    seen: dict[str | None, int] = {}
    kept = []
    for s in samples:
        seen[s.label] = seen.get(s.label, 0) + 1
        if seen[s.label] <= limit:
            kept.append(s)
    return kept


class PredicateJudge(Judge):
    """A judge from a ``text -> refused`` rule (``unsafe`` is its negation).

    Example:
        >>> from vlminterp.organism.judge import is_refusal
        >>> [v.refused for v in PredicateJudge(is_refusal, "organism").judge(None, ["sorry , no .", "sure ."])]
        [True, False]
    """

    def __init__(self, refuses: Callable[[str], bool], name: str):
        self.refuses, self.name = refuses, name

    def judge(self, samples: Sequence[Sample] | None, responses: Sequence[str]) -> list[Verdict]:
        self._check(samples, responses)
        return [
            Verdict(refused=(r := bool(self.refuses(t))), unsafe=not r, judge=self.name) for t in responses
        ]


def make_judge(spec: str, judges_dir: str | Path | None = None) -> Judge:
    """``organism`` (:func:`vlminterp.organism.judge.is_refusal`) or ``keyword:<preset>`` read from ``judges_dir``."""
    if spec == "organism":
        from vlminterp.organism.judge import is_refusal

        return PredicateJudge(is_refusal, "organism")
    kind, _, preset = spec.partition(":")
    if kind != "keyword" or preset not in KEYWORD_PRESETS:
        raise ValueError(
            f"--judge {spec!r}: use 'organism' or 'keyword:<preset>' with a preset from {sorted(KEYWORD_PRESETS)}."
        )
    folder = Path(judges_dir) if judges_dir is not None else DEFAULT_JUDGES_DIR
    if not folder.is_dir():
        raise ValueError(
            f"--judge {spec!r} reads its keyword list from --judges-dir; {str(folder)!r} is not a folder."
        )
    return KeywordJudge.preset(preset, folder)


def _layers(text: str) -> str | list[int]:
    if text in LAYER_WORDS:
        return text
    try:
        return [int(x) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--layers {text!r}: use one of {list(LAYER_WORDS)} or comma-separated layer indices (8,9,10; "
            "negative: from the end)."
        ) from None


def _finite(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number.")
    return value


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer.")
    return int(text)


# ---------------------------------------------------------------------- generation
@dataclasses.dataclass
class Run:
    """What every stage of one command shares: the model, the output folder and the generation settings."""

    model: HookedVLM
    out: Path
    max_new_tokens: int
    batch_size: int
    progress: bool
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
        if n_new > 0:
            self.seconds[(dataset, condition, method)] = (time.perf_counter() - start, n_new)


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


def write_table(out: Path, name: str, rows: list[dict[str, Any]]) -> None:
    """``out/NAME.json`` and ``out/NAME.csv`` (atomic)."""
    write_json_atomic(out / f"{name}.json", rows)
    fields = list(dict.fromkeys(k for r in rows for k in r))
    with atomic_path(out / f"{name}.csv") as tmp, open(tmp, "w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


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


# ---------------------------------------------------------------------- the commands
def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help=MODEL_SPEC_HELP)
    p.add_argument("--eval", required=True, help="evaluated DATASET[:split]")
    p.add_argument("--judge", required=True, help="organism | keyword:<preset>")
    p.add_argument("--judges-dir", default=None, help=f"keyword lists (default {DEFAULT_JUDGES_DIR})")
    p.add_argument("--out", required=True, help="output folder (a rerun resumes)")
    p.add_argument("--root", default=None, help="files of --eval (and of the other datasets unless given)")
    p.add_argument(
        "--anchor-root", default=None, help="files of the anchor / direction dataset (default --root)"
    )
    p.add_argument(
        "--utility", default=None, help="utility DATASET[:split], evaluated under IMAGE and IMAGE+method"
    )
    p.add_argument("--utility-root", default=None, help="files of --utility (default --root)")
    p.add_argument("--limit", type=_positive, default=None, help="first N samples per label of every dataset")
    p.add_argument("--max-new-tokens", type=_positive, default=64, help="greedy tokens per response")
    p.add_argument("--batch-size", type=_positive, default=16, help="samples per generate call")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")


def build_parser() -> argparse.ArgumentParser:
    """The ``vlminterp steer`` parser with its ``cmrm`` and ``shiftdc`` subcommands."""
    parser = argparse.ArgumentParser(prog="vlminterp steer", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="method", required=True, metavar="{cmrm,shiftdc}")
    cmrm = sub.add_parser("cmrm", help="CMRM: fit shift vectors, steer IMAGE inputs, judge")
    _common(cmrm)
    cmrm.set_defaults(parser=cmrm)
    cmrm.add_argument("--anchor", default=None, help="anchor DATASET[:split] (needed for --level dataset)")
    cmrm.add_argument("--level", choices=("dataset", "sample"), default="dataset")
    cmrm.add_argument("--alpha", type=_finite, default=1.0)
    cmrm.add_argument("--steps", choices=("all", "prefill"), default="all")
    cmrm.add_argument(
        "--layers", type=_layers, default="all", help="'all', 'second_half' or comma-separated layers"
    )
    cmrm.add_argument("--estimator", choices=("mean", "pc1"), default="mean")
    cmrm.add_argument("--blank", choices=("white", "noise", "mean_pixel"), default="white")
    shift = sub.add_parser("shiftdc", help="ShiftDC: safety direction, steer IMAGE inputs, distortion, judge")
    _common(shift)
    shift.set_defaults(parser=shift)
    shift.add_argument(
        "--direction", required=True, help="saved SteeringVectors FILE, or fit:DATASET[:split]"
    )
    shift.add_argument("--direction-condition", choices=("auto", "caption", "text_only"), default="auto")
    shift.add_argument(
        "--layers", type=_layers, default="second_half", help="'all', 'second_half' (L//2 .. L-1) or layers"
    )
    shift.add_argument("--steps", choices=("prefill", "all"), default="prefill")
    shift.add_argument("--caption-source", choices=("self", "sample"), default="self")
    shift.add_argument(
        "--caption-prompt", default=None, help="self-captioning prompt ({query} = the request)"
    )
    shift.add_argument("--caption-max-new-tokens", type=_positive, default=None)
    shift.add_argument("--compare-cmrm-alpha", type=_finite, default=None, help="also run dataset-level CMRM")
    shift.add_argument(
        "--anchor", default=None, help="CMRM anchor DATASET[:split] (default: the direction's)"
    )
    return parser


def _check_config(out: Path, config: dict[str, Any]) -> None:
    """Refuse to resume into a folder holding a run with other settings (responses would mix)."""
    path = out / "config.json"
    if path.is_file():
        old = {k: v for k, v in read_json(path).items() if k != "limit"}
        if old != {k: v for k, v in config.items() if k != "limit"}:
            diff = sorted(k for k in {*old, *config} - {"limit"} if old.get(k) != config.get(k))
            raise ValueError(
                f"{str(out)!r} holds a run with other settings ({', '.join(diff)}); pass another --out or delete it."
            )
    write_json_atomic(path, config)


def _cmrm_vectors(
    model, samples: list[Sample], run: Run, layers, estimator: str = "mean", blank: str = "white"
):
    from vlminterp.interventions import CMRM

    vectors = CMRM.fit(
        model, samples, level="dataset", estimator=estimator, blank=blank, layers=layers, progress=run.progress,
        out_dir=run.out / "anchor_activations",
    )  # fmt: skip
    vectors.save(run.out / "cmrm_vectors")
    return vectors


def _finish(
    run: Run, judge: Judge, responses: list[dict[str, Any]], samples: list[Sample]
) -> list[dict[str, Any]]:
    judged = judge_rows(judge, responses, samples)
    write_text_atomic(run.out / "verdicts.jsonl", "".join(json.dumps(j) + "\n" for j in judged))
    rows = table(judged, responses, run)
    write_table(run.out, "table", rows)
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
    return _finish(run, judge, responses, everything)


def run_shiftdc(args: argparse.Namespace, run: Run, judge: Judge, sets: dict[str, tuple[str, list[Sample]]]):
    """Direction, captions, distortion per sample, baselines and IMAGE + ShiftDC (+ CMRM), judged and tabulated."""
    import numpy as np

    from vlminterp.analysis.directions import cosine, scalar_projection
    from vlminterp.demo import ORGANISM_CAPTION_PROMPT
    from vlminterp.interventions import CMRM, SafetyDirection, ShiftDC
    from vlminterp.interventions.captioning import QUERY_CONDITIONED_PROMPT
    from vlminterp.interventions.steering import SteeringVectors

    model, (eval_name, samples) = run.model, sets["eval"]
    if "direction" in sets:
        fit = sets["direction"][1]
        safe = [s for s in fit if s.label == "benign"]
        unsafe = [s for s in fit if s.label == "harmful"]
        direction = SafetyDirection.fit(
            model, safe, unsafe, condition=args.direction_condition, progress=run.progress
        )
        direction.save(run.out / "safety_direction")
    else:
        direction = SteeringVectors.load(args.direction, model)
    organism = args.model == "organism"
    shiftdc = ShiftDC(
        direction, layers=args.layers, steps=args.steps, caption_source=args.caption_source,
        caption_prompt=args.caption_prompt or (ORGANISM_CAPTION_PROMPT if organism else QUERY_CONDITIONED_PROMPT),
        caption_max_new_tokens=args.caption_max_new_tokens or (8 if organism else 64),
        caption_cache=run.out / "captions.json",
    )  # fmt: skip
    layers = "default" if args.layers == "second_half" else _layer_text(args.layers)
    method = f"shiftdc(steps={args.steps},layers={layers},captions={args.caption_source})"
    unit = direction.vectors[list(shiftdc.layers)].double().numpy()

    shift_rows: list[dict[str, Any]] = []

    def steered(name: str, chunk: list[Sample]) -> list[dict[str, Any]]:
        shiftdc.caption(model, chunk)  # self-captions are made once, into captions.json; later calls read it
        for i in range(0, len(chunk), run.batch_size):
            part = chunk[i : i + run.batch_size]
            m = shiftdc.shifts(model, shiftdc.prompts(model, part)).double().numpy()
            cos, proj = cosine(m, unit), scalar_projection(m, unit)
            for j, s in enumerate(part):
                for k, layer in enumerate(shiftdc.layers):
                    for metric, value in (("shift_cosine", cos[j, k]), ("shift_projection", proj[j, k])):
                        shift_rows.append({"dataset": name, "id": s.id, "label": s.label, "image": s.image is not None,
                                           "layer": layer, "metric": metric, "value": float(value)})  # fmt: skip
        return run.plain(chunk, name, Condition.IMAGE, method, shiftdc)

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
    write_table(run.out, "shift", shift_rows)
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
    write_table(run.out, "comparison", comparison)
    if args.compare_cmrm_alpha is not None:
        print("\nShiftDC vs CMRM vs no defence (IMAGE inputs):")
        print(markdown(comparison))
    return rows


def _layer_text(layers: str | list[int]) -> str:
    return layers if isinstance(layers, str) else "+".join(map(str, layers))


def main(argv: Sequence[str] | None = None) -> int:
    """``vlminterp steer cmrm|shiftdc ...``: returns the exit status (2 with a message for bad input)."""
    parser = build_parser()
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    sub = args.parser  # the chosen subcommand's parser, for its error messages
    try:
        model_spec = ModelSpec.parse(args.model)
        judge = make_judge(args.judge, args.judges_dir)
        specs = {"eval": (DatasetSpec.parse(args.eval, "--eval"), args.root)}
        if args.utility:
            specs["utility"] = (DatasetSpec.parse(args.utility, "--utility"), args.utility_root or args.root)
        anchor_root = args.anchor_root or args.root
        if args.method == "shiftdc" and args.direction.startswith("fit:"):
            specs["direction"] = (DatasetSpec.parse(args.direction[4:], "--direction fit:"), anchor_root)
        elif args.method == "shiftdc" and not any(
            Path(p).is_file() for p in (args.direction, args.direction + ".safetensors")
        ):
            raise ValueError(
                f"--direction {args.direction!r}: no such steering vectors file; pass a path written by "
                "SteeringVectors.save or fit:DATASET[:split]."
            )
        needs_anchor = (
            args.level == "dataset" if args.method == "cmrm" else args.compare_cmrm_alpha is not None
        )
        if needs_anchor:
            if args.anchor is None and "direction" not in specs:
                raise ValueError(
                    "--anchor DATASET[:split] is needed (the set CMRM's shift vectors are fitted on)."
                    if args.method == "cmrm"
                    else "--compare-cmrm-alpha needs --anchor DATASET[:split] (or --direction fit:DATASET)."
                )
            specs["anchor"] = (
                (DatasetSpec.parse(args.anchor, "--anchor"), anchor_root)
                if args.anchor
                else specs["direction"]
            )
        sets = {key: (str(spec), load_samples(spec, root, args.limit)) for key, (spec, root) in specs.items()}
        if "direction" in sets and not {"harmful", "benign"} <= {s.label for s in sets["direction"][1]}:
            raise ValueError(
                f"--direction {args.direction!r}: fitting a safety direction needs harmful and benign samples."
            )
        model = model_spec.load()
        if isinstance(args.layers, list):
            resolve_layers(args.layers, model.cfg.n_layers, "--layers")
        out = Path(args.out)
        _check_config(
            out, {k: v for k, v in vars(args).items() if k not in ("no_progress", "batch_size", "parser")}
        )
    except (ValueError, FileNotFoundError) as e:
        sub.error(str(e))
    run = Run(model, out, args.max_new_tokens, args.batch_size, not args.no_progress)
    (run_cmrm if args.method == "cmrm" else run_shiftdc)(args, run, judge, sets)
    print(f"\nwrote {out}/table.json, table.csv, responses.jsonl, verdicts.jsonl")
    return 0


if __name__ == "__main__":
    sys.exit(main())
