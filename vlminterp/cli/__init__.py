"""The ``vlminterp`` command: ``demo``, ``doctor``, ``collect``, ``gap``, ``eval``, ``steer``, ``sweep``.

Each subcommand lives in the module of its idea and parses its own arguments: the module has
either ``main(argv)`` or the pair ``add_arguments(parser)`` / ``run(args)``. This file only
dispatches, so ``main(argv)`` is importable and testable.

Example:
    >>> from vlminterp.cli import SUBCOMMANDS
    >>> sorted(SUBCOMMANDS)
    ['collect', 'demo', 'doctor', 'eval', 'gap', 'steer', 'sweep']
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["main", "SUBCOMMANDS"]

#: subcommand -> (module, entry function or None for add_arguments/run, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str | None, str]] = {
    "demo": ("vlminterp.demo", "main", "the whole story on the shipped organism, in minutes, on a CPU"),
    "doctor": ("vlminterp.doctor", "main", "check the installed versions against independent references"),
    "collect": ("vlminterp.cache.collect_cli", None, "cache paired-condition activations for a dataset"),
    "gap": (
        "analyses.representation_gap",
        "main",
        "representation gap study: PCA, probes, directions, figures",
    ),
    "eval": ("vlminterp.eval.pipeline", "eval_main", "generate responses for a benchmark and judge them"),
    "sweep": ("vlminterp.sweeps", None, "layer / head / alpha-layer ablation studies"),
    "steer": (
        "vlminterp.steer_cli",
        "main",
        "one command: fit CMRM / ShiftDC, generate, judge, tabulate refusal rates",
    ),
}


def _import(module: str):
    if module.startswith("analyses."):
        # The studies live in the source checkout next to the package (editable installs).
        root = Path(__file__).resolve().parents[1]
        if not (root / "analyses").is_dir():
            raise SystemExit(
                f"vlminterp: {module} is a study script of the source checkout; run it from a clone."
            )
        if str(root) not in sys.path:
            sys.path.insert(0, str(root))
    return importlib.import_module(module)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    top = argparse.ArgumentParser(prog="vlminterp", description=__doc__.splitlines()[0])
    top.add_argument(
        "command", choices=sorted(SUBCOMMANDS), help="; ".join(f"{k}: {v[2]}" for k, v in SUBCOMMANDS.items())
    )
    if not argv or argv[0] in ("-h", "--help"):
        top.print_help()
        return 0 if argv else 2
    command, rest = top.parse_args(argv[:1]).command, argv[1:]
    module_name, entry, help_text = SUBCOMMANDS[command]
    module = _import(module_name)
    if entry is not None:
        result = getattr(module, entry)(rest)
    else:
        parser = argparse.ArgumentParser(prog=f"vlminterp {command}", description=help_text)
        module.add_arguments(parser)
        result = module.run(parser.parse_args(rest))
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
