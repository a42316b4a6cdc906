"""``vlminterp steer cmrm|shiftdc``: fit a defence, generate, judge, and tabulate refusal rates, in one command.

The pipeline and its files are described in :mod:`vlminterp.eval.steering`; this module parses and
checks the arguments. Datasets are ``DATASET[:split]`` (:class:`vlminterp.specs.DatasetSpec`:
``organism`` or a :mod:`vlminterp.data` name read from ``--root``); judges are ``organism`` or
``keyword:<preset>`` (:class:`vlminterp.specs.JudgeSpec`, lists from ``--judges-dir``). Everything
(model spec, datasets, judge, layers, direction file, ``--out``) is checked before anything is
written; a bad argument exits with status 2 and a message and leaves ``--out`` as it was. A rerun
with the same settings resumes; one with other settings into the same ``--out`` is refused.

Under ``torchrun --nproc-per-node N`` (or ``accelerate launch``) each process loads the model on
its own device (``--device cuda``: the GPU of its local rank) and works on its shard of the samples;
rank 0 checks ``--out`` while the others wait, and a refusal stops every rank with the same message
(see :mod:`vlminterp.eval.steering` for what is merged). ``--device-map auto`` places one large
checkpoint over the visible GPUs, for a one-process run.

Example:
    >>> build_parser().parse_args(["cmrm", "--model", "tiny", "--eval", "organism", "--judge", "organism",
    ...                            "--out", "o", "--layers", "0,1"]).layers
    [0, 1]
    >>> main(["cmrm", "--model", "organism", "--anchor", "organism:train", "--eval", "organism:test",
    ...       "--judge", "organism", "--out", "/tmp/steer", "--limit", "8"])  # doctest: +SKIP
    0
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vlminterp.cli import SUBCOMMANDS
from vlminterp.cli.arguments import finite_float, layer_spec, positive_int
from vlminterp.interventions.site import resolve_layers
from vlminterp.io import read_json, write_json_atomic
from vlminterp.parallel import init_from_env, is_main, on_main
from vlminterp.specs import (
    DATASET_SPEC_HELP,
    DEFAULT_JUDGES_DIR,
    JUDGE_SPEC_HELP,
    MODEL_SPEC_HELP,
    DatasetSpec,
    JudgeSpec,
    ModelSpec,
)

__all__ = ["HELP", "main", "build_parser"]

HELP = SUBCOMMANDS["steer"]


# ---------------------------------------------------------------------- the commands
def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help=MODEL_SPEC_HELP)
    p.add_argument("--eval", required=True, help=f"evaluated {DATASET_SPEC_HELP}")
    p.add_argument("--judge", required=True, help=JUDGE_SPEC_HELP)
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
    p.add_argument(
        "--limit", type=positive_int, default=None, help="first N samples per label of every dataset"
    )
    p.add_argument("--max-new-tokens", type=positive_int, default=64, help="greedy tokens per response")
    p.add_argument("--batch-size", type=positive_int, default=16, help="samples per generate call")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.add_argument("--device", default="cpu", help="cpu, cuda (under torchrun: each rank's own GPU), cuda:1")
    p.add_argument(
        "--device-map",
        default=None,
        help="accelerate placement of one large checkpoint over the visible GPUs, e.g. auto (one process)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The ``vlminterp steer`` parser with its ``cmrm`` and ``shiftdc`` subcommands."""
    parser = argparse.ArgumentParser(prog="vlminterp steer", description=HELP)
    sub = parser.add_subparsers(dest="method", required=True, metavar="{cmrm,shiftdc}")
    cmrm = sub.add_parser("cmrm", help="CMRM: fit shift vectors, steer IMAGE inputs, judge")
    _common(cmrm)
    cmrm.set_defaults(parser=cmrm)
    cmrm.add_argument("--anchor", default=None, help="anchor DATASET[:split] (needed for --level dataset)")
    cmrm.add_argument("--level", choices=("dataset", "sample"), default="dataset")
    cmrm.add_argument("--alpha", type=finite_float, default=1.0)
    cmrm.add_argument("--steps", choices=("all", "prefill"), default="all")
    cmrm.add_argument(
        "--layers", type=layer_spec, default="all", help="'all', 'second_half' or comma-separated layers"
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
        "--variant",
        choices=("vlminterp", "authors"),
        default="vlminterp",
        help="rule set: vlminterp (self-consistent defaults) or authors (Renovamen/ShiftDC's code: bare twins, "
        "post-norm last layer, NORMAL_SAFE steered prompt, 128-token captions); see ShiftDC.preset",
    )
    shift.add_argument(
        "--alpha", type=finite_float, default=None, help="correction strength (default the variant's, 1)"
    )
    shift.add_argument(
        "--layers",
        type=layer_spec,
        default="second_half",
        help="'all', 'second_half' (L//2 .. L-1) or layers",
    )
    shift.add_argument("--steps", choices=("prefill", "all"), default="prefill")
    shift.add_argument("--caption-source", choices=("self", "sample"), default="self")
    shift.add_argument(
        "--caption-prompt", default=None, help="self-captioning prompt ({query} = the request)"
    )
    shift.add_argument("--caption-max-new-tokens", type=positive_int, default=None)
    shift.add_argument(
        "--compare-cmrm-alpha", type=finite_float, default=None, help="also run dataset-level CMRM"
    )
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


