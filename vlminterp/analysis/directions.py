"""Directions per layer: diff-in-means, first-PC variant, cosines across layers, projections, and
ShiftDC's safety perception distortion.

The maths lives in :mod:`vlminterp.directions` (torch, shared with CMRM and ShiftDC); the functions
here are its numpy adapters for the analyses: they validate rows (:func:`check_matrix`: rank, NaN,
no rows), compute in float64 through that module and return numpy arrays.

Shape glossary: ``n`` rows, ``layers`` layers, ``d_model`` width. Functions that take ``[..., d_model]``
broadcast a ``[d_model]`` direction over any leading axes and a ``[layers, d_model]`` direction over
``[n, layers, d_model]`` rows.

- ``diff_in_means(a, b) = mean(a) − mean(b)`` (float64).
- ShiftDC's safety direction ``s = mean(text-only safe) − mean(text-only unsafe)``
  (:func:`safety_direction`).
- The modality shift of one sample ``m = x(image input) − x(text twin)`` and its distortion:
  ``cos(m, s)`` and the scalar projection ``m·s/‖s‖`` (:func:`distortion`). Positive means the
  image moved the state toward ``mean(safe)``: ShiftDC's finding is that it does, so unsafe inputs
  look safer with an image.

Example:
    >>> import numpy as np
    >>> from vlminterp.analysis.directions import diff_in_means, scalar_projection
    >>> a, b = np.ones((5, 2, 3)), np.zeros((4, 2, 3))
    >>> diff_in_means(a, b).shape
    (2, 3)
    >>> float(scalar_projection(np.array([3.0, 4.0]), np.array([0.0, 2.0])))
    4.0
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from jaxtyping import Float

from vlminterp import directions as _maths
from vlminterp.analysis.activations import ConditionActivations, check_matrix, condition_key

__all__ = [
    "diff_in_means",
    "first_pc_direction",
    "normalize",
    "cosine_matrix",
    "scalar_projection",
    "cosine",
    "distortion",
    "safety_direction",
    "direction_rows",
    "projection_rows",
    "distortion_rows",
]

Direction = Float[np.ndarray, " d_model"] | Float[np.ndarray, "layers d_model"]


def _t(x: np.ndarray) -> torch.Tensor:
    """A float64 array as a tensor sharing its memory."""
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64))


def diff_in_means(
    a: Float[np.ndarray, "n *layers d_model"], b: Float[np.ndarray, "m *layers d_model"]
) -> Direction:
    """``mean(a) − mean(b)`` over rows: ``[n, d]`` -> ``[d]``, ``[n, layers, d]`` -> ``[layers, d]``.

    Raises:
        ValueError: ranks or trailing shapes differ, empty input, or NaN.
    """
    a = check_matrix(a, "diff_in_means a", ndim=(2, 3))
    b = check_matrix(b, "diff_in_means b", ndim=(2, 3))
    return _maths.diff_in_means(_t(a), _t(b)).numpy()


def first_pc_direction(
    diffs: Float[np.ndarray, "n *layers d_model"], *, center: bool = False, scale: bool = True
) -> Direction:
    """The first principal component of per-sample differences, per layer (:func:`vlminterp.directions.pc1`).

    Two conventions, chosen by name:

    - ``center=True, scale=False``: exactly the unit vector ``CMRM.fit(estimator="pc1")`` steers with
      (centred, sklearn PCA's convention, signed along ``mean(diffs)``). Use this wherever the
      direction stands for CMRM's pc1 estimator (the representation-gap study's ``cmrm_first_pc``).
    - ``center=False, scale=True`` (the default, kept for existing callers): the dominant axis of the
      *uncentred* differences (so a shared offset is the component), scaled to the mean's component
      along it, ``(mean·u)u``, so it is comparable in size with :func:`diff_in_means`.

    Args:
        diffs: ``[n, d_model]`` or ``[n, layers, d_model]`` differences (e.g. ``text − blank``).
        center: Subtract ``mean(diffs)`` before the SVD.
        scale: Return ``(mean·u)u`` instead of the unit vector ``u`` (which is signed along the mean).

    Example:
        >>> import numpy as np
        >>> d = np.array([[-1.0, 5.0], [1.0, 5.0]])
        >>> first_pc_direction(d).tolist(), first_pc_direction(d, center=True, scale=False).tolist()
        ([0.0, 5.0], [1.0, 0.0])
    """
    diffs = _t(check_matrix(diffs, "first_pc_direction diffs", ndim=(2, 3)))
    u = _maths.pc1(diffs, center=center)
    if scale:
        u = _maths.decompose(diffs.mean(0), u)[0]
    return u.numpy()


def normalize(v: Float[np.ndarray, "*layers d_model"]) -> Float[np.ndarray, "*layers d_model"]:
    """``v`` scaled to unit norm along the last axis.

    Raises:
        ValueError: a zero vector (a direction of two identical means).
    """
    return _maths.unit(_t(check_matrix(v, "direction", ndim=(1, 2)))).numpy()


def cosine_matrix(
    a: Float[np.ndarray, "layers d_model"], b: Float[np.ndarray, "layers_b d_model"] | None = None
) -> Float[np.ndarray, "layers layers_b"]:
    """Cosine similarity between every layer's direction in ``a`` and in ``b`` (default ``a``)."""
    na = normalize(a)
    nb = na if b is None else normalize(b)
    if na.ndim != 2 or nb.ndim != 2 or na.shape[1] != nb.shape[1]:
        raise ValueError(
            f"cosine_matrix needs [layers, d_model] arrays with one d_model, got {a.shape}, {nb.shape}."
        )
    return na @ nb.T


