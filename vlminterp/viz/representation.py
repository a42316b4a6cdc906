"""Plotly figures drawn from tidy result rows (``list[dict]`` as written by the analyses).

Every builder takes rows (load them with :func:`load_rows`), selects the ones it draws by their
``analysis`` key and returns a ``plotly.graph_objects.Figure``; :func:`save_figure` writes HTML
always and PNG when kaleido and a Chrome-family browser are available. :data:`FIGURES` names every
figure for the ``figures/`` scripts and :func:`draw`.

Builders and the rows they read:

- :func:`pca_scatter`: ``analysis="pca"`` (``pc1``/``pc2`` per sample, explained variance per layer).
- :func:`gap_metrics`: ``analysis="gap"`` and ``"gap_closed"``.
- :func:`probe_accuracy`: ``analysis="probe"``, ``metric="accuracy"`` with ``ci_low``/``ci_high``.
- :func:`direction_cosine`: ``analysis="direction"``, ``metric="cosine_across_layers"``.
- :func:`projection_distributions`: ``analysis="projection"``.
- :func:`distortion_lines`: ``analysis="distortion_summary"``.
- :func:`heatmap`: any rows, pivoted on two keys (ablations: layer x head, layer x alpha, ...).

Example:
    >>> from vlminterp import viz
    >>> rows = [{"layer": l, "head": h, "value": l * h} for l in range(2) for h in range(3)]
    >>> fig = viz.heatmap(rows, x="head", y="layer")
    >>> [list(row) for row in fig.data[0].z]
    [[0, 0, 0], [0, 1, 2]]
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import plotly.graph_objects as go
from plotly.subplots import make_subplots

__all__ = [
    "load_rows",
    "select",
    "pca_scatter",
    "gap_metrics",
    "probe_accuracy",
    "direction_cosine",
    "projection_distributions",
    "distortion_lines",
    "heatmap",
    "save_figure",
    "png_unavailable_reason",
    "FIGURES",
    "draw",
    "figure_main",
]

Rows = Sequence[dict[str, Any]]

CONDITION_COLORS = {
    "image": "#d62728",
    "blank": "#7f7f7f",
    "noise": "#9467bd",
    "caption": "#ff7f0e",
    "text_only": "#1f77b4",
}
LABEL_SYMBOLS = {"harmful": "x", "benign": "circle", None: "diamond"}
LABEL_COLORS = {"harmful": "#d62728", "benign": "#1f77b4", None: "#7f7f7f"}
PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf")


# ---------------------------------------------------------------------- rows
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


def _require(rows: Rows, figure: str, **where: Any) -> list[dict[str, Any]]:
    chosen = select(rows, **where)
    if not chosen:
        found = sorted({str(r.get("analysis")) for r in rows})
        raise ValueError(
            f"{figure} needs rows with {where}, but none are in the results (analyses present: {found}). "
            "Run the analysis that writes them, or pass the right results file."
        )
    return chosen


def _unique(values: Any) -> list[Any]:
    """Distinct values in first-seen order, numbers sorted ascending."""
    seen = list(dict.fromkeys(values))
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in seen):
        return sorted(seen)
    return seen


def _layer_axis(fig: go.Figure, rows: Rows) -> None:
    """Integer layer ticks (at most ~16) on every x axis."""
    layers = _unique(r["layer"] for r in rows)
    fig.update_xaxes(title_text="layer", tick0=0, dtick=max(1, -(-len(layers) // 16)))


def _title(fig: go.Figure, rows: Rows, what: str) -> go.Figure:
    model = next((r.get("model") for r in rows if r.get("model")), "")
    dataset = next((r.get("dataset") for r in rows if r.get("dataset")), "")
    context = " · ".join(v for v in (model, dataset) if v)
    fig.update_layout(title=f"{what}<br><sup>{context}</sup>" if context else what, template="plotly_white")
    return fig


# ---------------------------------------------------------------------- figures
def pca_scatter(rows: Rows) -> go.Figure:
    """PC1 vs PC2 per layer, colour = condition, marker = label, with a layer slider.

    One trace per (layer, condition, label); the slider shows one layer's traces at a time and
    updates the axis titles with that layer's explained variance.
    """
    coords = _require(rows, "pca_scatter", analysis="pca", metric=("pc1", "pc2"))
    points: dict[tuple[Any, ...], dict[str, float]] = {}
    for r in coords:
        points.setdefault((r["layer"], r["condition"], r["label"], r["sample_id"]), {})[r["metric"]] = r[
            "value"
        ]
    ratio = {
        (r["layer"], r["component"]): r["value"]
        for r in select(rows, analysis="pca", metric="explained_variance_ratio")
    }
    layers = _unique(k[0] for k in points)
    groups = _unique((k[1], k[2]) for k in points)
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
    return _title(fig, coords, f"PCA of last-token resid_post (fit on {fit_on})")


def gap_metrics(rows: Rows) -> go.Figure:
    """Representation-gap metrics vs layer, one panel per metric, one line per condition pair
    (and one per candidate shift in the ``gap_closed`` panel)."""
    gap = _require(rows, "gap_metrics", analysis=("gap", "gap_closed"))
    metrics = _unique(r["metric"] for r in gap)
    cols = min(3, len(metrics))
    n_rows = -(-len(metrics) // cols)
    fig = make_subplots(rows=n_rows, cols=cols, subplot_titles=metrics, horizontal_spacing=0.08)
    series = _unique(
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
    _layer_axis(fig, gap)
    return _title(fig, gap, "Representation gap per layer")


def probe_accuracy(rows: Rows, *, metric: str = "accuracy") -> go.Figure:
    """Probe accuracy vs layer: one line per train→test pair with its CI band, chance at 0.5."""
    probe = _require(rows, "probe_accuracy", analysis="probe", metric=metric)
    pairs = _unique((r["train"], r["test"]) for r in probe)
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
    _layer_axis(fig, probe)
    fig.update_layout(
        yaxis_title=f"probe {metric} (harmful vs benign)",
        yaxis_range=[0, 1.05],
        legend_title_text="train → test",
    )
    return _title(fig, probe, f"Harmful-vs-benign probe {metric} per layer")


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
    xs, ys = _unique(r[x] for r in rows), _unique(r[y] for r in rows)
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


def direction_cosine(rows: Rows) -> go.Figure:
    """Cosine between one direction's layers (layer × layer heatmap), one panel per direction."""
    cos = _require(rows, "direction_cosine", analysis="direction", metric="cosine_across_layers")
    names = _unique(r["direction"] for r in cos)
    fig = make_subplots(rows=1, cols=len(names), subplot_titles=[f"{n} direction" for n in names])
    for i, name in enumerate(names):
        panel = heatmap(select(cos, direction=name), x="layer_b", y="layer", zmid=0, zmin=-1, zmax=1)
        trace = panel.data[0].update(showscale=i == 0, colorbar={"title": "cosine"})
        fig.add_trace(trace, row=1, col=i + 1)
        fig.update_xaxes(title_text="layer", row=1, col=i + 1)
        fig.update_yaxes(title_text="layer", row=1, col=i + 1)
    return _title(fig, cos, "Cosine similarity of directions across layers")


