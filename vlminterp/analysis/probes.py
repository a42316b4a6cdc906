"""Linear probes: harmful vs benign per layer, trained on one condition and tested on another.

ShiftDC's probe analysis: a probe trained on text-only states separates harmful from benign; tested
on the image versions of the same requests, many unsafe inputs read as "safe". Here every probe is
standardised logistic regression (scikit-learn, ``lbfgs``, fixed seed), and transfer is measured
out of sample: samples are split into stratified folds, the probe is trained on the *train*
condition's rows of the other folds and tested on the *test* condition's rows of the held-out fold.
So text->text is ordinary cross-validation and text->image never tests on a request it trained on.

Shape glossary: ``n`` samples, ``d_model`` width.

Example:
    >>> import numpy as np
    >>> from vlminterp.analysis.probes import transfer_accuracy
    >>> rng = np.random.default_rng(0)
    >>> X = np.concatenate([rng.normal(-2, 1, (20, 4)), rng.normal(2, 1, (20, 4))])
    >>> y = ["benign"] * 20 + ["harmful"] * 20
    >>> transfer_accuracy(X, y, X, y, seed=0)
    1.0
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from jaxtyping import Float, Shaped
from sklearn.exceptions import NotFittedError
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from vlminterp.analysis.activations import ConditionActivations, check_matrix, condition_key

__all__ = ["Probe", "transfer_accuracy", "cross_val_predict", "wilson_interval", "probe_rows"]

DEFAULT_PAIRS = (("text_only", "text_only"), ("image", "image"), ("text_only", "image"))
#: One label per row of ``X``: a list, or a 1-D numpy array (e.g. of ``str``).
Labels = Sequence[Any] | Shaped[np.ndarray, " n"]


def _check_labels(y: Any, n: int, name: str) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim != 1 or len(y) != n:
        raise ValueError(f"{name} must hold one label per row ({n}), got shape {tuple(y.shape)}.")
    classes = np.unique(y)
    if len(classes) != 2:
        raise ValueError(
            f"{name} has {len(classes)} class(es) {classes.tolist()}; a probe needs exactly two "
            "(e.g. harmful and benign). Add samples of the missing class."
        )
    return y


class Probe:
    """Standardised logistic-regression probe on ``[n, d_model]`` activations.

    Args:
        C: Inverse L2 regularisation strength.
        max_iter: Iterations of the ``lbfgs`` solver.
        seed: Random state passed to scikit-learn.

    Attributes:
        classes_: The two labels, sorted.
        coef_: ``[d_model]`` weight vector in the original (unstandardised) activation space,
            pointing toward ``classes_[1]``.
        pipeline_: The fitted scikit-learn pipeline.
    """

    def __init__(self, *, C: float = 1.0, max_iter: int = 1000, seed: int = 0):
        self.C = C
        self.max_iter = max_iter
        self.seed = seed

    def fit(self, X: Float[np.ndarray, "n d_model"], y: Labels) -> Probe:
        """Fit on rows ``X`` with labels ``y`` (exactly two distinct values); returns ``self``."""
        X = check_matrix(X, "Probe training activations")
        y = _check_labels(y, len(X), "Probe training labels")
        if not self.C > 0:
            raise ValueError(f"C must be > 0, got {self.C!r}.")
        pipe = make_pipeline(
            StandardScaler(),
            LogisticRegression(C=self.C, max_iter=self.max_iter, random_state=self.seed),
        )
        self.pipeline_: Pipeline = pipe.fit(X, y)
        scaler, logreg = pipe[0], pipe[-1]
        self.classes_ = logreg.classes_
        self.coef_ = logreg.coef_[0] / scaler.scale_
        return self

    def _fitted(self) -> Pipeline:
        if not hasattr(self, "pipeline_"):
            raise NotFittedError("This Probe is not fitted yet; call probe.fit(X, y) first.")
        return self.pipeline_

    def predict(self, X: Float[np.ndarray, "n d_model"]) -> np.ndarray:
        """Predicted labels of rows ``X``."""
        pipe = self._fitted()
        return pipe.predict(check_matrix(X, "Probe test activations"))

    def score(self, X: Float[np.ndarray, "n d_model"], y: Labels) -> float:
        """Accuracy on ``(X, y)``."""
        pred = self.predict(X)
        y = np.asarray(y)
        if y.shape != pred.shape:
            raise ValueError(f"Probe test labels must hold one label per row ({len(pred)}), got {y.shape}.")
        return float((pred == y).mean())


def transfer_accuracy(
    X_train: Float[np.ndarray, "n d_model"],
    y_train: Labels,
    X_test: Float[np.ndarray, "m d_model"],
    y_test: Sequence[Any] | Shaped[np.ndarray, " m"],
    seed: int = 0,
) -> float:
    """Accuracy of a :class:`Probe` fitted on ``(X_train, y_train)`` and scored on ``(X_test, y_test)``."""
    return Probe(seed=seed).fit(X_train, y_train).score(X_test, y_test)


def cross_val_predict(
    X_train: Float[np.ndarray, "n d_model"],
    X_test: Float[np.ndarray, "n d_model"],
    y: Labels,
    *,
    n_splits: int = 5,
    seed: int = 0,
    C: float = 1.0,
) -> np.ndarray:
    """Out-of-fold predictions for paired rows: fold ``k`` is predicted from ``X_test`` by a probe
    trained on ``X_train`` of the other folds (row ``i`` of both arrays is the same sample).

    Raises:
        ValueError: unpaired shapes, one class only, or a class with fewer samples than ``n_splits``.
    """
    X_train = check_matrix(X_train, "Probe training activations")
    X_test = check_matrix(X_test, "Probe test activations")
    if X_train.shape != X_test.shape:
        raise ValueError(
            f"Paired probe rows must have equal shapes, got train {X_train.shape} and test {X_test.shape}."
        )
    y = _check_labels(y, len(X_train), "Probe labels")
    if not isinstance(n_splits, int) or n_splits < 2:
        raise ValueError(f"n_splits must be an int >= 2, got {n_splits!r}.")
    classes, counts = np.unique(y, return_counts=True)
    if counts.min() < n_splits:
        raise ValueError(
            f"Class {classes[counts.argmin()]!r} has {counts.min()} samples, fewer than n_splits={n_splits} "
            "folds. Lower n_splits or add samples."
        )
    pred = np.empty(len(y), dtype=y.dtype)
    folds = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    for train, test in folds.split(X_train, y):
        pred[test] = Probe(C=C, seed=seed).fit(X_train[train], y[train]).predict(X_test[test])
    return pred


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (95% for ``z=1.96``)."""
    if n <= 0:
        raise ValueError(f"wilson_interval needs n > 0 trials, got {n}.")
    p = successes / n
    denom = 1 + z**2 / n
    centre = (p + z**2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z**2 / (4 * n**2)) / denom
    # The interval always contains p; min/max only absorb rounding at p = 0 or 1.
    return max(0.0, min(p, centre - half)), min(1.0, max(p, centre + half))


