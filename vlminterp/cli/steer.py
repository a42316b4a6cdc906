"""``vlminterp steer``: one command: fit CMRM / ShiftDC, generate, judge, tabulate refusal rates.

Example:
    >>> from vlminterp.cli import steer
    >>> steer.main(["cmrm", "--model", "organism", "--anchor", "organism:train", "--eval", "organism:test", "--judge", "organism", "--out", "runs/cmrm"])  # doctest: +SKIP
    0
"""

from __future__ import annotations

from collections.abc import Sequence

from vlminterp.cli import SUBCOMMANDS
from vlminterp.steer_cli import main as _entry

__all__ = ["HELP", "main"]

HELP = SUBCOMMANDS["steer"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``vlminterp steer`` on ``argv`` (the arguments after ``steer``); returns the exit status."""
    return _entry(argv)
