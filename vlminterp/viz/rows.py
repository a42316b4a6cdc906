"""Tidy result rows for the figures: reading a results file and choosing the rows a figure draws.

Example:
    >>> rows = [{"analysis": "probe", "layer": 0}, {"analysis": "gap", "layer": 1}]
    >>> select(rows, analysis=("probe", "pca"))
    [{'analysis': 'probe', 'layer': 0}]
    >>> unique([3, 1, 3, 2])
    [1, 2, 3]
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["Rows", "load_rows", "select", "require", "unique"]

#: Tidy result rows: one measurement a row, keyed by ``analysis``, ``metric``, ``layer``, ...
Rows = Sequence[dict[str, Any]]


def load_rows(path: str | Path) -> list[dict[str, Any]]:
    """Read a results JSON file (a list of row dicts).

    Raises:
        FileNotFoundError / ValueError: missing file, or not a JSON list of objects.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No results file at {str(path)!r}; run the analysis that writes it first.")
    rows = json.loads(path.read_text())
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise ValueError(f"{str(path)!r} must hold a JSON list of row objects (tidy results).")
    return rows


def select(rows: Rows, **where: Any) -> list[dict[str, Any]]:
    """Rows whose keys equal every ``where`` value (a tuple/list value means "any of these")."""

    def ok(row: dict[str, Any]) -> bool:
        for key, want in where.items():
            allowed = want if isinstance(want, (tuple, list, set)) else (want,)
            if row.get(key) not in allowed:
                return False
        return True

    return [r for r in rows if ok(r)]


def require(rows: Rows, figure: str, **where: Any) -> list[dict[str, Any]]:
    chosen = select(rows, **where)
    if not chosen:
        found = sorted({str(r.get("analysis")) for r in rows})
        raise ValueError(
            f"{figure} needs rows with {where}, but none are in the results (analyses present: {found}). "
            "Run the analysis that writes them, or pass the right results file."
        )
    return chosen


def unique(values: Any) -> list[Any]:
    """Distinct values in first-seen order, numbers sorted ascending."""
    seen = list(dict.fromkeys(values))
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in seen):
        return sorted(seen)
    return seen
