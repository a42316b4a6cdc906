"""What the ablation studies share: their command-line options, inputs, layer grid and result files.

Every study (:mod:`.layer_ablation`, :mod:`.head_ablation`, :mod:`.alpha_layer_grid`) reads its
options with :func:`add_common_arguments` plus its own, gets its model, samples, anchors and layers
from :func:`study_inputs` (every argument checked before anything is written: a bad ``--dataset``,
``--layers`` or ``--out`` raises ``ValueError`` and leaves no file), and writes ``results.json`` /
``results.csv`` / ``manifest.json`` (:func:`vlminterp.results.write_results`) plus its heatmaps with
:func:`finish_study`.

Data-parallel: under ``torchrun --nproc-per-node N`` (or ``accelerate launch``) every process loads the
model on its own device (``--device cuda``: the GPU of its local rank) and measures its share of the
grid points (:func:`vlminterp.sweeps.sweep`); rank 0 writes the one merged rows file and the results,
equal to a one-process run.

Example:
    >>> import argparse
    >>> parser = argparse.ArgumentParser(); add_common_arguments(parser)
    >>> args = parser.parse_args(["--model", "tiny", "--n-harmful", "2", "--n-benign", "1", "--layers", "0"])
    >>> inputs = study_inputs(args, "layer_ablation")
    >>> len(inputs.samples), inputs.layers, inputs.out.as_posix()
    (3, [0], 'results/layer_ablation')
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vlminterp.interventions.site import resolve_layers
from vlminterp.parallel import init_from_env, is_main, on_main
from vlminterp.prompts import Sample
from vlminterp.results import write_results
from vlminterp.specs import DATASET_SPEC_HELP, MODEL_SPEC_HELP, DatasetSpec, ModelSpec, model_name

if TYPE_CHECKING:
    from vlminterp.models.hooked_vlm import HookedVLM

__all__ = [
    "StudyInputs",
    "add_common_arguments",
    "study_inputs",
    "parse_choices",
    "finish_study",
    "study_main",
]


@dataclass
class StudyInputs:
    """A study's checked inputs: output folder, model, evaluated samples, anchors and grid layers."""

    out: Path
    model: HookedVLM
    samples: list[Sample]
    anchors: list[Sample]
    layers: list[int]


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """Options every ablation study shares."""
    parser.add_argument("--model", default="organism", help=MODEL_SPEC_HELP)
    parser.add_argument("--dataset", default="organism", help=DATASET_SPEC_HELP)
    parser.add_argument("--data-root", default=None, help="dataset files (vlminterp.data datasets)")
    parser.add_argument("--split", default=None, help="split of the evaluated samples (organism: test)")
    parser.add_argument(
        "--anchor-split", default=None, help="split the steering vectors are fitted on (organism: val)"
    )
    parser.add_argument("--n-harmful", type=int, default=8, help="harmful samples evaluated")
    parser.add_argument("--n-benign", type=int, default=6, help="benign samples evaluated (utility KL)")
    parser.add_argument(
        "--layers",
        default="all",
        help="layers of the grid: 'all' or comma-separated indices (negative: from the end)",
    )
    parser.add_argument("--out", default=None, help="output directory (default results/<study>)")
    parser.add_argument(
        "--max-rows", type=int, default=32, help="rows per forward when grid points are stacked"
    )
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    parser.add_argument(
        "--device", default="cpu", help="cpu, cuda (under torchrun: each rank's own GPU), cuda:1"
    )
    parser.add_argument(
        "--device-map", default=None, help="accelerate placement of one large checkpoint, e.g. auto"
    )


def _layers(text: str, n_layers: int) -> list[int]:
    if text.strip().lower() == "all":
        return list(range(n_layers))
    try:
        chosen = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"--layers {text!r}: give 'all' or comma-separated layer indices (0,2,5).") from None
    return list(resolve_layers(chosen, n_layers, "--layers"))


def _dataset(args: argparse.Namespace, split: str | None, default: str) -> DatasetSpec:
    name = str(args.dataset).partition(":")[0].strip().lower()
    split = split or (default if name == "organism" else None)
    text = f"{args.dataset}:{split}" if split and ":" not in args.dataset else args.dataset
    return DatasetSpec.parse(text, root=args.data_root, option="--dataset", root_option="--data-root")