def _datasets(args: argparse.Namespace) -> dict[str, DatasetSpec]:
    """The datasets of the run by role (eval, utility, direction, anchor), each parsed and checked."""
    anchor_root = args.anchor_root or args.root
    specs = {"eval": DatasetSpec.parse(args.eval, args.root, args.limit, option="--eval")}
    if args.utility:
        specs["utility"] = DatasetSpec.parse(
            args.utility, args.utility_root or args.root, args.limit, option="--utility"
        )
    if args.method == "shiftdc" and args.direction.startswith("fit:"):
        specs["direction"] = DatasetSpec.parse(
            args.direction[4:], anchor_root, args.limit, option="--direction fit:"
        )
    elif args.method == "shiftdc" and not any(
        Path(p).is_file() for p in (args.direction, args.direction + ".safetensors")
    ):
        raise ValueError(
            f"--direction {args.direction!r}: no such steering vectors file; pass a path written by "
            "SteeringVectors.save or fit:DATASET[:split]."
        )
    needs_anchor = args.level == "dataset" if args.method == "cmrm" else args.compare_cmrm_alpha is not None
    if needs_anchor:
        if args.anchor is None and "direction" not in specs:
            raise ValueError(
                "--anchor DATASET[:split] is needed (the set CMRM's shift vectors are fitted on)."
                if args.method == "cmrm"
                else "--compare-cmrm-alpha needs --anchor DATASET[:split] (or --direction fit:DATASET)."
            )
        specs["anchor"] = (
            DatasetSpec.parse(args.anchor, anchor_root, args.limit, option="--anchor")
            if args.anchor
            else specs["direction"]
        )
    return specs


def main(argv: Sequence[str] | None = None) -> int:
    """``vlminterp steer cmrm|shiftdc ...``: returns the exit status (2 with a message for bad input)."""
    from vlminterp.eval.steering import Run, run_cmrm, run_shiftdc

    parser = build_parser()
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    sub = args.parser  # the chosen subcommand's parser, for its error messages
    try:
        model_spec = ModelSpec.parse(args.model)
        judge = JudgeSpec.parse(args.judge, args.judges_dir).build()
        if judge is None:
            raise ValueError(
                "--judge none: steer tabulates refusal rates; give organism or keyword:<preset>."
            )
        out = Path(args.out)
        if out.exists() and not out.is_dir():
            raise ValueError(f"--out {str(out)!r} is a file; give a folder (it is created).")
        sets = {key: (str(spec), spec.load()) for key, spec in _datasets(args).items()}
        if "direction" in sets and not {"harmful", "benign"} <= {s.label for s in sets["direction"][1]}:
            raise ValueError(
                f"--direction {args.direction!r}: fitting a safety direction needs harmful and benign samples."
            )
        model = model_spec.load(
            device=init_from_env(args.device, args.device_map), device_map=args.device_map
        )
        if isinstance(args.layers, list):
            resolve_layers(args.layers, model.cfg.n_layers, "--layers")
        config = {
            k: v
            for k, v in vars(args).items()
            if k not in ("no_progress", "batch_size", "parser", "out", "device", "device_map")
        }
        config["model"] = model_spec.name
        on_main(lambda: _check_config(out, config))  # every rank raises rank 0's refusal
    except (ValueError, FileNotFoundError) as e:
        sub.error(str(e))
    run = Run(model, out, args.max_new_tokens, args.batch_size, not args.no_progress, config)
    (run_cmrm if args.method == "cmrm" else run_shiftdc)(args, run, judge, sets)
    if is_main():
        print(f"\nwrote {out}/table.json, table.csv, responses.jsonl, verdicts.jsonl")
    return 0