def _check_broadcast(x: np.ndarray, direction: np.ndarray) -> None:
    if x.shape[-direction.ndim :] != direction.shape:
        raise ValueError(
            f"Cannot project rows of shape {list(x.shape)} on a direction of shape {list(direction.shape)}: "
            "the trailing axes must match ([..., d_model] with [d_model], or [n, layers, d_model] with "
            "[layers, d_model])."
        )


def scalar_projection(x: Float[np.ndarray, "... d_model"], direction: Direction) -> Float[np.ndarray, "..."]:
    """``x · s / ‖s‖`` along the last axis (per layer when ``direction`` is ``[layers, d_model]``)."""
    x = np.asarray(x, dtype=np.float64)
    direction = check_matrix(direction, "direction", ndim=(1, 2))
    _check_broadcast(x, direction)
    return _maths.scalar_projection(_t(x), _t(direction)).numpy()


def cosine(x: Float[np.ndarray, "... d_model"], direction: Direction) -> Float[np.ndarray, "..."]:
    """``cos(x, s)`` along the last axis; rows that are exactly zero give 0."""
    x = np.asarray(x, dtype=np.float64)
    norms = np.linalg.norm(x, axis=-1)
    proj = scalar_projection(x, direction)
    return np.divide(proj, norms, out=np.zeros_like(proj), where=norms > 0)


def distortion(
    image: Float[np.ndarray, "n *layers d_model"],
    twin: Float[np.ndarray, "n *layers d_model"],
    safety: Direction,
) -> tuple[Float[np.ndarray, " n *layers"], Float[np.ndarray, " n *layers"]]:
    """ShiftDC's safety perception distortion of each sample: ``(cos(m, s), m·s/‖s‖)``, ``m = image − twin``.

    Args:
        image: States of the image inputs.
        twin: States of their text twins (CAPTION or TEXT_ONLY), row ``i`` the same sample.
        safety: The safety direction ``s`` (``[d_model]``, or ``[layers, d_model]`` for 3-D rows).
    """
    image = check_matrix(image, "image activations", ndim=(2, 3))
    twin = check_matrix(twin, "twin activations", ndim=(2, 3))
    if image.shape != twin.shape:
        raise ValueError(
            f"image and twin rows must be paired (same shape), got {image.shape} and {twin.shape}."
        )
    shift = image - twin
    return cosine(shift, safety), scalar_projection(shift, safety)


def safety_direction(
    acts: ConditionActivations, condition: str = "text_only"
) -> Float[np.ndarray, "layers d_model"]:
    """ShiftDC's ``s = mean(benign) − mean(harmful)`` of one condition's rows, per layer.

    :func:`vlminterp.directions.safety_direction` on the rows (``SafetyDirection.fit`` computes the
    same from streamed means).
    """
    safe = check_matrix(acts.get(condition, label="benign"), "safety_direction benign", ndim=(2, 3))
    unsafe = check_matrix(acts.get(condition, label="harmful"), "safety_direction harmful", ndim=(2, 3))
    return _maths.safety_direction(_t(safe), _t(unsafe)).numpy()


