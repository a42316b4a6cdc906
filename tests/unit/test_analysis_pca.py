"""Per-layer PCA against scikit-learn run directly, and on a planted high-variance axis."""

import numpy as np
import pytest
from sklearn.decomposition import PCA as SkPCA
from sklearn.exceptions import NotFittedError

from vlminterp.analysis import PCA, ConditionActivations, pca_rows


def test_matches_sklearn_layer_by_layer():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(30, 3, 10)) * rng.uniform(0.5, 3, size=10)
    other = rng.normal(size=(7, 3, 10))
    ours = PCA(n_components=3).fit(X)
    for layer in range(3):
        ref = SkPCA(n_components=3, svd_solver="full").fit(X[:, layer])
        np.testing.assert_allclose(ours.components_[layer], ref.components_, atol=1e-10)
        np.testing.assert_allclose(ours.explained_variance_[layer], ref.explained_variance_, rtol=1e-10)
        np.testing.assert_allclose(
            ours.explained_variance_ratio_[layer], ref.explained_variance_ratio_, rtol=1e-10
        )
        np.testing.assert_allclose(
            ours.transform(other)[:, layer], ref.transform(other[:, layer]), atol=1e-10
        )


def test_recovers_a_planted_axis_and_ratio():
    rng = np.random.default_rng(1)
    axis = rng.normal(size=16)
    axis /= np.linalg.norm(axis)
    X = (rng.normal(size=(200, 1)) * 10 * axis + rng.normal(size=(200, 16)) * 0.1)[:, None]
    pca = PCA(n_components=2).fit(X)
    assert abs(pca.components_[0, 0] @ axis) > 0.999
    assert pca.explained_variance_ratio_[0, 0] > 0.99


def test_errors():
    with pytest.raises(NotFittedError, match="fit"):
        PCA().transform(np.zeros((3, 1, 4)))
    with pytest.raises(ValueError, match=r"n_components must be an int in \[1, min"):
        PCA(n_components=5).fit(np.random.default_rng(0).normal(size=(4, 1, 3)))
    with pytest.raises(ValueError, match="zero variance"):
        PCA(n_components=1).fit(np.ones((4, 1, 3)))
    pca = PCA(n_components=1).fit(np.random.default_rng(0).normal(size=(5, 2, 3)))
    with pytest.raises(ValueError, match=r"fitted on \[layers, d_model\] = \[2, 3\]"):
        pca.transform(np.zeros((5, 1, 3)))


def test_pca_rows_fit_on_one_condition_project_all():
    rng = np.random.default_rng(2)
    x = {"text_only": rng.normal(size=(6, 2, 5)), "image": rng.normal(size=(4, 2, 5)) + 3}
    acts = ConditionActivations(x, layers=(4, 9), model="m", dataset="d")
    rows = pca_rows(acts, fit_on=["text_only"], n_components=2)
    coords = [r for r in rows if r["metric"] in ("pc1", "pc2")]
    assert len(coords) == (6 + 4) * 2 * 2
    assert {r["layer"] for r in rows} == {4, 9} and all(r["fit_on"] == "text_only" for r in rows)
    ref = PCA(n_components=2).fit(x["text_only"]).transform(x["image"])
    got = next(
        r
        for r in coords
        if (r["condition"], r["sample_id"], r["layer"], r["metric"]) == ("image", "3", 9, "pc2")
    )
    assert got["value"] == pytest.approx(ref[3, 1, 1])
    ratio = [r for r in rows if r["metric"] == "explained_variance_ratio"]
    assert len(ratio) == 4 and all(0 < r["value"] <= 1 for r in ratio)
