"""Keep the committed notebooks output-free: strip outputs and execution counts, or check that they are.

Usage::

    python analyses/_nbtools.py --strip   # strip analyses/*.ipynb in place
    python analyses/_nbtools.py           # exit 1 and list the notebooks that hold outputs

Example:
    >>> import nbformat
    >>> nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("1 + 1", execution_count=3)])
    >>> problems(strip(nb))
    []
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import nbformat

NOTEBOOKS = sorted(Path(__file__).resolve().parent.glob("[0-9][0-9]_*.ipynb"))


def strip(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """``nb`` with every code cell's outputs, execution count and run metadata removed (in place)."""
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
        for key in ("execution", "collapsed", "scrolled"):
            cell.metadata.pop(key, None)
    nb.metadata.pop("widgets", None)
    return nb


def problems(nb: nbformat.NotebookNode) -> list[str]:
    """What a committed notebook must not hold: outputs or execution counts, one message per cell."""
    out = []
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code" and (cell.outputs or cell.execution_count is not None):
            out.append(f"cell {i}: {len(cell.outputs)} outputs, execution_count={cell.execution_count}")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="*", type=Path, help="notebooks (default analyses/NN_*.ipynb)")
    parser.add_argument("--strip", action="store_true", help="strip the notebooks in place")
    args = parser.parse_args(argv)
    bad = 0
    for path in args.paths or NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        if args.strip:
            nbformat.write(strip(nb), path)
        for message in problems(nb):
            bad += 1
            print(f"{path}: {message} (run: python analyses/_nbtools.py --strip)")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
