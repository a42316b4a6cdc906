"""Figures of ``vlminterp reproduce``: CMRM's alpha sweep, and every measured rate against the paper's.

Both read the tidy rows of ``tables.json`` (``benchmark``, ``subset``, ``condition``, ``method``,
``alpha``, ``metric``, ``value``, ``ci_low`` / ``ci_high``, ``published``).

Example:
    >>> rows = [{"benchmark": "jailbreakllms", "subset": "all", "condition": "image", "method": m, "alpha": a,
    ...          "metric": "unsafe_rate", "value": v, "published": None}
    ...         for m, a, v in [("none", None, 0.9), ("cmrm_dataset", 0.5, 0.6), ("cmrm_dataset", 1.0, 0.3)]]
    >>> [t.name for t in alpha_sweep(rows).data]
    ['jailbreakllms: CMRM dataset', 'jailbreakllms: image, no defence']
    >>> len(paper_comparison(rows).data)  # nothing published: an empty figure with a note
    0
"""

from __future__ import annotations

import plotly.graph_objects as go

from vlminterp.viz.rows import Rows, unique
from vlminterp.viz.style import PALETTE

__all__ = ["alpha_sweep", "paper_comparison"]

_RATES = {"unsafe_rate", "asr", "accuracy"}


def alpha_sweep(rows: Rows, *, metric: str = "unsafe_rate") -> go.Figure:
    """``metric`` (percent) vs alpha, a line per benchmark and CMRM level (95% CI bars), the unsteered
    IMAGE rate as a dashed line, and the paper's numbers (measured here or not) as open markers."""
    rows = [r for r in rows if r.get("metric") == metric and r.get("subset") == "all"]
    alphas = [r["alpha"] for r in rows if r.get("alpha") is not None]
    fig = go.Figure()
    for i, bench in enumerate(unique(r["benchmark"] for r in rows)):
        color = PALETTE[i % len(PALETTE)]
        mine = [r for r in rows if r["benchmark"] == bench]
        for dash, level in (("solid", "dataset"), ("dot", "sample")):
            steered = sorted(
                (
                    (r["alpha"], r)
                    for r in mine
                    if r["method"] == f"cmrm_{level}" and r.get("alpha") is not None
                ),
                key=lambda pair: pair[0],
            )
            pts = [(a, r) for a, r in steered if r.get("value") is not None]
            if pts:
                hi = [100 * (r.get("ci_high") or r["value"]) - 100 * r["value"] for _, r in pts]
                lo = [100 * r["value"] - 100 * (r.get("ci_low") or r["value"]) for _, r in pts]
                fig.add_trace(go.Scatter(
                    x=[a for a, _ in pts], y=[100 * r["value"] for _, r in pts], mode="lines+markers",
                    name=f"{bench}: CMRM {level}", line={"color": color, "dash": dash},
                    error_y={"type": "data", "array": hi, "arrayminus": lo},
                ))  # fmt: skip
            paper = [(a, r["published"]) for a, r in steered if r.get("published") is not None]
            if paper:
                fig.add_trace(go.Scatter(
                    x=[a for a, _ in paper], y=[100 * v for _, v in paper], mode="markers",
                    name=f"{bench}: CMRM {level}, paper", marker={"color": color, "symbol": "circle-open", "size": 12},
                ))  # fmt: skip
        base = [
            r
            for r in mine
            if r["method"] == "none" and r["condition"] == "image" and r.get("value") is not None
        ]
        if base:
            fig.add_trace(go.Scatter(
                x=[min(alphas, default=0.0), max(alphas, default=1.0)], y=[100 * base[0]["value"]] * 2,
                mode="lines", name=f"{bench}: image, no defence", line={"color": color, "dash": "dash", "width": 1},
            ))  # fmt: skip
    fig.update_layout(
        title=f"CMRM: {metric} vs α (lines: measured, 95% CI; open markers: the paper)",
        xaxis_title="α", yaxis_title=f"{metric} (%)", template="plotly_white",
    )  # fmt: skip
    return fig


def paper_comparison(rows: Rows) -> go.Figure:
    """Every rate (unsafe rate, ASR, accuracy) measured and published: measured (x, %) against the
    paper's (y, %), a colour per metric, with the diagonal; hover names the benchmark, subset,
    condition, method and alpha. Scores on other scales (MME, MM-Vet, seconds) are in the tables."""
    both = [
        r
        for r in rows
        if r.get("metric") in _RATES and r.get("value") is not None and r.get("published") is not None
    ]
    fig = go.Figure()
    for i, metric in enumerate(unique(r["metric"] for r in both)):
        pts = [r for r in both if r["metric"] == metric]
        fig.add_trace(go.Scatter(
            x=[100 * r["value"] for r in pts], y=[100 * r["published"] for r in pts], mode="markers",
            name=metric, marker={"color": PALETTE[i % len(PALETTE)], "size": 9},
            text=[f"{r['benchmark']} {r['subset']} {r['condition']} {r['method']}"
                  + ("" if r.get("alpha") is None else f" α={r['alpha']:g}") for r in pts],
            hovertemplate="%{text}<br>measured %{x:.2f}%<br>paper %{y:.2f}%<extra></extra>",
        ))  # fmt: skip
    if both:
        fig.add_trace(go.Scatter(x=[0, 100], y=[0, 100], mode="lines", name="measured = paper",
                                 line={"color": "grey", "dash": "dash", "width": 1}))  # fmt: skip
    fig.update_layout(
        title="Measured vs the paper's LLaVA-1.5-7B rates" + ("" if both else " (none measured that the paper reports)"),
        xaxis_title="measured (%)", yaxis_title="paper (%)", template="plotly_white",
    )  # fmt: skip
    return fig
