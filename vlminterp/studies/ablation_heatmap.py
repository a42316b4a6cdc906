"""Heatmaps of the ablation studies, drawn from their ``results.json`` (tidy rows).

- ``layer_ablation``: refusal score and utility KL, rows = method · scope, columns = start layer.
- ``head_ablation``: change in refusal score, layer × head, one figure per mode (zero / mean).
- ``head_patching``: fraction of the IMAGE→TEXT_ONLY refusal gap recovered by patching TEXT_ONLY
  activations into the IMAGE run, layer × (residual stream, head 0, head 1, ...).
- ``alpha_layer_grid``: refusal score and utility KL, rows = start layer, columns = α.

Usage: ``python -m vlminterp.studies.ablation_heatmap results/head_ablation/results.json [--out DIR]``
(HTML always; PNG when kaleido and a Chrome-family browser are installed).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vlminterp import viz

Rows = list[dict[str, Any]]
_DIVERGING = {"zmid": 0.0, "colorscale": "RdBu_r"}
_SEQUENTIAL = {"colorscale": "Viridis"}


def _figures(rows: Rows) -> dict[str, Any]:
    """Figure name -> plotly figure, for every study whose rows are present."""
    figs: dict[str, Any] = {}
    for metric in ("refusal_score", "kl_to_unsteered"):
        chosen = viz.select(rows, analysis="layer_ablation", metric=metric)
        if chosen:
            cells = [{**r, "steered": f"{r['method']} · {r['scope']}"} for r in chosen]
            style = _DIVERGING if metric == "refusal_score" else _SEQUENTIAL
            figs[f"layer_ablation_{metric}"] = viz.heatmap(
                cells, x="layer", y="steered", title=f"{metric} by start layer and scope", **style
            )
        chosen = viz.select(rows, analysis="alpha_layer_grid", metric=metric)
        if chosen:
            style = _DIVERGING if metric == "refusal_score" else _SEQUENTIAL
            figs[f"alpha_layer_grid_{metric}"] = viz.heatmap(
                chosen,
                x="alpha",
                y="layer",
                title=f"CMRM {metric}: α × start layer (to the last layer)",
                **style,
            )
    for mode in sorted({r["mode"] for r in viz.select(rows, analysis="head_ablation")}):
        chosen = viz.select(rows, analysis="head_ablation", mode=mode, metric="refusal_score_change")
        figs[f"head_ablation_{mode}"] = viz.heatmap(
            chosen, x="head", y="layer", title=f"Change in refusal score, {mode}-ablating one head (IMAGE inputs)",
            **_DIVERGING,
        )  # fmt: skip
    chosen = viz.select(rows, analysis="head_patching", metric="refusal_gap_recovered")
    if chosen:
        cells = [{**r, "target": "resid" if r["head"] is None else f"head {r['head']}"} for r in chosen]
        figs["head_patching"] = viz.heatmap(
            cells, x="target", y="layer", title="Refusal gap recovered by patching TEXT_ONLY into IMAGE (last token)",
            **_DIVERGING,
        )  # fmt: skip
    return figs


def draw(results: str | Path, out_dir: str | Path | None = None) -> list[Path]:
    """Draw every ablation figure whose rows are in ``results``; returns the files written."""
    rows = viz.load_rows(results)
    figs = _figures(rows)
    if not figs:
        found = sorted({str(r.get("analysis")) for r in rows})
        raise ValueError(f"{results} holds no ablation-study rows (analyses present: {found}).")
    out = Path(out_dir) if out_dir is not None else Path(results).parent
    written: list[Path] = []
    for name, fig in figs.items():
        written += viz.save_figure(fig, out / name)
    return written


def main(argv: Sequence[str] | None = None) -> list[Path]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", type=Path, help="results.json of an ablation study")
    parser.add_argument("--out", type=Path, default=None, help="output directory (default: next to RESULTS)")
    args = parser.parse_args(argv)
    written = draw(args.results, args.out)
    for path in written:
        print(path)
    return written


if __name__ == "__main__":
    main(sys.argv[1:])
