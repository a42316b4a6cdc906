"""Representation-gap metrics on clouds with a planted offset (known answers)."""

import numpy as np
import pytest

from vlminterp.analysis import ConditionActivations, gap_closed, gap_closed_rows, gap_rows
from vlminterp.analysis.gap import (
    centroid_cosine,
    centroid_distance,
    modality_probe_accuracy,
    silhouette,
    within_spread,
)

D = 16


@pytest.fixture
def clouds():
    rng = np.random.default_rng(0)
    u = rng.normal(size=D)
    offset = 5 * u / np.linalg.norm(u)
    image = rng.normal(size=(60, D))
    return image, image + offset, offset  # text = image + offset exactly


def test_centroid_metrics_known_answers(clouds):
    image, text, offset = clouds
    assert centroid_distance(image, text) == pytest.approx(5.0)
    spread = np.sqrt(
        np.mean([np.sum((r - image.mean(0)) ** 2) for r in image])
    )  # both clouds have this spread
    assert within_spread(image, text) == pytest.approx(spread)
    c = np.array([1.0, 2.0, 3.0])
    assert centroid_cosine(c[None] + 0 * image[:, :3], -c[None] + 0 * image[:, :3]) == pytest.approx(-1.0)


def test_gap_closed_known_answers(clouds):
    image, text, offset = clouds
    assert gap_closed(image, text, offset) == pytest.approx(1.0)
    assert gap_closed(image, text, np.zeros(D)) == pytest.approx(0.0)
    assert gap_closed(image, text, 0.25 * offset) == pytest.approx(0.25)
    assert gap_closed(image, text, 2 * offset) == pytest.approx(0.0)
    assert gap_closed(image, text, -offset) == pytest.approx(-1.0)
    assert gap_closed(image, text, text - image) == pytest.approx(1.0)  # per-sample shifts [n, d]
    with pytest.raises(ValueError, match="no gap"):
        gap_closed(image, image, offset)


def test_gap_closed_names_a_shift_of_the_wrong_shape(clouds, no_shape_checks):
    image, text, _ = clouds
    with pytest.raises(ValueError, match=r"shift must be \[d_model\] or \[n, d_model\]"):
        gap_closed(image, text, np.zeros(D + 1))


def test_probe_and_silhouette_separate_only_separated_clouds(clouds):
    image, text, _ = clouds
    same = np.random.default_rng(5).normal(size=(60, D))
    assert modality_probe_accuracy(image, text, seed=0) >= 0.95
    assert 0.3 <= modality_probe_accuracy(image, same, seed=0) <= 0.7
    assert silhouette(image, text) > 0.2  # ~ (sqrt(2·16+25) − sqrt(2·16)) / sqrt(2·16+25)
    assert abs(silhouette(image, same)) < 0.05


def test_gap_rows_and_gap_closed_rows(clouds):
    image, text, offset = clouds
    x = {"image": np.stack([image, 2 * image], 1), "text_only": np.stack([text, 2 * text], 1)}
    acts = ConditionActivations(x, layers=(2, 3), model="m", dataset="d")
    rows = gap_rows(acts, [("image", "text_only")], n_splits=3)
    assert {r["metric"] for r in rows} == {
        "centroid_distance",
        "normalized_centroid_distance",
        "centroid_cosine",
        "modality_probe_accuracy",
        "silhouette",
    }
    dist = {r["layer"]: r["value"] for r in rows if r["metric"] == "centroid_distance"}
    assert dist == pytest.approx({2: 5.0, 3: 10.0})
    closed = gap_closed_rows(acts, {"true": np.stack([offset, 2 * offset]), "zero": np.zeros((2, D))})
    assert {(r["shift"], r["layer"]): r["value"] for r in closed} == pytest.approx(
        {("true", 2): 1.0, ("true", 3): 1.0, ("zero", 2): 0.0, ("zero", 3): 0.0}
    )
    with pytest.raises(ValueError, match="1 layers; the activations have 2"):
        gap_closed_rows(acts, {"bad": np.zeros((1, D))})


def test_nan_and_width_mismatch_raise(clouds, no_shape_checks):
    image, text, _ = clouds
    bad = image.copy()
    bad[3, 2] = np.nan
    with pytest.raises(ValueError, match=r"NaN/inf values \(rows \[3\]\)"):
        centroid_distance(bad, text)
    with pytest.raises(ValueError, match="different d_model"):
        centroid_distance(image, text[:, :4])
