"""The representation gap between two conditions, per layer (CMRM's modality gap as numbers).

Shape glossary: ``n``/``m`` rows of the two conditions, ``d_model`` width.

Metrics of two clouds ``a`` and ``b`` (one layer each):

- ``centroid_distance``: ``‖mean(a) − mean(b)‖``.
- ``normalized_centroid_distance``: that distance over the pooled within-condition spread
  ``sqrt((Σ‖a_i − ā‖² + Σ‖b_j − b̄‖²) / (n + m))`` (the RMS distance of a row to its own centroid).
- ``centroid_cosine``: cosine of the two centroids.
- ``modality_probe_accuracy``: cross-validated accuracy of a linear probe telling ``a`` from ``b``.
- ``silhouette``: mean silhouette score of the two-cluster labelling (Euclidean).
- ``gap_closed``: for a candidate shift ``v`` added to the image rows,
  ``1 − ‖mean(image + v) − mean(text)‖ / ‖mean(image) − mean(text)‖``: 1 when ``v`` is the exact
  centroid offset, 0 for ``v = 0``, negative when ``v`` moves the image states further away.

Example:
    >>> import numpy as np
    >>> from vlminterp.analysis.gap import gap_closed
    >>> image, text = np.zeros((4, 3)), np.ones((4, 3))
    >>> gap_closed(image, text, np.ones(3)), gap_closed(image, text, 0.5 * np.ones(3))
    (1.0, 0.5)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from jaxtyping import Float
from sklearn.metrics import silhouette_score

from vlminterp.analysis.activations import ConditionActivations, check_matrix, condition_key
from vlminterp.analysis.probes import cross_val_predict

__all__ = [
    "centroid_distance",
    "within_spread",
    "centroid_cosine",
    "modality_probe_accuracy",
    "silhouette",
    "gap_closed",
    "gap_rows",
    "gap_closed_rows",
]

#: The first condition's rows.
Cloud = Float[np.ndarray, "n d_model"]
#: The second condition's rows (a count of its own, the same width).
OtherCloud = Float[np.ndarray, "m d_model"]


def _pair(a: Any, b: Any) -> tuple[np.ndarray, np.ndarray]:
    a, b = check_matrix(a, "First condition's activations"), check_matrix(b, "Second condition's activations")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"The two conditions have different d_model ({a.shape[1]} vs {b.shape[1]}).")
    return a, b


def centroid_distance(a: Cloud, b: OtherCloud) -> float:
    """Euclidean distance between the centroids of ``a`` and ``b``."""
    a, b = _pair(a, b)
    return float(np.linalg.norm(a.mean(0) - b.mean(0)))


def within_spread(a: Cloud, b: OtherCloud) -> float:
    """Pooled RMS distance of each row to its own condition's centroid."""
    a, b = _pair(a, b)
    ss = ((a - a.mean(0)) ** 2).sum() + ((b - b.mean(0)) ** 2).sum()
    return float(np.sqrt(ss / (len(a) + len(b))))


def centroid_cosine(a: Cloud, b: OtherCloud) -> float:
    """Cosine similarity of the two centroids.

    Raises:
        ValueError: a centroid is the zero vector.
    """
    a, b = _pair(a, b)
    ca, cb = a.mean(0), b.mean(0)
    norm = np.linalg.norm(ca) * np.linalg.norm(cb)
    if norm == 0:
        raise ValueError("A centroid is the zero vector, so its cosine is undefined.")
    return float(ca @ cb / norm)


def modality_probe_accuracy(a: Cloud, b: OtherCloud, *, n_splits: int = 5, seed: int = 0) -> float:
    """Cross-validated accuracy of a standardised logistic probe separating ``a`` rows from ``b`` rows."""
    a, b = _pair(a, b)
    X = np.concatenate([a, b])
    y = np.asarray(["a"] * len(a) + ["b"] * len(b))
    return float((cross_val_predict(X, X, y, n_splits=n_splits, seed=seed) == y).mean())


