"""``vlminterp gap``: representation gap study: PCA, probes, directions, figures.

Example:
    >>> from vlminterp.cli import gap
    >>> gap.main(["--model", "tiny:llava", "--limit", "10", "--n-splits", "2", "--out", "results/gap"])  # doctest: +SKIP
    0
"""

from __future__ import annotations

from collections.abc import Sequence

from vlminterp.cli import SUBCOMMANDS
from vlminterp.studies.representation_gap import main as study_main

__all__ = ["HELP", "main"]

HELP = SUBCOMMANDS["gap"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the study on ``argv`` (the arguments after ``gap``); returns the exit status."""
    study_main(argv)
    return 0
