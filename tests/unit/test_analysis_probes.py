"""Probes: planted separable / identical clouds, text→image transfer with a planted shift, errors."""

import numpy as np
import pytest
from sklearn.exceptions import NotFittedError

from vlminterp.analysis import ConditionActivations, Probe, probe_rows, transfer_accuracy
from vlminterp.analysis.probes import cross_val_predict, wilson_interval

D = 12


def unit(seed=0):
    u = np.random.default_rng(seed).normal(size=D)
    return u / np.linalg.norm(u)


def labelled(n, sep, seed):
    rng = np.random.default_rng(seed)
    u = unit()
    X = rng.normal(size=(2 * n, D))
    X[:n] -= sep * u
    X[n:] += sep * u
    return X, np.array(["harmful"] * n + ["benign"] * n)


def test_accuracy_is_one_when_separable_and_chance_when_identical():
    X, y = labelled(100, 3.0, 1)
    Xt, yt = labelled(100, 3.0, 2)
    assert transfer_accuracy(X, y, Xt, yt) >= 0.99
    N, yn = labelled(100, 0.0, 3)
    Nt, ynt = labelled(100, 0.0, 4)
    assert 0.35 <= transfer_accuracy(N, yn, Nt, ynt) <= 0.65


def test_probe_weights_point_along_the_planted_axis_and_are_reproducible():
    X, y = labelled(100, 3.0, 1)
    probe = Probe(seed=0).fit(X, y)
    assert probe.classes_.tolist() == ["benign", "harmful"]
    cos = probe.coef_ @ unit() / np.linalg.norm(probe.coef_)
    assert cos < -0.9  # toward classes_[1] = harmful, which sits at −u
    again = cross_val_predict(X, X, y, seed=7)
    np.testing.assert_array_equal(again, cross_val_predict(X, X, y, seed=7))


def test_text_to_image_transfer_sees_unsafe_as_safe():
    """Image states = text states shifted toward benign: the text probe calls harmful images benign."""
    text, y = labelled(30, 2.0, 5)
    image = text + 4.0 * unit()  # +u is the benign side
    ids = [f"s{i}" for i in range(60)]
    # image rows are stored in reverse order: rows are paired by sample id, not position
    acts = ConditionActivations(
        {"text_only": text[:, None], "image": image[::-1][:, None]},
        sample_ids={"text_only": ids, "image": ids[::-1]},
        labels={"text_only": list(y), "image": list(y[::-1])},
    )
    rows = probe_rows(acts, [("text_only", "text_only"), ("text_only", "image")], n_splits=5)
    got = {(r["train"], r["test"], r["metric"]): r for r in rows}
    assert got["text_only", "text_only", "accuracy"]["value"] >= 0.95
    assert got["text_only", "image", "accuracy"]["value"] == pytest.approx(0.5, abs=0.1)
    assert got["text_only", "image", "harmful_as_benign"]["value"] >= 0.9
    assert got["text_only", "image", "benign_as_harmful"]["value"] <= 0.1
    acc = got["text_only", "text_only", "accuracy"]
    assert acc["ci_low"] <= acc["value"] <= acc["ci_high"] and acc["n"] == 60


def test_wilson_interval_known_value():
    low, high = wilson_interval(8, 10)
    assert (low, high) == pytest.approx((0.4902, 0.9433), abs=1e-4)
    assert wilson_interval(10, 10)[1] == 1.0 and wilson_interval(0, 10)[0] == 0.0


def test_degenerate_input_raises():
    X, y = labelled(10, 1.0, 0)
    with pytest.raises(ValueError, match=r"1 class\(es\) \['harmful'\]"):
        Probe().fit(X[:10], y[:10])
    with pytest.raises(ValueError, match="fewer than n_splits=5"):
        cross_val_predict(X[:14], X[:14], y[:14], n_splits=5)  # 4 benign rows < 5 folds
    bad = X.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        Probe().fit(bad, y)
    with pytest.raises(NotFittedError, match="fit"):
        Probe().predict(X)


def test_a_label_count_mismatch_is_named(no_shape_checks):
    X, y = labelled(10, 1.0, 0)
    with pytest.raises(ValueError, match="one label per row"):
        Probe().fit(X, y[:-1])
