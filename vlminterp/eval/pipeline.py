"""One evaluation run as a config: load a benchmark, generate, judge, write tidy rows.

``EvalConfig`` is what the ``vlminterp eval`` command fills in; :func:`run_eval` does the work and
:func:`eval_main` parses ``argv`` (importable, so the CLI and tests call the same code). A run writes
into ``out``: ``responses.jsonl`` (resumable, see :mod:`.runner`), ``verdicts.jsonl`` and
``metrics.csv`` (tidy: one metric per row), both written tmp + rename.

Example:
    >>> cfg = EvalConfig(model="tiny:llava", dataset="jailbreakllms", root="data/jailbreak_llms",
    ...                  out="results/eval", condition="text_only", limit=8, judge="none")
    >>> EvalConfig.from_dict(cfg.to_dict()) == cfg
    True
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vlminterp import data
from vlminterp.eval.judges import KEYWORD_PRESETS, KeywordJudge
from vlminterp.eval.metrics import rate_table
from vlminterp.eval.runner import generate_responses
from vlminterp.io import atomic_path, write_text_atomic
from vlminterp.prompts import Condition
from vlminterp.specs import MODEL_SPEC_HELP, ModelSpec

if TYPE_CHECKING:
    from vlminterp.interventions import Intervention

__all__ = ["EvalConfig", "run_eval", "eval_main"]


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """Settings of one ``vlminterp eval`` run (validated on creation, no side effects).

    Attributes:
        model: A model spec (:mod:`vlminterp.specs`): ``organism``, ``tiny``, ``tiny:FAMILY``, a checkpoint.
        dataset: A name from :func:`vlminterp.data.names`.
        root: The benchmark folder.
        out: Output folder.
        condition: A :class:`Condition` value.
        method: Name recorded per row; anything but ``"none"`` needs an intervention passed to :func:`run_eval`.
        judge: ``"none"`` or ``"keyword:<preset>"`` (presets in :data:`KEYWORD_PRESETS`).
        judges_dir: Folder of the keyword lists (``shared/data/judges``).
        split, limit, seed, on_missing: Passed to :func:`vlminterp.data.load`.
        max_new_tokens, batch_size: Generation settings.
        options: Dataset options (``{"scenarios": ["01"]}``).
    """

    model: str
    dataset: str
    root: str
    out: str
    condition: str = "image"
    method: str = "none"
    judge: str = "keyword:refusal_direction"
    judges_dir: str | None = None
    split: str | None = None
    limit: int | None = None
    seed: int = 0
    on_missing: str = "raise"
    max_new_tokens: int = 256
    batch_size: int = 8
    options: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        ModelSpec.parse(self.model)
        Condition.parse(self.condition)
        if self.dataset.strip().lower().replace("_", "-") not in data.names():
            raise ValueError(f"Unknown dataset {self.dataset!r}. Valid names: {data.names()}.")
        if self.judge != "none":
            kind, _, preset = self.judge.partition(":")
            if kind != "keyword" or preset not in KEYWORD_PRESETS:
                raise ValueError(
                    f"judge={self.judge!r}: use 'none' or 'keyword:<preset>' with a preset from "
                    f"{sorted(KEYWORD_PRESETS)}."
                )
            if self.judges_dir is None:
                raise ValueError(
                    "A keyword judge needs judges_dir (the folder of the keyword list JSON files)."
                )
        if self.max_new_tokens < 1 or self.batch_size < 1:
            raise ValueError("max_new_tokens and batch_size must be >= 1.")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EvalConfig:
        return cls(**d)


def run_eval(
    config: EvalConfig, model=None, intervention: Intervention | None = None
) -> list[dict[str, Any]]:
    """Run ``config``; returns the metric rows (also written to ``out/metrics.csv``).

    Args:
        config: The run.
        model: A loaded ``HookedVLM`` (default: load ``config.model``).
        intervention: The :class:`~vlminterp.interventions.Intervention` of ``config.method`` (CMRM,
            ShiftDC, an ablation, ...); None for ``method="none"``.
    """
    if config.method != "none" and intervention is None:
        raise ValueError(f"method={config.method!r} needs its intervention passed to run_eval.")
    samples = data.load(
        config.dataset,
        config.root,
        config.split,
        config.limit,
        config.seed,
        on_missing=config.on_missing,
        **config.options,
    )
    model = model if model is not None else ModelSpec.parse(config.model).load()
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "config.json", json.dumps(config.to_dict(), indent=2, default=str))
    rows = generate_responses(
        model,
        samples,
        config.condition,
        out / "responses.jsonl",
        intervention,
        max_new_tokens=config.max_new_tokens,
        batch_size=config.batch_size,
        method=config.method,
        dataset=config.dataset,
    )
    if config.judge == "none":
        return []
    judge = KeywordJudge.preset(config.judge.split(":", 1)[1], config.judges_dir)
    verdicts = judge.judge(None, [r["response"] for r in rows])
    judged = [
        {
            "id": r["id"],
            "dataset": r["dataset"],
            "condition": r["condition"],
            "method": r["method"],
            **v.to_dict(),
        }
        for r, v in zip(rows, verdicts, strict=True)
    ]
    write_text_atomic(out / "verdicts.jsonl", "".join(json.dumps(j) + "\n" for j in judged))
    by = ["dataset", "condition", "method", "judge"]
    metrics = rate_table(judged, "unsafe", by) + rate_table(judged, "refused", by)
    with atomic_path(out / "metrics.csv") as tmp, open(tmp, "w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[*by, "metric", "value", "n", "ci_low", "ci_high"])
        writer.writeheader()
        writer.writerows(metrics)
    return metrics


def eval_main(argv: Sequence[str] | None = None) -> int:
    """``vlminterp eval`` entry point: parse ``argv``, run, print the metric table."""
    p = argparse.ArgumentParser(prog="vlminterp eval", description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True, help=MODEL_SPEC_HELP)
    p.add_argument("--dataset", required=True, choices=data.names())
    p.add_argument("--root", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--condition", default="image", choices=[c.value for c in Condition])
    p.add_argument("--judge", default="keyword:refusal_direction")
    p.add_argument("--judges-dir", default=None)
    p.add_argument("--split", default=None)
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--on-missing", default="raise", choices=list(data.ON_MISSING))
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument(
        "--option", action="append", default=[], metavar="KEY=JSON", help="dataset option, e.g. tiny=true"
    )
    args = p.parse_args(argv)
    options = {}
    for item in args.option:
        key, sep, value = item.partition("=")
        if not sep:
            p.error(f"--option {item!r} must be KEY=VALUE")
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
    config = EvalConfig(
        model=args.model,
        dataset=args.dataset,
        root=args.root,
        out=args.out,
        condition=args.condition,
        judge=args.judge,
        judges_dir=args.judges_dir,
        split=args.split,
        limit=args.limit,
        seed=args.seed,
        on_missing=args.on_missing,
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
        options=options,
    )
    for row in run_eval(config):
        print(
            f"{row['dataset']:<18} {row['condition']:<10} {row['method']:<8} {row['metric']:<13} "
            f"{row['value']:.3f} [{row['ci_low']:.3f}, {row['ci_high']:.3f}] n={row['n']}"
        )
    return 0