def projection_distributions(rows: Rows, *, direction: str | None = None) -> go.Figure:
    """Scalar projections on a direction, harmful vs benign violins per layer, one panel per condition."""
    proj = _require(rows, "projection_distributions", analysis="projection")
    direction = direction or proj[0]["direction"]
    proj = _require(proj, "projection_distributions", direction=direction)
    conds = _unique(r["condition"] for r in proj)
    labels = _unique(r["label"] for r in proj)
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
    return _title(fig, proj, f"Projection on the {direction} direction, harmful vs benign")


def distortion_lines(rows: Rows) -> go.Figure:
    """ShiftDC distortion (mean ± std of ``cos(m, s)`` and ``m·s/‖s‖``) per layer, one line per
    (variant, label)."""
    summ = _require(rows, "distortion_lines", analysis="distortion_summary")
    metrics = _unique(r["metric"] for r in summ)
    series = _unique((r["variant"], r["label"]) for r in summ)
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
    _layer_axis(fig, summ)
    fig.add_hline(y=0, line_dash="dot", line_color="grey")
    pair = f"{summ[0]['condition']} − {summ[0]['condition_b']}"
    return _title(fig, summ, f"Safety perception distortion of the modality shift ({pair})")


# ---------------------------------------------------------------------- output
def png_unavailable_reason() -> str | None:
    """None when PNG export can work, else why not (kaleido missing, or no Chrome-family browser)."""
    try:
        import kaleido  # noqa: F401
    except ImportError:
        return "kaleido is not installed (pip install 'vlminterp[export]')"
    try:
        from choreographer.browsers.chromium import Chromium

        if Chromium.find_browser(skip_local=False) is None:
            return "kaleido found no Chrome/Chromium browser (install chromium, or set BROWSER_PATH)"
    except ImportError:  # an older kaleido bundles its own renderer
        return None
    return None


