"""``vlminterp sweep``: layer / head / alpha-layer ablation studies.

``--study`` picks the study (:data:`STUDIES`, modules of :mod:`vlminterp.studies`); the common options
(:func:`vlminterp.studies.common.add_common_arguments`) and every study's own are accepted. Every
argument is checked before anything is written: a bad one exits with status 2 and a message, and
leaves ``--out`` as it was.

Data-parallel: ``torchrun --nproc-per-node 8 -m vlminterp sweep --study head --device cuda ...`` runs
one process per GPU, each on its share of the grid points; rank 0 writes the one merged result, equal
to a one-process run (see :mod:`vlminterp.studies.common`).

Example:
    >>> from vlminterp.cli import sweep
    >>> sweep.main(["--study", "layer", "--model", "tiny:nope"])  # doctest: +SKIP
    usage: vlminterp sweep ...
    vlminterp sweep: error: --model 'tiny:nope': no tiny builder for 'nope'; ...
    >>> sweep.main(["--study", "layer", "--model", "organism", "--out", "results/layer"])  # doctest: +SKIP
    0
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Sequence
from types import ModuleType

from vlminterp.cli import SUBCOMMANDS
from vlminterp.parallel import is_main
from vlminterp.studies.common import add_common_arguments

__all__ = ["HELP", "STUDIES", "add_arguments", "build_parser", "main"]

HELP = SUBCOMMANDS["sweep"]
#: ``--study`` -> module with ``add_study_arguments(parser)`` and ``run(args)`` (in :mod:`vlminterp.studies`).
STUDIES = {
    "layer": "vlminterp.studies.layer_ablation",
    "head": "vlminterp.studies.head_ablation",
    "alpha-layer": "vlminterp.studies.alpha_layer_grid",
}


def _study(study: str) -> ModuleType:
    return importlib.import_module(STUDIES[study])


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``--study`` plus the common options, then every study's own."""
    parser.add_argument("--study", required=True, choices=sorted(STUDIES), help="which ablation study to run")
    add_common_arguments(parser)
    for study in STUDIES:
        _study(study).add_study_arguments(parser)


def build_parser() -> argparse.ArgumentParser:
    """The ``vlminterp sweep`` parser."""
    parser = argparse.ArgumentParser(prog="vlminterp sweep", description=HELP)
    add_arguments(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` (the arguments after ``sweep``), run the study and print its files; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        written = _study(args.study).run(args)
    except ValueError as e:
        parser.error(str(e))
    if is_main():
        for path in written:
            print(path)
    return 0
