"""Plotly figures drawn from tidy result rows (``list[dict]`` as written by the analyses).

Every builder takes rows (load them with :func:`load_rows`), selects the ones it draws by their
``analysis`` key and returns a ``plotly.graph_objects.Figure``; :func:`save_figure` writes HTML
always and PNG when kaleido and a Chrome-family browser are available. :data:`FIGURES` names every
figure for the ``figures/`` scripts and :func:`draw`. One module per figure family:

- :mod:`~vlminterp.viz.representation`: :func:`pca_scatter` (``analysis="pca"``) and
  :func:`gap_metrics` (``"gap"``, ``"gap_closed"``).
- :mod:`~vlminterp.viz.probes`: :func:`probe_accuracy` (``analysis="probe"``, with ``ci_low``/``ci_high``).
- :mod:`~vlminterp.viz.directions`: :func:`direction_cosine` (``analysis="direction"``),
  :func:`projection_distributions` (``"projection"``), :func:`distortion_lines` (``"distortion_summary"``).
- :mod:`~vlminterp.viz.heatmap`: :func:`heatmap`, any rows pivoted on two keys (ablations: layer x
  head, layer x alpha, ...).
- :mod:`~vlminterp.viz.rows` (reading and selecting rows), :mod:`~vlminterp.viz.style` (colours,
  axes, titles), :mod:`~vlminterp.viz.export` (writing files), :mod:`~vlminterp.viz.figures` (the registry).

Example:
    >>> from vlminterp import viz
    >>> rows = [{"layer": l, "head": h, "value": l * h} for l in range(2) for h in range(3)]
    >>> fig = viz.heatmap(rows, x="head", y="layer")
    >>> [list(row) for row in fig.data[0].z]
    [[0, 0, 0], [0, 1, 2]]
"""

from vlminterp.viz.directions import direction_cosine, distortion_lines, projection_distributions
from vlminterp.viz.export import png_unavailable_reason, save_figure
from vlminterp.viz.figures import FIGURES, draw, figure_main
from vlminterp.viz.heatmap import heatmap
from vlminterp.viz.probes import probe_accuracy
from vlminterp.viz.representation import gap_metrics, pca_scatter
from vlminterp.viz.rows import load_rows, select
from vlminterp.viz.style import CONDITION_COLORS, LABEL_COLORS, LABEL_SYMBOLS, PALETTE

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
    "CONDITION_COLORS",
    "LABEL_COLORS",
    "LABEL_SYMBOLS",
    "PALETTE",
]
