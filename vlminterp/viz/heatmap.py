"""A heatmap of any two row keys: the figure of the ablation studies (layer x head, layer x alpha, ...).

Example:
    >>> rows = [{"layer": l, "head": h, "value": l * h} for l in range(2) for h in range(3)]
    >>> [list(row) for row in heatmap(rows, x="head", y="layer").data[0].z]
    [[0, 0, 0], [0, 1, 2]]
"""

from __future__ import annotations

from typing import Any

import plotly.graph_objects as go

from vlminterp.viz.rows import Rows, unique
from vlminterp.viz.style import title as _title

__all__ = ["heatmap"]


def heatmap(
    rows: Rows,
    *,
    x: str,
    y: str,
    value: str = "value",
    title: str | None = None,
    colorscale: str = "RdBu_r",
    zmid: float | None = None,
    zmin: float | None = None,
    zmax: float | None = None,
) -> go.Figure:
    """A heatmap of ``value`` with ``x`` and ``y`` taken from two row keys (e.g. ``head`` × ``layer``).

    Raises:
        ValueError: no rows, a missing key, or two rows for one cell (filter the rows first).
    """
    if not rows:
        raise ValueError("heatmap got no rows.")
    missing = {k for k in (x, y, value) for r in rows if k not in r}
    if missing:
        raise ValueError(
            f"heatmap: rows lack the keys {sorted(missing)}; choose x/y/value among {sorted(rows[0])}."
        )
    xs, ys = unique(r[x] for r in rows), unique(r[y] for r in rows)
    cells: dict[tuple[Any, Any], Any] = {}
    for r in rows:
        if (r[x], r[y]) in cells:
            raise ValueError(
                f"heatmap: two rows for {x}={r[x]!r}, {y}={r[y]!r}. Filter the rows to one measurement per cell "
                "(e.g. viz.select(rows, metric=...))."
            )
        cells[r[x], r[y]] = r[value]
    z = [[cells.get((xv, yv)) for xv in xs] for yv in ys]
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=[str(v) for v in xs],
            y=[str(v) for v in ys],
            colorscale=colorscale,
            zmid=zmid,
            zmin=zmin,
            zmax=zmax,
            colorbar={"title": value},
            hovertemplate=f"{x} %{{x}}<br>{y} %{{y}}<br>{value} %{{z:.3g}}<extra></extra>",
        )
    )
    fig.update_layout(xaxis_title=x, yaxis_title=y)
    return _title(fig, rows, title or f"{value} by {y} and {x}")
