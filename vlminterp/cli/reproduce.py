"""``vlminterp reproduce cmrm|shiftdc``: one paper's protocol on the real benchmark folders, in one command.

Give a model and the folder holding the benchmarks (one subfolder each, named as the original
releases: ``vlsafe``, ``jailbreak_llms``, ``scienceqa``, ``llava_bench_coco``, ``mm_safetybench``,
``figstep``, ``mme``, ``mm_vet``, ``refusal_direction``; ``--root KEY=PATH`` points one elsewhere).
A missing folder is skipped with a line saying what to download and where. The run writes into
``--out`` and resumes there (responses, fitted vectors, captions, judge and grader replies are all
kept); ``--limit N`` (first N per label of every benchmark) gives a smoke run, and a later run with
a larger limit reuses its responses. The tables (``tables.md``, ``tables.json`` / ``.csv``) show each
measured number with the paper's LLaVA-1.5-7B number beside it. Everything is checked before
anything is written; a bad argument exits with status 2 and a message.

Example:
    >>> args = build_parser().parse_args(["cmrm", "--model", "tiny:llava", "--data-root", "data", "--out", "o"])
    >>> args.alphas[:3], args.judge
    ([0.1, 0.2, 0.3], None)
    >>> main(["shiftdc", "--model", "organism", "--data-root", "../shared/data", "--out", "/tmp/r",
    ...       "--limit", "8"])  # doctest: +SKIP
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
from vlminterp.specs import DEFAULT_JUDGES_DIR, JUDGE_SPEC_HELP, MODEL_SPEC_HELP, JudgeSpec, ModelSpec

__all__ = ["HELP", "main", "build_parser"]

HELP = SUBCOMMANDS["reproduce"]


def _alphas(text: str) -> list[float]:
    values = [finite_float(x) for x in text.split(",") if x.strip()]
    if not values:
        raise argparse.ArgumentTypeError(f"--alphas {text!r}: give comma-separated numbers, e.g. 0.5,1.0.")
    return values


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help=MODEL_SPEC_HELP)
    p.add_argument("--data-root", required=True, help="folder holding one subfolder per benchmark")
    p.add_argument("--out", required=True, help="output folder (a rerun resumes)")
    p.add_argument("--root", action="append", default=[], metavar="KEY=PATH", help="one benchmark elsewhere")
    p.add_argument(
        "--limit", type=positive_int, default=None, help="first N samples per label of every benchmark"
    )
    p.add_argument(
        "--judge", default=None, help=f"safety judge (default: organism for the organism, else "
        f"keyword:refusal_direction). {JUDGE_SPEC_HELP}"
    )  # fmt: skip
    p.add_argument(
        "--judges-dir",
        default=None,
        help=f"keyword lists (default DATA_ROOT/judges, else {DEFAULT_JUDGES_DIR})",
    )
    p.add_argument(
        "--grader", default=None, help="llm:MODEL grading LLaVA-Bench / MM-Vet (base URL from env)"
    )
    p.add_argument("--max-new-tokens", type=positive_int, default=128, help="greedy tokens per response")
    p.add_argument("--batch-size", type=positive_int, default=8, help="samples per generate call")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N (one per rank under torchrun)")
    p.add_argument("--device-map", default=None, help="accelerate placement of a large checkpoint, e.g. auto")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")


def build_parser() -> argparse.ArgumentParser:
    """The ``vlminterp reproduce`` parser with its ``cmrm`` and ``shiftdc`` subcommands."""
    from vlminterp.reproduce import cmrm, shiftdc

    parser = argparse.ArgumentParser(prog="vlminterp reproduce", description=HELP)
    sub = parser.add_subparsers(dest="paper", required=True, metavar="{cmrm,shiftdc}")
    c = sub.add_parser(
        "cmrm", help="CMRM (arXiv 2410.09047): VLSafe, JailbreakLLMs, ScienceQA, LLaVA-Bench-COCO"
    )
    _common(c)
    c.set_defaults(parser=c)
    default_alphas = ",".join(f"{a:g}" for a in cmrm.ALPHAS)
    c.add_argument(
        "--alphas", type=_alphas, default=list(cmrm.ALPHAS), help=f"sweep (default {default_alphas})"
    )
    c.add_argument("--anchor-limit", type=positive_int, default=64, help="anchor instructions per label")
    c.add_argument("--layers", type=layer_spec, default="all", help="'all', 'second_half' or layers")
    c.add_argument("--steps", choices=("all", "prefill"), default="all")
    c.add_argument("--blank", choices=("white", "noise", "mean_pixel"), default="white")
    c.add_argument("--estimator", choices=("mean", "pc1"), default="mean")
    s = sub.add_parser(
        "shiftdc", help="ShiftDC (arXiv 2502.13095): MM-SafetyBench, FigStep, MME, MM-Vet, time"
    )
    _common(s)
    s.set_defaults(parser=s)
    s.add_argument("--variant", choices=shiftdc.VARIANTS, default="authors", help="rule set (ShiftDC.preset)")
    s.add_argument("--alpha", type=finite_float, default=1.0, help="correction strength (the paper: 1)")
    s.add_argument("--layers", type=layer_spec, default="second_half", help="'all', 'second_half' or layers")
    s.add_argument("--steps", choices=("prefill", "all"), default="prefill")
    s.add_argument(
        "--caption-tokens",
        type=positive_int,
        default=None,
        help="self-caption length (default the variant's: 128 authors)",
    )
    s.add_argument("--direction", default=None, help="a saved safety direction (default: fit one)")
    s.add_argument(
        "--direction-limit", type=positive_int, default=64, help="direction instructions per label"
    )
    return parser


def _check(args: argparse.Namespace) -> tuple[Any, ...]:
    """Everything checked before anything is written: model, judge, grader, folders, benchmarks."""
    from vlminterp.reproduce import cmrm, shiftdc
    from vlminterp.reproduce.benchmarks import locate, parse_roots
    from vlminterp.reproduce.engine import grader_from_spec

    model_spec = ModelSpec.parse(args.model)
    judge_text = args.judge or ("organism" if model_spec.name == "organism" else "keyword:refusal_direction")
    beside = Path(args.data_root) / "judges"  # the keyword lists ship with the benchmark copies
    judge_spec = JudgeSpec.parse(judge_text, args.judges_dir or (beside if beside.is_dir() else None))
    if judge_spec.kind == "none":
        raise ValueError("--judge none: reproduce tabulates judged rates; give a judge.")
    grader_from_spec(args.grader, "mm-vet", cache=None)  # checks the spec; no cache file
    if not Path(args.data_root).is_dir():
        raise ValueError(f"--data-root {args.data_root!r} is not a folder.")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {str(out)!r} is a file; give a folder (it is created).")
    module = cmrm if args.paper == "cmrm" else shiftdc
    extra = module.ANCHOR if args.paper == "cmrm" else module.DIRECTION
    roots = parse_roots(args.root)
    present, skipped = locate(module.BENCHMARKS, args.data_root, roots, args.limit)
    aux_limit = args.anchor_limit if args.paper == "cmrm" else args.direction_limit
    aux, aux_skipped = locate([extra], args.data_root, {}, aux_limit)
    if args.paper == "shiftdc" and args.direction:
        if not any(Path(p).is_file() for p in (args.direction, args.direction + ".safetensors")):
            raise ValueError(
                f"--direction {args.direction!r}: no such file (SteeringVectors.save writes one)."
            )
        aux, aux_skipped = [], []
    elif args.paper == "shiftdc" and not aux:
        raise ValueError(
            aux_skipped[0] + " ShiftDC needs it for the safety direction (or pass --direction FILE)."
        )
    if not present:
        raise ValueError("no benchmark folder found under --data-root:\n" + "\n".join(dict.fromkeys(skipped)))
    return (
        model_spec,
        judge_spec,
        present,
        list(dict.fromkeys(skipped + aux_skipped)),
        aux[0][1] if aux else None,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """``vlminterp reproduce cmrm|shiftdc ...``: returns the exit status (2 with a message for bad input)."""
    from vlminterp.eval.steering import Run
    from vlminterp.interventions.site import resolve_layers
    from vlminterp.io import write_json_atomic
    from vlminterp.parallel import init_from_env, is_main, on_main
    from vlminterp.reproduce import cmrm, shiftdc
    from vlminterp.reproduce.engine import Protocol, check_config

    parser = build_parser()
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    sub = args.parser
    try:
        model_spec, judge_spec, present, skipped, aux = _check(args)
        out = Path(args.out)
        config = {k: v for k, v in vars(args).items() if k not in ("no_progress", "batch_size", "parser", "out",
                                                                    "device", "device_map")}  # fmt: skip
        config["model"] = model_spec.name
        device = init_from_env(args.device, args.device_map)
        model = model_spec.load(device=device, device_map=args.device_map)
        if isinstance(args.layers, list):
            resolve_layers(args.layers, model.cfg.n_layers, "--layers")
        on_main(lambda: check_config(out, config))  # every rank raises rank 0's refusal
    except (ValueError, FileNotFoundError) as e:
        sub.error(str(e))
    if is_main():
        print("".join(line + "\n" for line in skipped), end="")
        write_json_atomic(out / "skipped.json", skipped)
    run = Run(model, out, args.max_new_tokens, args.batch_size, not args.no_progress, config)
    metric = "unsafe_rate" if args.paper == "cmrm" else "asr"
    protocol = Protocol(args.paper, run, judge_spec, args.grader, present, metric)
    protocol.load()
    if args.paper == "cmrm":
        options = {k: getattr(args, k) for k in ("layers", "steps", "blank", "estimator")}
        cmrm.run(protocol, aux, args.alphas, options)
        tables = cmrm.layouts(args.alphas)
        paper_alpha = 1.0
    else:
        options = {
            k: getattr(args, k)
            for k in ("variant", "alpha", "layers", "steps", "direction", "caption_tokens")
        }
        shiftdc.run(protocol, aux, {**options, "organism": model_spec.name == "organism"})
        tables = shiftdc.layouts(args.alpha)
        paper_alpha = args.alpha
    on_main(lambda: _report(args.paper, protocol, tables, paper_alpha, config, skipped))
    return 0


def _report(
    paper: str, protocol, tables, paper_alpha: float, config: dict[str, Any], skipped: list[str]
) -> None:
    """Judge and grade, put the published numbers beside, write and print the tables (rank 0)."""
    from vlminterp.io import write_text_atomic
    from vlminterp.reproduce.published import published
    from vlminterp.reproduce.tables import with_published
    from vlminterp.results import write_results
    from vlminterp.viz.export import save_figure
    from vlminterp.viz.reproduction import alpha_sweep, paper_comparison

    out = protocol.run.out
    rows = with_published(protocol.score(), published(paper), paper_alpha)
    rows = [{"model": config["model"], **r} for r in rows]
    write_results(out, rows, config, "tables")
    text = "\n\n".join(t.markdown(rows) for t in tables)
    text += "\n\nCells: measured (the paper's LLaVA-1.5-7B number); - where not measured or not published.\n"
    text += "".join(f"\n- {n}" for n in protocol.notes + skipped)
    write_text_atomic(out / "tables.md", f"# {paper} reproduction: {config['model']}\n\n{text}\n")
    figures = [(paper_comparison(rows), "vs_paper")] + (
        [(alpha_sweep(rows), "alpha_sweep")] if paper == "cmrm" else []
    )
    written = [p.name for fig, name in figures for p in save_figure(fig, out / name)]
    print(text)
    print(
        f"\nwrote {out}/tables.md, tables.json, tables.csv, responses.jsonl, verdicts.jsonl, {', '.join(written)}"
    )
