"""Figures of directions: their cosine across layers, projections on them, and ShiftDC's distortion.

- :func:`direction_cosine`: ``analysis="direction"``, ``metric="cosine_across_layers"``.
- :func:`projection_distributions`: ``analysis="projection"``.
- :func:`distortion_lines`: ``analysis="distortion_summary"``.

Example:
    >>> rows = [{"analysis": "direction", "metric": "cosine_across_layers", "direction": "safety",
    ...          "layer": a, "layer_b": b, "value": float(a == b)} for a in range(2) for b in range(2)]
    >>> [list(r) for r in direction_cosine(rows).data[0].z]
    [[1.0, 0.0], [0.0, 1.0]]
"""

from __future__ import annotations

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from vlminterp.viz.heatmap import heatmap
from vlminterp.viz.rows import Rows, require, select, unique
from vlminterp.viz.style import LABEL_COLORS, PALETTE, layer_axis, title

__all__ = ["direction_cosine", "projection_distributions", "distortion_lines"]


def direction_cosine(rows: Rows) -> go.Figure:
    """Cosine between one direction's layers (layer × layer heatmap), one panel per direction."""
    cos = require(rows, "direction_cosine", analysis="direction", metric="cosine_across_layers")
    names = unique(r["direction"] for r in cos)
    fig = make_subplots(rows=1, cols=len(names), subplot_titles=[f"{n} direction" for n in names])
    for i, name in enumerate(names):
        panel = heatmap(select(cos, direction=name), x="layer_b", y="layer", zmid=0, zmin=-1, zmax=1)
        trace = panel.data[0].update(showscale=i == 0, colorbar={"title": "cosine"})
        fig.add_trace(trace, row=1, col=i + 1)
        fig.update_xaxes(title_text="layer", row=1, col=i + 1)
        fig.update_yaxes(title_text="layer", row=1, col=i + 1)
    return title(fig, cos, "Cosine similarity of directions across layers")


def projection_distributions(rows: Rows, *, direction: str | None = None) -> go.Figure:
    """Scalar projections on a direction, harmful vs benign violins per layer, one panel per condition."""
    proj = require(rows, "projection_distributions", analysis="projection")
    direction = direction or proj[0]["direction"]
    proj = require(proj, "projection_distributions", direction=direction)
    conds = unique(r["condition"] for r in proj)
    labels = unique(r["label"] for r in proj)
    fig = make_subplots(
        rows=len(conds), cols=1, shared_xaxes=True, subplot_titles=conds, vertical_spacing=0.06
    )
    for i, cond in enumerate(conds):
        for label in labels:
            sel = [r for r in proj if r["condition"] == cond and r["label"] == label]
            if not sel:
                continue
            fig.add_trace(
                go.Violin(
                    x=[str(r["layer"]) for r in sel],
                    y=[r["value"] for r in sel],
                    name=str(label),
                    legendgroup=str(label),
                    showlegend=i == 0,
                    line_color=LABEL_COLORS.get(label, "#7f7f7f"),
                    box_visible=True,
                    meanline_visible=True,
                    points="all",
                    pointpos=0,
                    jitter=0.3,
                    marker={"size": 3},
                ),
                row=i + 1,
                col=1,
            )
        fig.update_yaxes(title_text="projection", row=i + 1, col=1)
    fig.update_xaxes(title_text="layer", row=len(conds), col=1)
    fig.update_layout(violinmode="group", height=max(400, 260 * len(conds)), legend_title_text="label")
    return title(fig, proj, f"Projection on the {direction} direction, harmful vs benign")


def distortion_lines(rows: Rows) -> go.Figure:
    """ShiftDC distortion (mean ± std of ``cos(m, s)`` and ``m·s/‖s‖``) per layer, one line per
    (variant, label)."""
    summ = require(rows, "distortion_lines", analysis="distortion_summary")
    metrics = unique(r["metric"] for r in summ)
    series = unique((r["variant"], r["label"]) for r in summ)
    fig = make_subplots(rows=1, cols=len(metrics), subplot_titles=metrics)
    for j, metric in enumerate(metrics):
        for i, (variant, label) in enumerate(series):
            pts = sorted(
                (r["layer"], r["value"], r["std"])
                for r in summ
                if r["metric"] == metric and (r["variant"], r["label"]) == (variant, label)
            )
            name = f"{variant} · {label}"
            fig.add_trace(
                go.Scatter(
                    x=[p[0] for p in pts],
                    y=[p[1] for p in pts],
                    error_y={"type": "data", "array": [p[2] for p in pts], "visible": True},
                    mode="lines+markers",
                    name=name,
                    legendgroup=name,
                    showlegend=j == 0,
                    line={
                        "color": LABEL_COLORS.get(label) if len(series) <= 3 else PALETTE[i % len(PALETTE)]
                    },
                ),
                row=1,
                col=j + 1,
            )
    layer_axis(fig, summ)
    fig.add_hline(y=0, line_dash="dot", line_color="grey")
    pair = f"{summ[0]['condition']} − {summ[0]['condition_b']}"
    return title(fig, summ, f"Safety perception distortion of the modality shift ({pair})")