def silhouette(a: Cloud, b: OtherCloud) -> float:
    """Mean silhouette coefficient of the labelling {a, b} (in [-1, 1]; ~0 for overlapping clouds)."""
    a, b = _pair(a, b)
    if len(a) + len(b) < 3:
        raise ValueError("silhouette needs at least 3 rows in total.")
    return float(silhouette_score(np.concatenate([a, b]), [0] * len(a) + [1] * len(b)))


def gap_closed(
    image: Cloud, text: OtherCloud, shift: Float[np.ndarray, " d_model"] | Float[np.ndarray, "n d_model"]
) -> float:
    """Fraction of the image→text centroid gap closed by adding ``shift`` to the image rows.

    Args:
        image: Image-condition rows ``[n, d_model]``.
        text: Text-only rows ``[m, d_model]``.
        shift: One vector ``[d_model]`` (dataset-level) or one per image row ``[n, d_model]``.

    Raises:
        ValueError: the centroids coincide (no gap), or ``shift`` has the wrong shape.
    """
    image, text = _pair(image, text)
    shift = check_matrix(shift, "shift", ndim=(1, 2))
    if shift.shape not in (image.shape[1:], image.shape):
        raise ValueError(
            f"shift must be [d_model] or [n, d_model] = {list(image.shape)}, got {list(shift.shape)}."
        )
    before = np.linalg.norm(image.mean(0) - text.mean(0))
    if before == 0:
        raise ValueError("The image and text centroids coincide: there is no gap to close.")
    after = np.linalg.norm((image + shift).mean(0) - text.mean(0))
    return float(1.0 - after / before)


def gap_rows(
    acts: ConditionActivations,
    pairs: Sequence[tuple[str, str]],
    *,
    n_splits: int = 5,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Gap metrics per (condition pair, layer) as tidy rows (``analysis: "gap"``).

    Args:
        acts: Per-condition activations.
        pairs: ``[(condition, condition_b), ...]``, e.g. ``[("image", "text_only")]``.
        n_splits: Folds of the modality probe.
        seed: Fold shuffling seed.
    """
    rows = []
    for ca, cb in pairs:
        ka, kb = condition_key(ca), condition_key(cb)
        for layer in acts.layers:
            a, b = acts.get(ka, layer), acts.get(kb, layer)
            dist, spread = centroid_distance(a, b), within_spread(a, b)
            metrics = {
                "centroid_distance": dist,
                "normalized_centroid_distance": dist / spread if spread > 0 else None,  # identical rows
                "centroid_cosine": centroid_cosine(a, b),
                "modality_probe_accuracy": modality_probe_accuracy(a, b, n_splits=n_splits, seed=seed),
                "silhouette": silhouette(a, b),
            }
            rows += [
                acts.row(analysis="gap", condition=ka, condition_b=kb, layer=layer, metric=m, value=v)
                for m, v in metrics.items()
            ]
    return rows


def gap_closed_rows(
    acts: ConditionActivations,
    shifts: Mapping[str, Float[np.ndarray, "layers d_model"]],
    *,
    source: str = "image",
    target: str = "text_only",
) -> list[dict[str, Any]]:
    """``gap_closed`` of each candidate shift, per layer (``analysis: "gap_closed"``).

    Args:
        acts: Per-condition activations.
        shifts: Name -> ``[layers, d_model]`` candidate vector per layer (e.g. CMRM's
            ``mean(text_only) − mean(blank)``).
        source: The condition the shift is added to.
        target: The condition it should reach.
    """
    ks, kt = condition_key(source), condition_key(target)
    rows = []
    for name, vec in shifts.items():
        vec = check_matrix(vec, f"shift {name!r}", ndim=(2,))
        if vec.shape[0] != len(acts.layers):
            raise ValueError(
                f"shift {name!r} has {vec.shape[0]} layers; the activations have {len(acts.layers)}."
            )
        for li, layer in enumerate(acts.layers):
            value = gap_closed(acts.get(ks, layer), acts.get(kt, layer), vec[li])
            rows.append(
                acts.row(
                    analysis="gap_closed",
                    condition=ks,
                    condition_b=kt,
                    shift=name,
                    layer=layer,
                    metric="gap_closed",
                    value=value,
                )
            )
    return rows
