"""``vlminterp collect``: cache paired-condition activations for a dataset.

Example:
    >>> from vlminterp.cli import collect
    >>> collect.main(["--model", "tiny", "--out", "runs/tiny-collect", "--limit", "4"])  # doctest: +SKIP
    0
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from vlminterp.cli import SUBCOMMANDS
from vlminterp.studies.collect import add_arguments, run

__all__ = ["HELP", "main"]

HELP = SUBCOMMANDS["collect"]


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` (the arguments after ``collect``) and run; returns the exit status.

    A bad option, dataset, missing image (``--on-missing raise``) or a used ``--out`` exits with
    status 2 and a message naming it, before anything is written.
    """
    parser = argparse.ArgumentParser(prog="vlminterp collect", description=HELP)
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except (ValueError, FileNotFoundError, FileExistsError) as e:
        parser.error(str(e))
