"""One evaluation run as a config: load a benchmark, generate, judge, write tidy rows.

``EvalConfig`` is what the ``vlminterp eval`` command fills in; :func:`run_eval` does the work and
:func:`eval_main` parses ``argv`` (importable, so the CLI and tests call the same code). The model,
dataset and judge are specs (:mod:`vlminterp.specs`), all checked when the config is made, before
anything is written. A run writes into ``out``: ``config.json``, ``responses.jsonl`` (resumable, see
:mod:`.runner`; the model named by its spec), ``verdicts.jsonl`` and ``metrics.json`` /
``metrics.csv`` + ``manifest.json`` (tidy rows, :func:`vlminterp.results.write_results`).

Under ``torchrun --nproc-per-node N`` (or ``accelerate launch``) every process loads the model on
its own device and generates its shard of the samples (:func:`generate_responses` merges them into
one ``responses.jsonl``); rank 0 alone writes ``config.json``, judges (a judge calling an HTTP
endpoint is called once per response, not N times) and writes the metrics, which every rank returns.

Example:
    >>> cfg = EvalConfig(model="tiny:llava", dataset="organism", out="results/eval", condition="text_only",
    ...                  limit=8, judge="organism")
    >>> EvalConfig.from_dict(cfg.to_dict()) == cfg, str(cfg.dataset_spec()), cfg.judge_spec().name
    (True, 'organism:test', 'organism')
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vlminterp import data
from vlminterp.eval.metrics import rate_table
from vlminterp.eval.runner import generate_responses
from vlminterp.io import write_text_atomic
from vlminterp.parallel import barrier, init_from_env, is_main, on_main
from vlminterp.prompts import Condition
from vlminterp.results import write_results
from vlminterp.specs import (
    DATASET_SPEC_HELP,
    JUDGE_SPEC_HELP,
    MODEL_SPEC_HELP,
    DatasetSpec,
    JudgeSpec,
    ModelSpec,
)

if TYPE_CHECKING:
    from vlminterp.interventions import Intervention

__all__ = ["EvalConfig", "run_eval", "eval_main"]


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """Settings of one ``vlminterp eval`` run (validated on creation, no side effects).

    Attributes:
        model: A model spec (:mod:`vlminterp.specs`): ``organism``, ``tiny``, ``tiny:FAMILY``, a checkpoint.
        dataset: A dataset name (:class:`vlminterp.specs.DatasetSpec`: ``organism``, ``tiny``, ``demo``
            or a :func:`vlminterp.data.names` benchmark read from ``root``).
        out: Output folder.
        root: The benchmark folder (benchmarks only).
        condition: A :class:`Condition` value.
        method: Name recorded per row; anything but ``"none"`` needs an intervention passed to :func:`run_eval`.
        judge: A judge spec: ``"none"``, ``"organism"`` or ``"keyword:<preset>"``.
        judges_dir: Folder of the keyword lists (default :data:`vlminterp.specs.DEFAULT_JUDGES_DIR`).
        split, limit, on_missing: The dataset's split, first ``limit`` samples per label, missing images.
        max_new_tokens, batch_size: Generation settings.
        options: Dataset options (``{"scenarios": ["01"]}``).
        device: Where the model runs (``cpu``, ``cuda``: under a launcher each rank's own GPU).
        device_map: Accelerate placement of one large checkpoint (``auto``), for a one-process run.
    """

    model: str
    dataset: str
    out: str
    root: str | None = None
    condition: str = "image"
    method: str = "none"
    judge: str = "keyword:refusal_direction"
    judges_dir: str | None = None
    split: str | None = None
    limit: int | None = None
    on_missing: str = "raise"
    max_new_tokens: int = 256
    batch_size: int = 8
    options: dict[str, Any] = dataclasses.field(default_factory=dict)
    device: str = "cpu"
    device_map: str | None = None

    def __post_init__(self) -> None:
        ModelSpec.parse(self.model)
        Condition.parse(self.condition)
        self.dataset_spec()
        self.judge_spec()
        if self.max_new_tokens < 1 or self.batch_size < 1:
            raise ValueError("--max-new-tokens and --batch-size must be >= 1.")
        out = Path(self.out)
        if out.exists() and not out.is_dir():
            raise ValueError(f"--out {self.out!r} is a file; give a folder (it is created).")

    def dataset_spec(self) -> DatasetSpec:
        """The dataset as a :class:`DatasetSpec` (raises naming ``--dataset`` when it is not valid)."""
        text = f"{self.dataset}:{self.split}" if self.split else self.dataset
        return DatasetSpec.parse(
            text, self.root, self.limit, self.on_missing, self.options, option="--dataset"
        )

    def judge_spec(self) -> JudgeSpec:
        """The judge as a :class:`JudgeSpec` (raises naming ``--judge`` when it is not valid)."""
        return JudgeSpec.parse(self.judge, self.judges_dir)

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
        model: A loaded ``HookedVLM`` (default: load ``config.model`` on ``config.device``; under a
            launcher the process group is joined first and each rank loads its own copy).
        intervention: The :class:`~vlminterp.interventions.Intervention` of ``config.method`` (CMRM,
            ShiftDC, an ablation, ...); None for ``method="none"``.
    """
    if config.method != "none" and intervention is None:
        raise ValueError(f"method={config.method!r} needs its intervention passed to run_eval.")
    dataset = config.dataset_spec()
    judge = config.judge_spec().build()
    samples = dataset.load()
    device = init_from_env(config.device, config.device_map)
    if model is None:
        model = ModelSpec.parse(config.model).load(device=device, device_map=config.device_map)
    out = Path(config.out)
    if is_main():
        out.mkdir(parents=True, exist_ok=True)
        write_text_atomic(out / "config.json", json.dumps(config.to_dict(), indent=2, default=str))
    barrier()
    rows = generate_responses(
        model,
        samples,
        config.condition,
        out / "responses.jsonl",
        intervention,
        max_new_tokens=config.max_new_tokens,
        batch_size=config.batch_size,
        method=config.method,
        dataset=str(dataset),
    )
    if judge is None:
        return []
    return on_main(lambda: _judge_and_write(config, judge, samples, rows))


def _judge_and_write(config: EvalConfig, judge, samples, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Verdicts and metric rows of ``rows``, written into ``config.out`` (rank 0 only)."""
    out = Path(config.out)
    verdicts = judge.judge(samples, [r["response"] for r in rows])
    judged = [
        {k: r[k] for k in ("id", "dataset", "condition", "method")} | v.to_dict()
        for r, v in zip(rows, verdicts, strict=True)
    ]
    write_text_atomic(out / "verdicts.jsonl", "".join(json.dumps(j) + "\n" for j in judged))
    by = ["dataset", "condition", "method", "judge"]
    name = ModelSpec.parse(config.model).name
    metrics = [
        {"model": name, **r} for r in rate_table(judged, "unsafe", by) + rate_table(judged, "refused", by)
    ]
    write_results(out, metrics, {**config.to_dict(), "model": name}, "metrics")
    return metrics


def eval_main(argv: Sequence[str] | None = None) -> int:
    """``vlminterp eval`` entry point: parse ``argv``, run, print the metric table."""
    p = argparse.ArgumentParser(prog="vlminterp eval", description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True, help=MODEL_SPEC_HELP)
    p.add_argument("--dataset", required=True, help=DATASET_SPEC_HELP)
    p.add_argument("--root", default=None, help="the benchmark's folder (vlminterp.data datasets)")
    p.add_argument("--out", required=True)
    p.add_argument("--condition", default="image", choices=[c.value for c in Condition])
    p.add_argument("--judge", default="keyword:refusal_direction", help=JUDGE_SPEC_HELP)
    p.add_argument("--judges-dir", default=None, help="folder of the keyword lists")
    p.add_argument("--split", default=None)
    p.add_argument("--limit", type=int, default=None, help="first N samples of each label")
    p.add_argument("--on-missing", default="raise", choices=list(data.ON_MISSING))
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--device", default="cpu", help="cpu, cuda (under torchrun: each rank's own GPU), cuda:1")
    p.add_argument(
        "--device-map",
        default=None,
        help="accelerate placement of one large checkpoint over the visible GPUs, e.g. auto (one process)",
    )
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
    try:
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
            on_missing=args.on_missing,
            max_new_tokens=args.max_new_tokens,
            batch_size=args.batch_size,
            options=options,
            device=args.device,
            device_map=args.device_map,
        )
    except ValueError as e:
        p.error(str(e))
    rows = run_eval(config)  # on every rank
    if not is_main():
        return 0
    for row in rows:
        print(
            f"{row['dataset']:<18} {row['condition']:<10} {row['method']:<8} {row['metric']:<13} "
            f"{row['value']:.3f} [{row['ci_low']:.3f}, {row['ci_high']:.3f}] n={row['n']}"
        )
    return 0
