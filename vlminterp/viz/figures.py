"""Every figure by name, and drawing them from a results file (``vlminterp`` commands, ``figures/`` scripts).

Example:
    >>> sorted(FIGURES)[:2]
    ['direction_cosine', 'distortion']
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from pathlib import Path

import plotly.graph_objects as go

from vlminterp.viz.directions import direction_cosine, distortion_lines, projection_distributions
from vlminterp.viz.export import save_figure
from vlminterp.viz.probes import probe_accuracy
from vlminterp.viz.representation import gap_metrics, pca_scatter
from vlminterp.viz.rows import Rows, load_rows

__all__ = ["FIGURES", "draw", "figure_main"]

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
