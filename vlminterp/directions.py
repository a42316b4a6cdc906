"""Directions and projections: the one home of the maths CMRM, ShiftDC and the analyses share.

A leaf module (torch and jaxtyping only): :mod:`vlminterp.interventions` (torch, in hooks and fits)
and :mod:`vlminterp.analysis` (numpy adapters that validate rows and convert) both import it, and
it imports neither. Shapes: ``n`` rows, optional ``layers``, ``d_model`` width; a ``[layers, d_model]``
direction broadcasts over ``[n, layers, d_model]`` rows, a ``[d_model]`` one over any leading axes
(``*#batch`` in the annotations: leading axes that broadcast, checked by jaxtyping in the tests).

- :func:`diff_in_means` ``= mean(a) − mean(b)`` over rows, in float64 (CMRM's mean shift
  ``mean(TEXT_ONLY) − mean(BLANK)``; the analyses' directions).
- :func:`safety_direction` ``s = mean(safe) − mean(unsafe)`` (ShiftDC; DESIGN "Method maths").
- :func:`pc1`: the first principal component, a unit vector signed to agree with the mean, with
  the centring convention an explicit argument:

  * ``center=True`` (the default, sklearn ``PCA``'s convention): the axis of largest variance
    *around* the mean. ``CMRM.fit(estimator="pc1")`` steers with this (the CMRM paper's "first
    principal component", tested against sklearn), and so does the representation-gap study's
    ``cmrm_first_pc`` when it calls ``first_pc_direction(..., center=True, scale=False)``.
  * ``center=False``: the dominant axis of the raw rows, so a shared offset *is* the component.
    :func:`vlminterp.analysis.first_pc_direction`'s default (``scale=True`` then rescales it to
    the mean's component along it, comparable with :func:`diff_in_means`).
- :func:`projection_coefficient` ``x·s/‖s‖²``, :func:`scalar_projection` ``x·s/‖s‖``,
  :func:`decompose` ``(x_s, x − x_s)`` with ``x_s = (x·s/‖s‖²)·s`` and :func:`remove_component`
  ``x − x_s`` (ShiftDC's correction ``x ← x − (m·s/‖s‖²)·s``; its distortion ``m·s/‖s‖``).

``diff_in_means``, ``safety_direction`` and ``pc1`` accumulate in float64 (whatever the input);
the projections keep the input dtype (ShiftDC calls them inside hooks, in the model's dtype).
``ActivationStore.diff_in_means`` is the streamed equivalent of :func:`diff_in_means` (from running
float64 means, without the rows).

Example:
    >>> import torch
    >>> from vlminterp.directions import decompose, diff_in_means, pc1, projection_coefficient
    >>> diff_in_means(torch.ones(5, 2, 3), torch.zeros(4, 2, 3)).shape
    torch.Size([2, 3])
    >>> x = torch.tensor([[-1.0, 5.0], [1.0, 5.0]])
    >>> pc1(x).tolist(), pc1(x, center=False).tolist()  # the spread vs the shared offset
    ([1.0, 0.0], [0.0, 1.0])
    >>> m, s = torch.tensor([3.0, 4.0]), torch.tensor([0.0, 2.0])
    >>> float(projection_coefficient(m, s)), [t.tolist() for t in decompose(m, s)]
    (2.0, [[0.0, 4.0], [3.0, 0.0]])
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor

__all__ = [
    "diff_in_means",
    "safety_direction",
    "pc1",
    "unit",
    "projection_coefficient",
    "scalar_projection",
    "decompose",
    "remove_component",
]


def diff_in_means(
    a: Float[Tensor, "n *layers d_model"], b: Float[Tensor, "m *layers d_model"]
) -> Float[Tensor, "*layers d_model"]:
    """``mean(a) − mean(b)`` over rows (axis 0), in float64.

    Args:
        a: Rows ``[n, d_model]`` or ``[n, layers, d_model]``.
        b: Rows with the same trailing shape as ``a``.

    Returns:
        ``[d_model]`` or ``[layers, d_model]``, float64.

    Raises:
        ValueError: the trailing shapes differ.

    Example:
        >>> import torch
        >>> diff_in_means(torch.tensor([[2.0, 1.0], [4.0, 1.0]]), torch.zeros(1, 2)).tolist()
        [3.0, 1.0]
    """
    if a.shape[1:] != b.shape[1:]:
        raise ValueError(
            f"diff_in_means needs a and b with the same [*layers, d_model], got {list(a.shape[1:])} and "
            f"{list(b.shape[1:])} (mismatched layer counts?)."
        )
    return a.double().mean(0) - b.double().mean(0)


def safety_direction(
    safe: Float[Tensor, "n *layers d_model"], unsafe: Float[Tensor, "m *layers d_model"]
) -> Float[Tensor, "*layers d_model"]:
    """ShiftDC's safety direction ``s = mean(safe) − mean(unsafe)``, in float64.

    It points from the unsafe toward the safe states (text-only inputs in ShiftDC). Where only the
    two means are at hand (streamed, as in ``SafetyDirection.fit``), pass them with a leading axis
    of one: ``safety_direction(mean_safe[None], mean_unsafe[None])`` is exactly their difference.

    Example:
        >>> import torch
        >>> safety_direction(torch.tensor([[1.0, 2.0]]), torch.tensor([[1.0, 0.0], [1.0, 2.0]])).tolist()
        [0.0, 1.0]
    """
    return diff_in_means(safe, unsafe)


def pc1(
    x: Float[Tensor, "n *layers d_model"],
    *,
    center: bool = True,
    align: Float[Tensor, "*layers d_model"] | None = None,
) -> Float[Tensor, "*layers d_model"]:
    """The first principal component of the rows of ``x`` (per layer): a float64 unit vector.

    The first right singular vector of ``x − mean(x)`` (``center=True``) or of ``x`` itself
    (``center=False``), from ``torch.linalg.svd``. A singular vector is defined up to sign; the
    sign is fixed so that ``pc1 · align >= 0`` (``align`` defaults to ``mean(x)``), so the
    component points along the mean shift.

    Args:
        x: Rows ``[n, d_model]`` or ``[n, layers, d_model]``.
        center: Subtract the mean first (the PCA convention; CMRM's ``estimator="pc1"``). With
            ``False`` a shared offset of the rows dominates the component (see the module docstring
            for who uses which).
        align: The vector the sign agrees with (``[*layers, d_model]``); default ``mean(x)``.

    Example:
        >>> import torch
        >>> x = torch.tensor([[-1.0, 5.0], [1.0, 5.0]])
        >>> pc1(x).tolist(), pc1(x, center=False).tolist()
        ([1.0, 0.0], [0.0, 1.0])
    """
    x = x.double()
    rows = x.movedim(0, -2)  # [*layers, n, d_model]
    if center:
        rows = rows - rows.mean(-2, keepdim=True)
    component = torch.linalg.svd(rows, full_matrices=False).Vh[..., 0, :]
    ref = (x.mean(0) if align is None else align).to(component)
    return torch.where((component * ref).sum(-1, keepdim=True) < 0, -component, component)


def unit(direction: Float[Tensor, "*layers d_model"]) -> Float[Tensor, "*layers d_model"]:
    """``direction`` scaled to unit norm along the last axis.

    Raises:
        ValueError: a zero vector (e.g. the direction of two identical means).

    Example:
        >>> import torch
        >>> unit(torch.tensor([0.0, 2.0])).tolist()
        [0.0, 1.0]
    """
    norms = torch.linalg.vector_norm(direction, dim=-1, keepdim=True)
    if bool((norms == 0).any()):
        raise ValueError("A direction is the zero vector (identical means?), so it cannot be normalised.")
    return direction / norms


def projection_coefficient(
    x: Float[Tensor, "*#batch d_model"], direction: Float[Tensor, "*#batch d_model"]
) -> Float[Tensor, " *#batch"]:
    """``x·s/‖s‖²`` along the last axis (broadcasting); ``0`` where ``s`` is the zero vector.

    The multiple of ``s`` that is ``x``'s component along it (ShiftDC's ``m·s/‖s‖²``). Never
    synchronises or raises, so it is safe inside hooks.

    Example:
        >>> import torch
        >>> projection_coefficient(torch.tensor([3.0, 4.0]), torch.tensor([0.0, 2.0])).item()
        2.0
    """
    norm2 = (direction * direction).sum(-1, keepdim=True)
    coef = (x * direction).sum(-1, keepdim=True) / norm2.clamp(min=torch.finfo(norm2.dtype).tiny)
    return torch.where(norm2 > 0, coef, torch.zeros_like(coef)).squeeze(-1)


def scalar_projection(
    x: Float[Tensor, "*#batch d_model"], direction: Float[Tensor, "*#batch d_model"]
) -> Float[Tensor, " *#batch"]:
    """``x·s/‖s‖`` along the last axis (broadcasting): the signed length of ``x`` along ``s``.

    Raises:
        ValueError: ``s`` is the zero vector (see :func:`unit`).

    Example:
        >>> import torch
        >>> scalar_projection(torch.tensor([3.0, 4.0]), torch.tensor([0.0, 2.0])).item()
        4.0
    """
    return (x * unit(direction)).sum(-1)


def decompose(
    x: Float[Tensor, "*#batch d_model"], direction: Float[Tensor, "*#batch d_model"]
) -> tuple[Float[Tensor, "*#batch d_model"], Float[Tensor, "*#batch d_model"]]:
    """``(along, rest)``: ``along = (x·s/‖s‖²)·s`` and the orthogonal remainder ``rest = x − along``.

    ShiftDC splits a modality shift ``m`` into its safety component and the rest this way. A zero
    direction gives ``along = 0``. Keeps the input dtype; safe inside hooks.

    Example:
        >>> import torch
        >>> along, rest = decompose(torch.tensor([3.0, 4.0]), torch.tensor([0.0, 2.0]))
        >>> along.tolist(), rest.tolist()
        ([0.0, 4.0], [3.0, 0.0])
    """
    along = projection_coefficient(x, direction)[..., None] * direction
    return along, x - along


def remove_component(
    x: Float[Tensor, "*#batch d_model"], direction: Float[Tensor, "*#batch d_model"]
) -> Float[Tensor, "*#batch d_model"]:
    """``x − (x·s/‖s‖²)·s``: ``x`` with its component along ``s`` removed (:func:`decompose`'s ``rest``).

    Example:
        >>> import torch
        >>> remove_component(torch.tensor([3.0, 4.0]), torch.tensor([0.0, 2.0])).tolist()
        [3.0, 0.0]
    """
    return decompose(x, direction)[1]
