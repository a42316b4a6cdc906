"""The ``vlminterp`` command: ``demo``, ``doctor``, ``collect``, ``gap``, ``eval``, ``steer``, ``sweep``, ``reproduce``.

Each subcommand is a module of this package (``vlminterp.cli.<name>``) with ``HELP`` and
``main(argv) -> int``; this module only dispatches, importing the chosen one on demand (so
``vlminterp doctor`` does not import the studies). ``python -m vlminterp`` runs the same.

Example:
    >>> from vlminterp.cli import SUBCOMMANDS, main
    >>> sorted(SUBCOMMANDS)
    ['collect', 'demo', 'doctor', 'eval', 'gap', 'reproduce', 'steer', 'sweep']
    >>> main(["doctor", "--help"])  # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

__all__ = ["main", "SUBCOMMANDS"]

#: subcommand -> one-line help (the module ``vlminterp.cli.<subcommand>`` runs it)
SUBCOMMANDS: dict[str, str] = {
    "demo": "the whole story on the shipped organism, in minutes, on a CPU",
    "doctor": "check the installed versions against independent references",
    "collect": "cache paired-condition activations for a dataset",
    "gap": "representation gap study: PCA, probes, directions, figures",
    "eval": "generate responses for a benchmark and judge them",
    "steer": "one command: fit CMRM / ShiftDC, generate, judge, tabulate refusal rates",
    "sweep": "layer / head / alpha-layer ablation studies",
    "reproduce": "one paper's protocol (CMRM or ShiftDC) on the real benchmarks, its numbers beside yours",
}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status.

    Example:
        >>> main(["--help"])  # doctest: +SKIP
        0
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    top = argparse.ArgumentParser(prog="vlminterp", description=__doc__.splitlines()[0])
    top.add_argument(
        "command", choices=sorted(SUBCOMMANDS), help="; ".join(f"{k}: {v}" for k, v in SUBCOMMANDS.items())
    )
    if not argv or argv[0] in ("-h", "--help"):
        top.print_help()
        return 0 if argv else 2
    command = top.parse_args(argv[:1]).command
    result = importlib.import_module(f"vlminterp.cli.{command}").main(argv[1:])
    return result if isinstance(result, int) else 0
