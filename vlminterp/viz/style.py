"""The figures' shared look: colours by condition and label, integer layer axes, and titles.

A figure's title carries the rows' ``model`` and ``dataset`` as a subtitle; the rows name the
model by its spec (``organism``, ``tiny:llava``, a hub id), as every result file does.

Example:
    >>> import plotly.graph_objects as go
    >>> title(go.Figure(), [{"model": "organism", "dataset": "organism-test"}], "Gap").layout.title.text
    'Gap<br><sup>organism · organism-test</sup>'
"""

from __future__ import annotations

import plotly.graph_objects as go

from vlminterp.viz.rows import Rows, unique

__all__ = ["CONDITION_COLORS", "LABEL_SYMBOLS", "LABEL_COLORS", "PALETTE", "layer_axis", "title"]

#: Marker colour of each condition.
CONDITION_COLORS = {
    "image": "#d62728",
    "blank": "#7f7f7f",
    "noise": "#9467bd",
    "caption": "#ff7f0e",
    "text_only": "#1f77b4",
}
#: Marker symbol and colour of each sample label (None: unlabeled).
LABEL_SYMBOLS = {"harmful": "x", "benign": "circle", None: "diamond"}
LABEL_COLORS = {"harmful": "#d62728", "benign": "#1f77b4", None: "#7f7f7f"}
#: Colours of series that have no colour of their own, in order.
PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf")


def layer_axis(fig: go.Figure, rows: Rows) -> None:
    """Integer layer ticks (at most ~16) on every x axis."""
    layers = unique(r["layer"] for r in rows)
    fig.update_xaxes(title_text="layer", tick0=0, dtick=max(1, -(-len(layers) // 16)))


def title(fig: go.Figure, rows: Rows, what: str) -> go.Figure:
    model = next((r.get("model") for r in rows if r.get("model")), "")
    dataset = next((r.get("dataset") for r in rows if r.get("dataset")), "")
    context = " · ".join(v for v in (model, dataset) if v)
    fig.update_layout(title=f"{what}<br><sup>{context}</sup>" if context else what, template="plotly_white")
    return fig
