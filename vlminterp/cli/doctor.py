"""``vlminterp doctor``: check the installed versions against independent references.

Example:
    >>> from vlminterp.cli import doctor
    >>> doctor.main([])  # doctest: +SKIP
    0
"""

from __future__ import annotations

from collections.abc import Sequence

from vlminterp.cli import SUBCOMMANDS
from vlminterp.doctor import main as _entry

__all__ = ["HELP", "main"]

HELP = SUBCOMMANDS["doctor"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``vlminterp doctor`` on ``argv`` (the arguments after ``doctor``); returns the exit status."""
    return _entry(argv)
