"""Sweeps: run an intervention over a grid (layers, heads, alpha, ...) and measure it, as tidy rows.

:func:`sweep` evaluates ``make_intervention(**point)`` at every point of ``grid`` with one or more
:class:`Metric` objects and returns one row per (grid point, metric)::

    {"model", "dataset", "method", "layer", "head", "alpha", <other grid keys>, "metric", "value", "n"}

Any intervention works the same way: each point's intervention is prepared for the samples
(:meth:`Intervention.prepared`; per-input methods add their twin rows and read only their output
rows). The modules:

- :mod:`.engine`: :func:`sweep` itself. Up to ``max_rows`` rows go in one forward; the unsteered
  run is done once per sweep, and a point's forward starts at the first layer it hooks, from that
  run's activations (:mod:`vlminterp.models.partial`; exact, tested against the full forward).
- :mod:`.metrics`: :class:`RefusalScore`, :class:`JudgedRefusalRate`, :class:`KLToUnsteered`,
  :class:`GapClosed` (and the :class:`Metric` base for your own).
- :mod:`.grid`: :func:`grid_points` (every combination, the last key varying fastest).
- :mod:`.batching`: several grid points stacked into one forward, each block with its own hooks.
- :mod:`.rows_file`: resuming. With ``out_path`` (JSONL) finished points are skipped on a rerun
  (groups are fixed slices of the full grid, so a resumed run computes exactly the forwards the
  first would have and gives the same table); a rows file of another sweep raises
  :class:`SweepMismatchError`. Under ``torchrun`` every process measures its share of the groups
  and rank 0 merges their part files into the one rows file (:mod:`vlminterp.parallel`).

The ablation studies that use it are in :mod:`vlminterp.studies` (``vlminterp sweep --study ...``).

Example:
    >>> grid_points({"layer": [0, 1], "alpha": [0.5]})
    [{'layer': 0, 'alpha': 0.5}, {'layer': 1, 'alpha': 0.5}]
    >>> sorted(METRICS)
    ['gap_closed', 'kl_to_unsteered', 'refusal_score']
"""

from vlminterp.sweeps.engine import COLUMNS, sweep
from vlminterp.sweeps.grid import grid_points
from vlminterp.sweeps.metrics import (
    METRICS,
    GapClosed,
    JudgedRefusalRate,
    KLToUnsteered,
    Metric,
    Observation,
    RefusalScore,
    token_ids,
)
from vlminterp.sweeps.rows_file import SweepMismatchError

__all__ = [
    "sweep",
    "grid_points",
    "Metric",
    "RefusalScore",
    "JudgedRefusalRate",
    "KLToUnsteered",
    "GapClosed",
    "Observation",
    "SweepMismatchError",
    "METRICS",
    "COLUMNS",
    "token_ids",
]
