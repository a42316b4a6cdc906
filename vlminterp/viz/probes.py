"""Figure of linear probes: harmful-vs-benign accuracy per layer, with confidence bands.

Example:
    >>> rows = [{"analysis": "probe", "metric": "accuracy", "layer": l, "train": "text_only",
    ...          "test": "image", "value": 0.9} for l in range(2)]
    >>> [t.name for t in probe_accuracy(rows).data]
    ['text_only → image']
"""

from __future__ import annotations

import plotly.graph_objects as go

from vlminterp.viz.rows import Rows, require, unique
from vlminterp.viz.style import PALETTE, layer_axis, title

__all__ = ["probe_accuracy"]


def probe_accuracy(rows: Rows, *, metric: str = "accuracy") -> go.Figure:
    """Probe accuracy vs layer: one line per train→test pair with its CI band, chance at 0.5."""
    probe = require(rows, "probe_accuracy", analysis="probe", metric=metric)
    pairs = unique((r["train"], r["test"]) for r in probe)
    fig = go.Figure()
    for i, (train, test) in enumerate(pairs):
        pts = sorted(
            (r["layer"], r["value"], r.get("ci_low"), r.get("ci_high"))
            for r in probe
            if (r["train"], r["test"]) == (train, test)
        )
        color = PALETTE[i % len(PALETTE)]
        name = f"{train} → {test}"
        x = [p[0] for p in pts]
        if all(p[2] is not None and p[3] is not None for p in pts):
            fig.add_trace(
                go.Scatter(
                    x=x + x[::-1],
                    y=[p[3] for p in pts] + [p[2] for p in pts][::-1],
                    fill="toself",
                    mode="lines",
                    fillcolor=color,
                    opacity=0.15,
                    line={"width": 0},
                    hoverinfo="skip",
                    legendgroup=name,
                    showlegend=False,
                    name=f"{name} 95% CI",
                )
            )
        fig.add_trace(
            go.Scatter(
                x=x,
                y=[p[1] for p in pts],
                mode="lines+markers",
                name=name,
                legendgroup=name,
                line={"color": color},
            )
        )
    if metric == "accuracy":
        fig.add_hline(y=0.5, line_dash="dot", line_color="grey", annotation_text="chance")
    layer_axis(fig, probe)
    fig.update_layout(
        yaxis_title=f"probe {metric} (harmful vs benign)",
        yaxis_range=[0, 1.05],
        legend_title_text="train → test",
    )
    return title(fig, probe, f"Harmful-vs-benign probe {metric} per layer")
