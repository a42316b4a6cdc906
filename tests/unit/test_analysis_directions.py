"""Directions: diff-in-means = planted offset, first-PC variant, projections, ShiftDC distortion math."""

import numpy as np
import pytest

from vlminterp.analysis import (
    ConditionActivations,
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
from vlminterp.analysis.directions import cosine, normalize

D = 10


def test_diff_in_means_equals_the_planted_offset_2d_and_3d():
    rng = np.random.default_rng(0)
    b = rng.normal(size=(40, 3, D))
    offset = rng.normal(size=(3, D))
    np.testing.assert_allclose(diff_in_means(b + offset, b), offset, atol=1e-12)
    np.testing.assert_allclose(diff_in_means(b[:, 1] + offset[1], b[:, 1]), offset[1], atol=1e-12)


def test_diff_in_means_recovers_direction_under_noise():
    rng = np.random.default_rng(1)
    u = rng.normal(size=D)
    u *= 4 / np.linalg.norm(u)
    est = diff_in_means(rng.normal(size=(500, D)) + u, rng.normal(size=(500, D)))
    assert est @ u / (np.linalg.norm(est) * np.linalg.norm(u)) > 0.99


def test_diff_in_means_errors(no_shape_checks):
    with pytest.raises(ValueError, match="mismatched layer counts"):
        diff_in_means(np.zeros((3, 2, D)), np.zeros((3, 3, D)))
    with pytest.raises(ValueError, match="NaN"):
        diff_in_means(np.full((3, D), np.nan), np.zeros((3, D)))
    with pytest.raises(ValueError, match="no rows"):
        diff_in_means(np.zeros((0, D)), np.zeros((3, D)))


def test_first_pc_direction_of_noisy_shared_shifts():
    rng = np.random.default_rng(2)
    v = rng.normal(size=(2, D))
    diffs = v + 0.1 * rng.normal(size=(50, 2, D))
    est = first_pc_direction(diffs)
    for layer in range(2):
        cos = est[layer] @ v[layer] / (np.linalg.norm(est[layer]) * np.linalg.norm(v[layer]))
        assert cos > 0.99
        assert np.linalg.norm(est[layer]) == pytest.approx(np.linalg.norm(v[layer]), rel=0.02)
    np.testing.assert_allclose(first_pc_direction(diffs[:, 0]), est[0])
    np.testing.assert_allclose(first_pc_direction(-diffs)[0], -est[0])  # sign follows the mean


def test_projection_cosine_and_cosine_matrix():
    assert float(scalar_projection(np.array([3.0, 4.0]), np.array([0.0, 2.0]))) == 4.0
    assert float(cosine(np.array([3.0, 4.0]), np.array([0.0, 2.0]))) == pytest.approx(0.8)
    rng = np.random.default_rng(3)
    x, s = rng.normal(size=(5, 3, D)), rng.normal(size=(3, D))
    loop = np.array(
        [[x[i, layer] @ s[layer] / np.linalg.norm(s[layer]) for layer in range(3)] for i in range(5)]
    )
    np.testing.assert_allclose(scalar_projection(x, s), loop)
    e = np.eye(3)
    np.testing.assert_allclose(
        cosine_matrix(np.stack([e[0], e[1], -e[0]])), [[1, 0, -1], [0, 1, 0], [-1, 0, 1]]
    )
    with pytest.raises(ValueError, match="zero vector"):
        normalize(np.zeros(D))
    with pytest.raises(ValueError, match="trailing axes must match"):
        scalar_projection(x, s[:2])


def test_distortion_known_values():
    s = np.array([2.0, 0.0, 0.0])
    twin = np.array([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]])
    image = twin + np.array([[3.0, 4.0, 0.0], [-1.0, 0.0, 0.0]])
    cos, proj = distortion(image, twin, s)
    np.testing.assert_allclose(cos, [0.6, -1.0])
    np.testing.assert_allclose(proj, [3.0, -1.0])


def test_distortion_names_unpaired_rows(no_shape_checks):
    s, rows = np.array([2.0, 0.0, 0.0]), np.zeros((2, 3))
    with pytest.raises(ValueError, match="paired"):
        distortion(rows, rows[:1], s)


def planted_acts():
    """Text-only: harmful at −u, benign at +u; image = caption twin + 2u (+ noise) for every sample."""
    rng = np.random.default_rng(4)
    u = np.zeros(D)
    u[0] = 1.0
    n = 20
    y = ["harmful"] * n + ["benign"] * n
    text = rng.normal(size=(2 * n, 2, D)) * 0.1 + np.where(np.array(y)[:, None, None] == "benign", 1, -1) * u
    caption = text + 0.05 * rng.normal(size=text.shape)
    image = caption + 2 * u + 0.05 * rng.normal(size=text.shape)
    ids = [f"s{i}" for i in range(2 * n)]
    conds = {"text_only": text, "caption": caption, "image": image}
    return ConditionActivations(
        conds, sample_ids=dict.fromkeys(conds, ids), labels=dict.fromkeys(conds, y)
    ), u


def test_safety_direction_sign_and_distortion_rows():
    acts, u = planted_acts()
    s = safety_direction(acts)  # mean(benign) − mean(harmful) ≈ 2u
    assert s.shape == (2, D) and (s[:, 0] > 1.8).all()
    variants = {f"s{i}": "SD" if i % 2 else "TYPO" for i in range(40)}
    rows = distortion_rows(acts, s, variant_of=variants)
    per_sample = [r for r in rows if r["analysis"] == "distortion"]
    summary = [r for r in rows if r["analysis"] == "distortion_summary"]
    assert len(per_sample) == 40 * 2 * 2  # samples x layers x metrics
    assert len(summary) == 2 * 2 * 2 * 2  # metrics x variants x labels x layers
    proj = [r["value"] for r in per_sample if r["metric"] == "shift_projection"]
    assert np.mean(proj) == pytest.approx(2.0, abs=0.05)  # the planted shift is +2 along s
    one = next(
        r
        for r in summary
        if (r["metric"], r["variant"], r["label"], r["layer"]) == ("shift_cosine", "SD", "harmful", 1)
    )
    ref = [
        r["value"]
        for r in per_sample
        if (r["metric"], r["variant"], r["label"], r["layer"]) == ("shift_cosine", "SD", "harmful", 1)
    ]
    assert one["value"] == pytest.approx(np.mean(ref)) and one["n"] == len(ref) == 10


def test_direction_and_projection_rows():
    acts, _ = planted_acts()
    s = safety_direction(acts)
    rows = direction_rows(acts, {"safety": s})
    cos = {(r["layer"], r["layer_b"]): r["value"] for r in rows if r["metric"] == "cosine_across_layers"}
    assert cos[0, 0] == pytest.approx(1.0) and cos[0, 1] > 0.99
    proj = projection_rows(acts, "safety", s, conditions=["text_only"])
    assert len(proj) == 40 * 2
    harmful = [r["value"] for r in proj if r["label"] == "harmful"]
    benign = [r["value"] for r in proj if r["label"] == "benign"]
    assert max(harmful) < min(benign)
    with pytest.raises(ValueError, match="has no 'harmful' rows"):
        safety_direction(
            ConditionActivations({"text_only": np.zeros((2, 1, D))}, labels={"text_only": ["benign"] * 2})
        )
