"""Figures of the representation gap: PCA of last-token states, and the gap metrics per layer.

- :func:`pca_scatter`: ``analysis="pca"`` (``pc1``/``pc2`` per sample, explained variance per layer).
- :func:`gap_metrics`: ``analysis="gap"`` and ``"gap_closed"``.

Example:
    >>> rows = [{"analysis": "gap", "metric": "cosine", "layer": l, "condition": "image",
    ...          "condition_b": "text_only", "value": 0.1 * l} for l in range(3)]
    >>> [list(t.y) for t in gap_metrics(rows).data]
    [[0.0, 0.1, 0.2]]
"""

from __future__ import annotations

from typing import Any

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from vlminterp.viz.rows import Rows, require, select, unique
from vlminterp.viz.style import CONDITION_COLORS, LABEL_SYMBOLS, PALETTE, layer_axis, title

__all__ = ["pca_scatter", "gap_metrics"]


def pca_scatter(rows: Rows) -> go.Figure:
    """PC1 vs PC2 per layer, colour = condition, marker = label, with a layer slider.

    One trace per (layer, condition, label); the slider shows one layer's traces at a time and
    updates the axis titles with that layer's explained variance.
    """
    coords = require(rows, "pca_scatter", analysis="pca", metric=("pc1", "pc2"))
    points: dict[tuple[Any, ...], dict[str, float]] = {}
    for r in coords:
        points.setdefault((r["layer"], r["condition"], r["label"], r["sample_id"]), {})[r["metric"]] = r[
            "value"
        ]
    ratio = {
        (r["layer"], r["component"]): r["value"]
        for r in select(rows, analysis="pca", metric="explained_variance_ratio")
    }
    layers = unique(k[0] for k in points)
    groups = unique((k[1], k[2]) for k in points)
    fig = go.Figure()
    for layer in layers:
        for cond, label in groups:
            keys = [k for k in points if k[:3] == (layer, cond, label)]
            if not keys:
                continue
            fig.add_trace(
                go.Scatter(
                    x=[points[k].get("pc1") for k in keys],
                    y=[points[k].get("pc2") for k in keys],
                    text=[k[3] for k in keys],
                    mode="markers",
                    name=f"{cond} · {label}",
                    legendgroup=f"{cond}·{label}",
                    visible=layer == layers[0],
                    meta={"layer": layer},
                    marker={
                        "color": CONDITION_COLORS.get(
                            cond, PALETTE[groups.index((cond, label)) % len(PALETTE)]
                        ),
                        "symbol": LABEL_SYMBOLS.get(label, "square"),
                        "size": 9,
                        "opacity": 0.8,
                        "line": {"width": 1, "color": "white"},
                    },
                    hovertemplate="%{text}<br>PC1 %{x:.3g}<br>PC2 %{y:.3g}<extra>%{fullData.name}</extra>",
                )
            )

    def axis_titles(layer: Any) -> dict[str, str]:
        return {
            f"{ax}axis.title.text": f"PC{c}"
            + (f" ({ratio[layer, c]:.0%} var.)" if (layer, c) in ratio else "")
            for ax, c in (("x", 1), ("y", 2))
        }

    steps = [
        {
            "method": "update",
            "label": str(layer),
            "args": [{"visible": [t.meta["layer"] == layer for t in fig.data]}, axis_titles(layer)],
        }
        for layer in layers
    ]
    fig.update_layout(
        sliders=[{"active": 0, "currentvalue": {"prefix": "layer "}, "pad": {"t": 40}, "steps": steps}],
        legend_title_text="condition · label",
        **{k.replace(".", "_"): v for k, v in axis_titles(layers[0]).items()},
    )
    fit_on = next((r.get("fit_on") for r in coords if r.get("fit_on")), "")
    return title(fig, coords, f"PCA of last-token resid_post (fit on {fit_on})")


def gap_metrics(rows: Rows) -> go.Figure:
    """Representation-gap metrics vs layer, one panel per metric, one line per condition pair
    (and one per candidate shift in the ``gap_closed`` panel)."""
    gap = require(rows, "gap_metrics", analysis=("gap", "gap_closed"))
    metrics = unique(r["metric"] for r in gap)
    cols = min(3, len(metrics))
    n_rows = -(-len(metrics) // cols)
    fig = make_subplots(rows=n_rows, cols=cols, subplot_titles=metrics, horizontal_spacing=0.08)
    series = unique(
        f"{r['condition']} vs {r['condition_b']}" + (f" + {r['shift']}" if r.get("shift") else "")
        for r in gap
    )
    for i, metric in enumerate(metrics):
        for name in series:
            pts = sorted(
                (r["layer"], r["value"])
                for r in gap
                if r["metric"] == metric
                and f"{r['condition']} vs {r['condition_b']}" + (f" + {r['shift']}" if r.get("shift") else "")
                == name
            )
            if not pts:
                continue
            fig.add_trace(
                go.Scatter(
                    x=[p[0] for p in pts],
                    y=[p[1] for p in pts],
                    mode="lines+markers",
                    name=name,
                    legendgroup=name,
                    showlegend=not any(t.name == name for t in fig.data),
                    line={"color": PALETTE[series.index(name) % len(PALETTE)]},
                ),
                row=i // cols + 1,
                col=i % cols + 1,
            )
    layer_axis(fig, gap)
    return title(fig, gap, "Representation gap per layer")