def study_inputs(
    args: argparse.Namespace, name: str, model: HookedVLM | None = None, n_benign: int | None = None
) -> StudyInputs:
    """Check every common option, then load the model and samples (nothing is written).

    The evaluated samples are the first ``--n-harmful`` harmful and ``--n-benign`` benign samples
    of ``--dataset`` at ``--split`` (``n_benign`` overrides); the anchors (what steering vectors and
    means are fitted on) the same counts at ``--anchor-split``. A benchmark without splits given uses
    its first split for both.

    Raises:
        ValueError: a bad model spec, dataset, count, ``--layers`` or ``--max-rows``, an ``--out``
            that is a file, a dataset without harmful samples, or ``--device-map`` under a launcher
            of several processes.
    """
    out = Path(args.out or f"results/{name}")
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {str(out)!r} is a file; give a folder (it is created).")
    for option in ("n_harmful", "max_rows"):
        if getattr(args, option) < 1:
            raise ValueError(f"--{option.replace('_', '-')} must be >= 1, got {getattr(args, option)}.")
    if args.n_benign < 0:
        raise ValueError(f"--n-benign must be >= 0, got {args.n_benign}.")
    spec = ModelSpec.parse(args.model)
    evaluated, anchor = _dataset(args, args.split, "test"), _dataset(args, args.anchor_split, "val")
    counts = {"harmful": args.n_harmful, "benign": args.n_benign if n_benign is None else n_benign}
    samples = evaluated.load(counts)
    if not any(s.label == "harmful" for s in samples):
        raise ValueError(
            f"--dataset {str(evaluated)!r} gave no harmful samples; the studies measure refusal on harmful inputs."
        )
    anchors = anchor.load({"harmful": args.n_harmful, "benign": args.n_benign})
    if model is None:
        device = init_from_env(args.device, args.device_map)  # refuses --device-map with several processes
        model = spec.load(device=device, device_map=args.device_map)
    return StudyInputs(out, model, samples, anchors, _layers(args.layers, model.cfg.n_layers))


def parse_choices(option: str, text: str, allowed: Sequence[str]) -> list[str]:
    """Comma-separated ``text`` of a study option as a list, each item one of ``allowed``.

    Raises:
        ValueError: an unknown item, or nothing given; the message names ``option`` and the choices.

    Example:
        >>> parse_choices("--modes", "zero, mean", ("zero", "mean"))
        ['zero', 'mean']
    """
    items = [m.strip() for m in text.split(",") if m.strip()]
    bad = sorted(set(items) - set(allowed))
    if bad or not items:
        raise ValueError(f"{option} {bad or items} not supported; choose from {list(allowed)}.")
    return items


def finish_study(
    out: Path, rows: list[dict[str, Any]], args: argparse.Namespace, name: str, model: HookedVLM
) -> list[Path]:
    """Write a study's ``results.json`` / ``.csv`` + manifest (config from ``args``), then its heatmaps.

    Under a launcher rank 0 writes; every rank returns the files written.
    """
    skip = {"parser", "device", "device_map"}
    config = {k: v for k, v in vars(args).items() if not k.startswith("_") and k not in skip}

    def write() -> list[Path]:
        from vlminterp.studies.ablation_heatmap import draw

        results = write_results(out, rows, {**config, "study": name, "model": model_name(model)})
        return [results, *draw(results, out)]

    return on_main(write)


def study_main(
    doc: str | None,
    add_study_arguments: Callable[[argparse.ArgumentParser], None],
    run: Callable[[argparse.Namespace], list[Path]],
    argv: Sequence[str] | None = None,
) -> list[Path]:
    """The shared ``main(argv)`` of the ablation studies: parse common + study options, run, list files."""
    parser = argparse.ArgumentParser(description=(doc or "").split("\n\n")[0])
    add_common_arguments(parser)
    add_study_arguments(parser)
    args = parser.parse_args(argv)
    try:
        written = run(args)
    except ValueError as e:
        parser.error(str(e))
    if is_main():
        for path in written:
            print(path)
    return written
