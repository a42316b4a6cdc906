"""``vlminterp sweep``: layer / head / alpha-layer ablation studies.

Example:
    >>> from vlminterp.cli import sweep
    >>> sweep.main(["--study", "layer", "--model", "organism", "--out", "results/layer"])  # doctest: +SKIP
    0
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from vlminterp.cli import SUBCOMMANDS
from vlminterp.sweeps import add_arguments, run

__all__ = ["HELP", "main"]

HELP = SUBCOMMANDS["sweep"]


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` (the arguments after ``sweep``) and run; returns the exit status."""
    parser = argparse.ArgumentParser(prog="vlminterp sweep", description=HELP)
    add_arguments(parser)
    return run(parser.parse_args(argv))