def save_figure(
    fig: go.Figure, path: str | Path, *, include_plotlyjs: str | bool = "directory"
) -> list[Path]:
    """Write ``path.html`` always and ``path.png`` when kaleido can render; returns the written paths.

    Files are written to a temporary name and renamed, so a reader never sees half a file.

    Args:
        fig: The figure.
        path: Output path without extension.
        include_plotlyjs: Passed to ``fig.write_html``; the default ``"directory"`` writes one shared
            ``plotly.min.js`` next to the HTML (offline, and small when there are many figures).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    written = []
    html = path.parent / f"{path.name}.html"
    tmp = path.parent / f".{path.name}.tmp.html"
    fig.write_html(tmp, include_plotlyjs=include_plotlyjs)
    os.replace(tmp, html)
    written.append(html)
    reason = png_unavailable_reason()
    if reason is not None:
        print(f"PNG skipped for {html.name}: {reason}.")
        return written
    png, tmp = path.parent / f"{path.name}.png", path.parent / f".{path.name}.tmp.png"
    try:
        fig.write_image(tmp, width=fig.layout.width or 1000, height=fig.layout.height or 650)
    except Exception as err:  # a broken browser install must not lose the HTML already written
        tmp.unlink(missing_ok=True)
        print(f"PNG skipped for {html.name}: kaleido failed ({type(err).__name__}: {err}).")
        return written
    os.replace(tmp, png)
    written.append(png)
    return written


#: Figure name -> (builder, the ``analysis`` values it draws).
FIGURES: dict[str, tuple[Callable[[Rows], go.Figure], tuple[str, ...]]] = {
    "pca_scatter": (pca_scatter, ("pca",)),
    "gap_metrics": (gap_metrics, ("gap", "gap_closed")),
    "probe_accuracy": (probe_accuracy, ("probe",)),
    "direction_cosine": (direction_cosine, ("direction",)),
    "projection_distributions": (projection_distributions, ("projection",)),
    "distortion": (distortion_lines, ("distortion_summary",)),
}


def draw(results: str | Path, out_dir: str | Path | None = None) -> list[Path]:
    """Draw every figure of :data:`FIGURES` whose rows are in the results file; returns written paths."""
    rows = load_rows(results)
    out = Path(out_dir) if out_dir is not None else Path(results).parent
    present = {r.get("analysis") for r in rows}
    written: list[Path] = []
    for name, (builder, needs) in FIGURES.items():
        if present.intersection(needs):
            written += save_figure(builder(rows), out / name)
    return written


def figure_main(name: str, argv: Sequence[str] | None = None) -> list[Path]:
    """The command line of one ``figures/`` script: ``python figures/NAME.py RESULTS.json [--out PATH]``."""
    if name not in FIGURES:
        raise ValueError(f"Unknown figure {name!r}; choose from {sorted(FIGURES)}.")
    parser = argparse.ArgumentParser(prog=f"figures/{name}.py", description=FIGURES[name][0].__doc__)
    parser.add_argument("results", type=Path, help="a results JSON file (list of tidy rows)")
    parser.add_argument(
        "--out", type=Path, help=f"output path without extension (default RESULTS_DIR/{name})"
    )
    args = parser.parse_args(argv)
    fig = FIGURES[name][0](load_rows(args.results))
    written = save_figure(fig, args.out or args.results.parent / name)
    for p in written:
        print(p)
    return written