def direction_rows(
    acts: ConditionActivations, directions: Mapping[str, Float[np.ndarray, "layers d_model"]]
) -> list[dict[str, Any]]:
    """Per direction: its norm per layer and the cosine between every two layers (``analysis: "direction"``)."""
    rows = []
    for name, vec in directions.items():
        vec = check_matrix(vec, f"direction {name!r}", ndim=(2,))
        if vec.shape[0] != len(acts.layers):
            raise ValueError(
                f"direction {name!r} has {vec.shape[0]} layers; the activations have {len(acts.layers)}."
            )
        cos = cosine_matrix(vec)
        for i, layer in enumerate(acts.layers):
            rows.append(
                acts.row(
                    analysis="direction",
                    direction=name,
                    layer=layer,
                    metric="norm",
                    value=float(np.linalg.norm(vec[i])),
                )
            )
            rows += [
                acts.row(
                    analysis="direction",
                    direction=name,
                    layer=layer,
                    layer_b=layer_b,
                    metric="cosine_across_layers",
                    value=float(cos[i, j]),
                )
                for j, layer_b in enumerate(acts.layers)
            ]
    return rows


def projection_rows(
    acts: ConditionActivations,
    name: str,
    direction: Float[np.ndarray, "layers d_model"],
    conditions: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """Scalar projection of every row on ``direction``, per layer (``analysis: "projection"``)."""
    rows = []
    for cond in [condition_key(c) for c in (conditions or acts.conditions)]:
        proj = scalar_projection(acts.get(cond), direction)
        for i, (sid, label) in enumerate(zip(acts.sample_ids[cond], acts.labels[cond], strict=True)):
            rows += [
                acts.row(
                    analysis="projection",
                    direction=name,
                    condition=cond,
                    layer=layer,
                    sample_id=sid,
                    label=label,
                    metric="scalar_projection",
                    value=float(proj[i, li]),
                )
                for li, layer in enumerate(acts.layers)
            ]
    return rows


def distortion_rows(
    acts: ConditionActivations,
    safety: Float[np.ndarray, "layers d_model"],
    *,
    image: str = "image",
    twin: str = "caption",
    variant_of: Mapping[str, str] | None = None,
) -> list[dict[str, Any]]:
    """ShiftDC distortion per sample and its mean/std per (variant, label, layer).

    Args:
        acts: Per-condition activations holding ``image`` and ``twin``.
        safety: ``[layers, d_model]`` safety direction (see :func:`safety_direction`).
        image: The image condition.
        twin: The text twin condition (``"caption"`` in ShiftDC; ``"text_only"`` also works).
        variant_of: Sample id -> dataset variant (e.g. MM-SafetyBench ``SD``/``TYPO``); default ``"all"``.

    Returns:
        ``analysis: "distortion"`` rows (per sample; metrics ``shift_cosine``, ``shift_projection``)
        and ``analysis: "distortion_summary"`` rows (``value`` = mean, with ``std`` and ``n``).
    """
    ki, kt = condition_key(image), condition_key(twin)
    ids, x_image, x_twin = acts.paired(ki, kt)
    cos, proj = distortion(x_image, x_twin, safety)
    label_of = dict(zip(acts.sample_ids[ki], acts.labels[ki], strict=True))
    variants = [(variant_of or {}).get(sid, "all") for sid in ids]
    base = {"analysis": "distortion", "condition": ki, "condition_b": kt, "direction": "safety"}
    rows, groups = [], {}
    for metric, values in (("shift_cosine", cos), ("shift_projection", proj)):
        for i, sid in enumerate(ids):
            for li, layer in enumerate(acts.layers):
                rows.append(
                    acts.row(
                        **base,
                        layer=layer,
                        sample_id=sid,
                        label=label_of[sid],
                        variant=variants[i],
                        metric=metric,
                        value=float(values[i, li]),
                    )
                )
                groups.setdefault((metric, variants[i], label_of[sid], layer), []).append(values[i, li])
    for (metric, variant, label, layer), values in groups.items():
        rows.append(
            acts.row(
                **{**base, "analysis": "distortion_summary"},
                layer=layer,
                variant=variant,
                label=label,
                metric=metric,
                value=float(np.mean(values)),
                std=float(np.std(values)),
                n=len(values),
            )
        )
    return rows
