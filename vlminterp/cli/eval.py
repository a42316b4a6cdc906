"""``vlminterp eval``: generate responses for a benchmark and judge them.

Example:
    >>> from vlminterp.cli import eval
    >>> eval.main(["--model", "tiny", "--dataset", "jailbreakllms", "--root", "DATA", "--out", "runs/eval", "--judge", "none"])  # doctest: +SKIP
    0
"""

from __future__ import annotations

from collections.abc import Sequence

from vlminterp.cli import SUBCOMMANDS
from vlminterp.eval.pipeline import eval_main as _entry

__all__ = ["HELP", "main"]

HELP = SUBCOMMANDS["eval"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``vlminterp eval`` on ``argv`` (the arguments after ``eval``); returns the exit status."""
    return _entry(argv)
