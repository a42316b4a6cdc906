"""Per-layer PCA: fit on one set of conditions, project any other (CMRM Figures 1 and 3).

Shape glossary: ``n`` samples, ``layers`` layers, ``d_model`` width, ``k`` = ``n_components``.

The fit is an exact SVD of the centred float64 data, one per layer, with scikit-learn's sign
convention (the largest-magnitude entry of every component is positive), so results match
``sklearn.decomposition.PCA(svd_solver="full")`` layer by layer.

Example:
    >>> import numpy as np
    >>> from vlminterp.analysis.pca import PCA
    >>> X = np.random.default_rng(0).normal(size=(20, 3, 8))
    >>> pca = PCA(n_components=2).fit(X)
    >>> pca.components_.shape, pca.transform(X).shape
    ((3, 2, 8), (20, 3, 2))
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from jaxtyping import Float
from sklearn.exceptions import NotFittedError

from vlminterp.analysis.activations import ConditionActivations, check_matrix, condition_key

__all__ = ["PCA", "pca_rows"]


class PCA:
    """Principal components of ``[n, layers, d_model]`` activations, one PCA per layer.

    Args:
        n_components: Number of components kept (1 <= k <= min(n, d_model)).

    Attributes:
        mean_: ``[layers, d_model]`` per-layer mean of the fitted data (float64).
        components_: ``[layers, k, d_model]`` unit principal axes, largest variance first.
        explained_variance_: ``[layers, k]`` variance along each axis (``ddof=1``).
        explained_variance_ratio_: ``[layers, k]`` fraction of the layer's total variance.
        n_samples_: Number of fitted rows.
    """

    def __init__(self, *, n_components: int = 2):
        self.n_components = n_components

    def fit(self, X: Float[np.ndarray, "n layers d_model"]) -> PCA:
        """Fit one PCA per layer on ``X``; returns ``self``.

        Raises:
            ValueError: bad ``n_components``, NaN, or a layer with zero variance.
        """
        X = check_matrix(X, "PCA input", ndim=(3,))
        n, n_layers, d = X.shape
        k = self.n_components
        if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= min(n, d):
            raise ValueError(
                f"n_components must be an int in [1, min(n_samples, d_model)] = [1, {min(n, d)}], got {k!r}. "
                "Lower n_components or fit on more samples."
            )
        mean = X.mean(axis=0)
        comps = np.empty((n_layers, k, d))
        var = np.empty((n_layers, k))
        ratio = np.empty((n_layers, k))
        for layer in range(n_layers):
            _, s, vt = np.linalg.svd(X[:, layer] - mean[layer], full_matrices=False)
            total = float((s**2).sum())
            if total == 0.0:
                raise ValueError(
                    f"Layer axis {layer} has zero variance (all rows identical); PCA is undefined."
                )
            vt = vt[:k]
            signs = np.sign(vt[np.arange(k), np.abs(vt).argmax(axis=1)])
            comps[layer] = vt * signs[:, None]
            var[layer] = s[:k] ** 2 / max(n - 1, 1)
            ratio[layer] = s[:k] ** 2 / total
        self.mean_, self.components_ = mean, comps
        self.explained_variance_, self.explained_variance_ratio_ = var, ratio
        self.n_samples_ = n
        return self

    def transform(self, X: Float[np.ndarray, "n layers d_model"]) -> Float[np.ndarray, "n layers k"]:
        """Project ``X`` on the fitted components of each layer.

        Raises:
            NotFittedError: before :meth:`fit`.
            ValueError: ``X`` has another ``[layers, d_model]`` than the fitted data.
        """
        if not hasattr(self, "components_"):
            raise NotFittedError("This PCA is not fitted yet; call pca.fit(X) first.")
        X = check_matrix(X, "PCA input", ndim=(3,))
        if X.shape[1:] != self.mean_.shape:
            raise ValueError(
                f"PCA was fitted on [layers, d_model] = {list(self.mean_.shape)}, got {list(X.shape[1:])}."
            )
        return np.einsum("nld,lkd->nlk", X - self.mean_, self.components_)

    def fit_transform(self, X: Float[np.ndarray, "n layers d_model"]) -> Float[np.ndarray, "n layers k"]:
        """``fit(X).transform(X)``."""
        return self.fit(X).transform(X)


def pca_rows(
    acts: ConditionActivations,
    *,
    fit_on: Sequence[str] | None = None,
    conditions: Sequence[str] | None = None,
    n_components: int = 2,
) -> list[dict[str, Any]]:
    """Tidy PCA rows: per-sample coordinates and per-layer explained variance.

    Args:
        acts: Per-condition activations.
        fit_on: Conditions whose rows (pooled) define the components; default all.
        conditions: Conditions to project; default all.
        n_components: Components kept.

    Returns:
        Rows ``{analysis: "pca", layer, fit_on, component, metric: "explained_variance_ratio", value}``
        and, per projected row, ``{analysis: "pca", layer, condition, sample_id, label, fit_on,
        metric: "pc1" | "pc2" | ..., value}``.
    """
    fit_keys = [condition_key(c) for c in (fit_on or acts.conditions)]
    proj_keys = [condition_key(c) for c in (conditions or acts.conditions)]
    pca = PCA(n_components=n_components).fit(np.concatenate([acts.get(c) for c in fit_keys]))
    fit_name = "+".join(fit_keys)
    rows = [
        acts.row(
            analysis="pca",
            layer=layer,
            fit_on=fit_name,
            component=j + 1,
            metric="explained_variance_ratio",
            value=float(pca.explained_variance_ratio_[li, j]),
        )
        for li, layer in enumerate(acts.layers)
        for j in range(n_components)
    ]
    for cond in proj_keys:
        coords = pca.transform(acts.get(cond))
        for li, layer in enumerate(acts.layers):
            for i, (sid, label) in enumerate(zip(acts.sample_ids[cond], acts.labels[cond], strict=True)):
                for j in range(n_components):
                    rows.append(
                        acts.row(
                            analysis="pca",
                            layer=layer,
                            condition=cond,
                            sample_id=sid,
                            label=label,
                            fit_on=fit_name,
                            metric=f"pc{j + 1}",
                            value=float(coords[i, li, j]),
                        )
                    )
    return rows
