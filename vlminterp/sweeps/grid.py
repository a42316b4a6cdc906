"""Grids of a sweep: every combination of the grid's values, and the key that names one point.

Example:
    >>> grid_points({"layer": [0, 1], "head": [None]})
    [{'layer': 0, 'head': None}, {'layer': 1, 'head': None}]
    >>> point_key({"layer": 0, "head": None})
    '{"head": null, "layer": 0}'
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["grid_points", "point_key", "RESERVED"]

#: Row columns a grid key may not use.
RESERVED = {"model", "dataset", "method", "metric", "value", "n"}


def grid_points(grid: Mapping[str, Iterable[Any]]) -> list[dict[str, Any]]:
    """Every combination of ``grid`` values, in order (the last key varies fastest).

    Example:
        >>> grid_points({"layer": [0, 1], "alpha": [0.5]})
        [{'layer': 0, 'alpha': 0.5}, {'layer': 1, 'alpha': 0.5}]
    """
    if not grid:
        raise ValueError("grid is empty; give at least one key, e.g. grid={'layer': range(n_layers)}.")
    keys = list(grid)
    bad = sorted(set(keys) & RESERVED)
    if bad:
        raise ValueError(f"grid keys {bad} clash with result columns {sorted(RESERVED)}; rename them.")
    values = []
    for k in keys:
        vals = [list(v) if isinstance(v, tuple) else v for v in grid[k]]
        if not vals:
            raise ValueError(f"grid[{k!r}] is empty.")
        for v in vals:
            try:
                json.dumps(v)
            except TypeError:
                raise ValueError(
                    f"grid[{k!r}] value {v!r} is not JSON-serialisable (use numbers or strings)."
                ) from None
        values.append(vals)
    return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*values)]


def point_key(point: Mapping[str, Any]) -> str:
    """The point as canonical JSON (sorted keys): its id in a resumable rows file."""
    return json.dumps(dict(point), sort_keys=True)
