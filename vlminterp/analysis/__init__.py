"""Analyses of per-condition activations: PCA, representation gap, probes and directions.

Every function takes plain arrays or a :class:`ConditionActivations` and returns arrays, floats or
tidy rows (``list[dict]``: ``model, dataset, analysis, layer, metric, value, ...``, one measurement
per row) that :mod:`vlminterp.viz` draws.

Example:
    >>> import numpy as np
    >>> from vlminterp.analysis import diff_in_means
    >>> diff_in_means(np.ones((3, 4)), np.zeros((2, 4))).tolist()
    [1.0, 1.0, 1.0, 1.0]
"""

from vlminterp.analysis.activations import ConditionActivations
from vlminterp.analysis.directions import (
    cosine_matrix,
    diff_in_means,
    direction_rows,
    distortion,
    distortion_rows,
    first_pc_direction,
    projection_rows,
    safety_direction,
    scalar_projection,
)
from vlminterp.analysis.gap import gap_closed, gap_closed_rows, gap_rows
from vlminterp.analysis.pca import PCA, pca_rows
from vlminterp.analysis.probes import Probe, probe_rows, transfer_accuracy

__all__ = [
    "ConditionActivations",
    "PCA",
    "Probe",
    "pca_rows",
    "gap_rows",
    "gap_closed",
    "gap_closed_rows",
    "probe_rows",
    "transfer_accuracy",
    "diff_in_means",
    "first_pc_direction",
    "cosine_matrix",
    "scalar_projection",
    "distortion",
    "safety_direction",
    "direction_rows",
    "projection_rows",
    "distortion_rows",
]