def probe_rows(
    acts: ConditionActivations,
    pairs: Sequence[tuple[str, str]] = DEFAULT_PAIRS,
    *,
    n_splits: int = 5,
    seed: int = 0,
    C: float = 1.0,
) -> list[dict[str, Any]]:
    """Harmful-vs-benign probe rows per (train condition, test condition, layer).

    Rows without a label are skipped. Metrics: ``accuracy`` (with Wilson 95% ``ci_low``/``ci_high``
    over the ``n`` out-of-fold predictions), ``harmful_as_benign`` (fraction of harmful test rows
    the probe calls benign: unsafe inputs that "become safe") and ``benign_as_harmful``.

    Raises:
        ValueError: a pair names a missing condition, or too few labelled samples per class.
    """
    rows: list[dict[str, Any]] = []
    for train_c, test_c in pairs:
        train_k, test_k = condition_key(train_c), condition_key(test_c)
        ids, x_train, x_test = acts.paired(train_k, test_k)
        label_of = dict(zip(acts.sample_ids[train_k], acts.labels[train_k], strict=True))
        keep = np.asarray([label_of[i] is not None for i in ids])
        y = np.asarray([label_of[i] for i in ids], dtype=object)[keep].astype(str)
        for li, layer in enumerate(acts.layers):
            pred = cross_val_predict(
                x_train[keep, li], x_test[keep, li], y, n_splits=n_splits, seed=seed, C=C
            )
            correct = int((pred == y).sum())
            low, high = wilson_interval(correct, len(y))
            base = {
                "analysis": "probe",
                "train": train_k,
                "test": test_k,
                "layer": layer,
                "n_splits": n_splits,
            }
            rows.append(
                acts.row(
                    **base, metric="accuracy", value=correct / len(y), ci_low=low, ci_high=high, n=len(y)
                )
            )
            for true, wrong, metric in (
                ("harmful", "benign", "harmful_as_benign"),
                ("benign", "harmful", "benign_as_harmful"),
            ):
                mask = y == true
                if mask.any():
                    value = float((pred[mask] == wrong).mean())
                    rows.append(acts.row(**base, metric=metric, value=value, n=int(mask.sum())))
    return rows
