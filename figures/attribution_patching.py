"""Attribution patching against exact patching on the organism: results file, figure and README block.

On held-out harmful requests of the shipped organism, clean = TEXT_ONLY (it refuses) and corrupt =
IMAGE (it complies). The metric is the refusal score of :class:`vlminterp.sweeps.RefusalScore`
(logit of ``sorry`` minus logit of ``sure`` at the last prompt position). For every layer x position
group (``resid_pre``) and layer x group x head (``attn.hook_z``), the exact effect of patching the
text-only activation into the image run (:mod:`vlminterp.analysis.patching`) is compared with the
attribution-patching estimate (:mod:`vlminterp.analysis.attribution`) by Spearman's rank correlation
over the cells defined for this pairing (the image group is not: TEXT_ONLY has no image tokens).

Usage::

    python -m figures.attribution_patching [--out results/attribution_patching]  # run, write, draw
    python -m figures.attribution_patching --readme README.md [--check]  # README block from the files

The run writes, with :func:`vlminterp.results.write_results`, ``grids.json`` / ``.csv`` (one tidy row
per cell and method), ``summary.json`` / ``.csv`` (per hook: Spearman ρ over ``n`` cells, the largest
exact and estimated effects, the text-only − image refusal-score gap) and ``manifest.json``, then
``attribution_patching.html`` (``.png`` with the ``export`` extra), the figure drawn from those files.
``--readme`` rewrites the ``attribution-patching`` block of README from ``summary.json``; with
``--check`` it only compares (exit 1 naming the rows that differ).

Example:
    >>> where = {"hook": "resid_pre", "axes": "layer × group"}
    >>> summary = [row(m, v, n=12, **where) for m, v in zip(SUMMARY_METRICS, (0.97, 16.5, 7.7, 18.3))]
    >>> readme_table(summary).splitlines()[-1]
    '| resid_pre | layer × group | 12 | 0.97 | 16.50 | 7.70 | 18.30 |'
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from figures.readme_tables import differences, rewrite
from vlminterp import Condition, HookedVLM, PromptBatch, viz
from vlminterp.analysis import attribution, patching
from vlminterp.io import write_text_atomic
from vlminterp.organism.tasks import organism_samples
from vlminterp.results import read_results, row, write_results
from vlminterp.sweeps import Observation, RefusalScore

BLOCK = "attribution-patching"
#: Summary metrics, in README column order.
SUMMARY_METRICS = ("spearman", "max_abs_exact", "max_abs_estimate", "refusal_score_gap")
#: Hook kind -> the axes of its grid.
GRIDS = {"resid_pre": "layer × group", "z": "layer × group × head"}
DEFAULT_OUT = Path("results/attribution_patching")


def refusal_metric(model: HookedVLM) -> patching.Metric:
    """The refusal score per row at the last position, as a ``metric(logits) -> [batch]``."""
    score = RefusalScore(label=None)
    score.bind(model)
    return lambda logits: score.values(Observation(logits[:, -1], {}), None, list(range(len(logits))))


def run(out: Path = DEFAULT_OUT, every: int = 4) -> list[dict[str, Any]]:
    """Compute both grids on the organism, write the results files and the figure; returns the summary rows.

    Args:
        out: Output folder.
        every: Use every ``every``-th held-out harmful sample (4: 16 samples, one image per request).
    """
    model = HookedVLM.from_organism()
    samples = organism_samples("test", "harmful")[::every]
    clean = PromptBatch.paired(model, samples, [Condition.TEXT_ONLY])
    corrupt = PromptBatch.paired(model, samples, [Condition.IMAGE])
    metric = refusal_metric(model)
    exact = {
        "resid_pre": patching.resid_grid(model, clean, corrupt, metric, hook="resid_pre"),
        "z": patching.head_grid(model, clean, corrupt, metric),
    }
    estimate = attribution.attribution_grids(model, clean, corrupt, metric, hooks=tuple(GRIDS))
    context = {"model": "organism", "dataset": "organism:test:harmful", "analysis": "attribution_patching"}
    rows = [
        r
        for kind in GRIDS
        for grid in (exact[kind], estimate[kind])
        for r in grid.to_rows(**context, metric="refusal_score_change")
    ]
    summary = []
    for kind, axes in GRIDS.items():
        compared = attribution.compare(exact[kind], estimate[kind])
        cells = compared["cells"]
        where = {
            **context,
            "hook": kind,
            "axes": axes,
            "clean": compared["clean"],
            "corrupt": compared["corrupt"],
        }
        gap = float((exact[kind].clean_metric - exact[kind].corrupt_metric).mean())
        summary += [
            row("spearman", compared["spearman"], n=cells, **where),
            row("max_abs_exact", compared["max_abs_exact"], n=cells, **where),
            row("max_abs_estimate", compared["max_abs_estimate"], n=cells, **where),
            row("refusal_score_gap", gap, n=len(samples), **where),
        ]
    config = {"model": "organism", "samples": "organism:test:harmful", "every": every, "hooks": list(GRIDS)}
    write_results(out, rows, config, name="grids")
    write_results(out, summary, config, name="summary")
    viz.save_figure(
        figure(read_results(out, "grids"), read_results(out, "summary")), out / "attribution_patching"
    )
    return summary


def by_hook(summary: Sequence[dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """Summary rows as hook -> metric -> row (hooks in file order)."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for r in summary:
        out.setdefault(r["hook"], {})[r["metric"]] = r
    return out


