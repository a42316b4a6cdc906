"""``vlminterp demo``: the whole story on the shipped organism, in minutes, on a CPU.

Example:
    >>> from vlminterp.cli import demo
    >>> demo.main(["--quick", "--out", "results/demo"])  # doctest: +SKIP
    0
"""

from __future__ import annotations

from collections.abc import Sequence

from vlminterp.cli import SUBCOMMANDS
from vlminterp.demo import main as _entry

__all__ = ["HELP", "main"]

HELP = SUBCOMMANDS["demo"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``vlminterp demo`` on ``argv`` (the arguments after ``demo``); returns the exit status."""
    return _entry(argv)