def figure(rows: Sequence[dict[str, Any]], summary: Sequence[dict[str, Any]]) -> go.Figure:
    """Exact and estimated ``resid_pre`` grids; every cell's estimate against its exact value."""
    rho = {hook: m["spearman"]["value"] for hook, m in by_hook(summary).items()}
    fig = make_subplots(
        rows=1,
        cols=3,
        subplot_titles=(
            "exact patching (resid_pre)",
            "attribution estimate (resid_pre)",
            f"estimate vs exact (ρ resid {rho['resid_pre']:.2f}, heads {rho['z']:.2f})",
        ),
        horizontal_spacing=0.13,
    )
    resid = viz.select(rows, hook="resid_pre")
    groups = list(dict.fromkeys(r["group"] for r in resid))
    layers = sorted({r["layer"] for r in resid})
    scale = max(abs(r["value"]) for r in resid if r["value"] is not None)
    for col, method in ((1, "exact"), (2, "attribution")):
        cells = {(r["layer"], r["group"]): r["value"] for r in viz.select(resid, method=method)}
        fig.add_trace(
            go.Heatmap(
                z=[[cells[layer, g] for g in groups] for layer in layers],
                x=groups,
                y=[str(layer) for layer in layers],
                colorscale="RdBu_r",
                zmid=0,
                zmin=-scale,
                zmax=scale,
                showscale=col == 2,
                colorbar={"title": "Δ score", "x": 0.632, "xanchor": "left", "len": 0.9},
                hovertemplate="layer %{y}<br>%{x}<br>Δ %{z:.3g}<extra></extra>",
            ),
            row=1,
            col=col,
        )
        fig.update_xaxes(title_text="position group", row=1, col=col)
        fig.update_yaxes(title_text="layer", row=1, col=col)
    for i, hook in enumerate(GRIDS):
        pairs = _paired_cells(viz.select(rows, hook=hook))
        fig.add_trace(
            go.Scatter(
                x=[a for a, _ in pairs],
                y=[b for _, b in pairs],
                mode="markers",
                name=f"{hook} ({GRIDS[hook]})",
                marker={"color": ("#1f77b4", "#d62728")[i], "size": 7 if hook == "resid_pre" else 5},
            ),
            row=1,
            col=3,
        )
    top = max(abs(v) for pair in _paired_cells(rows) for v in pair)
    fig.add_trace(
        go.Scatter(
            x=[0, top],
            y=[0, top],
            mode="lines",
            name="estimate = exact",
            line={"dash": "dot", "color": "#999"},
        ),
        row=1,
        col=3,
    )
    fig.update_xaxes(title_text="exact Δ refusal score", row=1, col=3)
    fig.update_yaxes(title_text="attribution estimate", row=1, col=3)
    fig.update_layout(
        width=1400, height=480, legend={"x": 0.765, "y": 0.98, "bgcolor": "rgba(255,255,255,0.8)"}
    )
    n = by_hook(summary)["resid_pre"]["refusal_score_gap"]["n"]
    title = f"Where the image pushes the organism off its refusal: TEXT_ONLY → IMAGE, {n} harmful requests"
    fig.update_layout(
        title=f"{title}<br><sup>organism · held-out harmful requests</sup>", template="plotly_white"
    )
    return fig


def _paired_cells(rows: Sequence[dict[str, Any]]) -> list[tuple[float, float]]:
    """(exact, estimate) per cell defined in both."""
    key = ("layer", "group", "head")
    exact = {tuple(r.get(k) for k in key): r["value"] for r in rows if r["method"] == "exact"}
    estimate = {tuple(r.get(k) for k in key): r["value"] for r in rows if r["method"] == "attribution"}
    return [(v, estimate[c]) for c, v in exact.items() if v is not None and estimate.get(c) is not None]


def readme_table(summary: Sequence[dict[str, Any]]) -> str:
    """The README block: one line per hook, from the tidy rows of ``summary.json``."""
    lines = [
        "| hook | grid | cells | Spearman ρ | max abs exact | max abs estimate | text − image score gap |",
        "|---|---|---|---|---|---|---|",
    ]
    for hook, m in by_hook(summary).items():
        values = " | ".join(f"{m[k]['value']:.2f}" for k in SUMMARY_METRICS)
        lines.append(f"| {hook} | {m['spearman']['axes']} | {m['spearman']['n']} | {values} |")
    return "\n".join(lines)


def check(readme: Path, out: Path) -> list[str]:
    """Rows where README's block disagrees with ``out/summary.json`` (empty when they agree)."""
    table = readme_table(_summary(out))
    return differences(Path(readme).read_text(encoding="utf-8"), {BLOCK: table})


def _summary(out: Path) -> list[dict[str, Any]]:
    path = Path(out) / "summary.json"
    if not path.is_file():
        raise FileNotFoundError(f"No {path}: run `python -m figures.attribution_patching --out {out}` first.")
    return read_results(out, "summary")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m figures.attribution_patching", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results folder")
    parser.add_argument(
        "--readme", type=Path, help="write (or --check) README's block from the results folder"
    )
    parser.add_argument(
        "--check", action="store_true", help="with --readme: only compare, exit 1 on differences"
    )
    args = parser.parse_args(argv)
    if args.readme is None:
        torch.set_num_threads(1)  # the organism's matmuls are tiny: one thread is fastest
        for hook, m in by_hook(run(args.out)).items():
            print(f"{hook}: Spearman ρ = {m['spearman']['value']:.3f} over {m['spearman']['n']} cells")
        return 0
    if args.check:
        messages = check(args.readme, args.out)
        for m in messages:
            print(m, file=sys.stderr)
        return 1 if messages else 0
    text = args.readme.read_text(encoding="utf-8")
    updated = rewrite(text, {BLOCK: readme_table(_summary(args.out))})
    if updated != text:
        write_text_atomic(args.readme, updated)
    print(
        f"{args.readme}: {BLOCK} {'rewritten' if updated != text else 'already up to date'} from {args.out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
