"""vlminterp.directions, the one home of the direction maths, and which convention each caller uses.

The reference first principal component is written out here with ``torch.linalg.svd``. A singular
vector is defined only up to sign; :func:`vlminterp.directions.pc1` fixes it along the mean, so every
comparison below is first made up to sign (``|cos| = 1``) and then the sign convention is checked
separately (``pc1 · mean > 0``).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vlminterp import Condition, PromptBatch
from vlminterp.analysis import diff_in_means as np_diff_in_means
from vlminterp.analysis import first_pc_direction, safety_direction
from vlminterp.directions import (
    decompose,
    diff_in_means,
    pc1,
    projection_coefficient,
    remove_component,
    scalar_projection,
    unit,
)
from vlminterp.directions import safety_direction as torch_safety_direction
from vlminterp.interventions import CMRM


def reference_pc1(x: torch.Tensor, center: bool) -> torch.Tensor:
    """First right singular vector of (centred) rows ``[n, d]``, sign as LAPACK returns it."""
    x = x.double()
    if center:
        x = x - x.mean(0)
    _, _, vh = torch.linalg.svd(x, full_matrices=False)
    return vh[0]


def same_axis(a: torch.Tensor, b: torch.Tensor, atol: float = 1e-6) -> bool:
    """Equal up to sign (both unit vectors)."""
    return bool(torch.allclose(a, b, atol=atol) or torch.allclose(a, -b, atol=atol))


def shifted_rows(seed: int = 0, n: int = 40, d: int = 16) -> torch.Tensor:
    """Rows with a large shared offset and most of their spread along another axis."""
    g = torch.Generator().manual_seed(seed)
    offset = 3.0 * torch.nn.functional.normalize(torch.randn(d, generator=g, dtype=torch.float64), dim=0)
    spread = torch.randn(n, 1, generator=g, dtype=torch.float64) * torch.eye(d, dtype=torch.float64)[0]
    return offset + spread + 0.05 * torch.randn(n, d, generator=g, dtype=torch.float64)


# ------------------------------------------------------------------ pc1
@pytest.mark.parametrize("center", [True, False])
def test_pc1_equals_the_written_out_svd_up_to_sign_and_points_along_the_mean(center):
    x = shifted_rows()
    ref = reference_pc1(x, center)
    mine = pc1(x, center=center)
    assert mine.dtype == torch.float64
    assert same_axis(mine, ref, atol=1e-10)
    assert float(mine.norm()) == pytest.approx(1.0)
    assert float(mine @ x.mean(0)) > 0  # the documented sign convention
    assert float(pc1(-x, center=center) @ -x.mean(0)) > 0


def test_the_two_conventions_differ_on_shifted_rows():
    x = shifted_rows()
    assert not same_axis(pc1(x, center=True), pc1(x, center=False), atol=0.1)
    assert same_axis(pc1(x, center=True), torch.eye(16, dtype=torch.float64)[0], atol=0.05)


def test_pc1_batches_layers_and_takes_an_explicit_align():
    x = torch.stack([shifted_rows(1), shifted_rows(2)], dim=1)  # [n, layers, d]
    both = pc1(x)
    for layer in range(2):
        torch.testing.assert_close(both[layer], pc1(x[:, layer]))
    flipped = pc1(x[:, 0], align=-x[:, 0].mean(0))
    torch.testing.assert_close(flipped, -both[0])


# ------------------------------------------------------------------ CMRM and the analysis agree
@pytest.fixture(scope="module")
def text_minus_blank(tiny_model, samples):
    """Per-sample ``TEXT_ONLY − BLANK`` last-token resid_post ``[n, layers, d]`` (float64), written out."""
    names = tiny_model.hook_names("resid_post")
    out = []
    for cond in (Condition.TEXT_ONLY, Condition.BLANK):
        _, cache = tiny_model.run_with_cache(
            PromptBatch.paired(tiny_model, samples, [cond]), names_filter=names, positions="last"
        )
        out.append(torch.stack([cache[n] for n in names], dim=1).double())
    return out[0] - out[1]


def test_cmrm_pc1_and_the_analysis_pc1_equal_the_written_out_svd(tiny_model, samples, text_minus_blank):
    """CMRM.fit(estimator="pc1") and first_pc_direction(center=True, scale=False) are one vector."""
    fitted = CMRM.fit(tiny_model, samples, estimator="pc1", progress=False).vectors.double()
    analysis = torch.from_numpy(first_pc_direction(text_minus_blank.numpy(), center=True, scale=False))
    mean = text_minus_blank.mean(0)
    for layer in range(tiny_model.cfg.n_layers):
        ref = reference_pc1(text_minus_blank[:, layer], center=True)
        assert same_axis(fitted[layer], ref, atol=1e-5)
        assert same_axis(analysis[layer], ref, atol=1e-10)
        assert float(fitted[layer] @ mean[layer]) > 0 and float(analysis[layer] @ mean[layer]) > 0
        torch.testing.assert_close(fitted[layer], analysis[layer], atol=1e-5, rtol=0)


def test_cmrm_uses_the_centred_convention(tiny_model, samples, text_minus_blank):
    fitted = CMRM.fit(tiny_model, samples, estimator="pc1", progress=False).vectors.double()
    for layer in range(tiny_model.cfg.n_layers):
        uncentred = reference_pc1(text_minus_blank[:, layer], center=False)
        centred = reference_pc1(text_minus_blank[:, layer], center=True)
        assert not same_axis(centred, uncentred, atol=1e-3)  # the data tell the two apart
        assert same_axis(fitted[layer], centred, atol=1e-5)


def test_analysis_default_is_the_uncentred_mean_scaled_convention():
    x = shifted_rows()
    u = reference_pc1(x, center=False)
    expected = (x.mean(0) @ u) * u
    np.testing.assert_allclose(first_pc_direction(x.numpy()), expected.numpy(), atol=1e-12)
    centred = reference_pc1(x, center=True)
    np.testing.assert_allclose(
        first_pc_direction(x.numpy(), center=True), ((x.mean(0) @ centred) * centred).numpy(), atol=1e-12
    )


# ------------------------------------------------------------------ means and projections
def test_diff_in_means_and_safety_direction_are_float64_mean_differences():
    g = torch.Generator().manual_seed(3)
    a, b = torch.randn(7, 2, 5, generator=g), torch.randn(4, 2, 5, generator=g)
    expected = a.double().mean(0) - b.double().mean(0)
    assert diff_in_means(a, b).dtype == torch.float64
    torch.testing.assert_close(diff_in_means(a, b), expected)
    torch.testing.assert_close(torch_safety_direction(a, b), expected)
    ma, mb = a.double().mean(0), b.double().mean(0)  # streamed means, as SafetyDirection.fit has
    assert torch.equal(torch_safety_direction(ma[None], mb[None]), ma - mb)
    np.testing.assert_allclose(np_diff_in_means(a.numpy(), b.numpy()), expected.numpy(), atol=1e-12)


def test_diff_in_means_names_mismatched_layer_counts(no_shape_checks):
    with pytest.raises(ValueError, match="mismatched layer counts"):
        diff_in_means(torch.zeros(7, 2, 5), torch.zeros(4, 1, 5))


def test_analysis_safety_direction_is_benign_minus_harmful():
    from vlminterp.analysis import ConditionActivations

    rows = np.arange(24, dtype=float).reshape(4, 2, 3)
    acts = ConditionActivations(
        {"text_only": rows}, {"text_only": ["a", "b", "c", "d"]},
        {"text_only": ["benign", "harmful", "benign", "harmful"]}, layers=(0, 1),
    )  # fmt: skip
    expected = rows[[0, 2]].mean(0) - rows[[1, 3]].mean(0)
    np.testing.assert_allclose(safety_direction(acts), expected)


def test_projections_and_decompose_match_the_formulas():
    g = torch.Generator().manual_seed(4)
    m, s = (
        torch.randn(6, 3, 8, generator=g, dtype=torch.float64),
        torch.randn(3, 8, generator=g, dtype=torch.float64),
    )
    coef = (m * s).sum(-1) / (s * s).sum(-1)
    torch.testing.assert_close(projection_coefficient(m, s), coef)
    torch.testing.assert_close(scalar_projection(m, s), (m * s).sum(-1) / s.norm(dim=-1))
    along, rest = decompose(m, s)
    torch.testing.assert_close(along, coef[..., None] * s)
    torch.testing.assert_close(rest, m - coef[..., None] * s)
    torch.testing.assert_close(remove_component(m, s), rest)
    torch.testing.assert_close((rest * s).sum(-1), torch.zeros(6, 3, dtype=torch.float64), atol=1e-12, rtol=0)
    zero = torch.zeros(8, dtype=torch.float64)
    assert not decompose(m, zero)[0].any() and torch.equal(remove_component(m, zero), m)
    assert not projection_coefficient(m, zero).any()
    with pytest.raises(ValueError, match="zero vector"):
        scalar_projection(m, zero)
    with pytest.raises(ValueError, match="zero vector"):
        unit(zero)


def test_decompose_keeps_the_dtype():
    m, s = torch.randn(2, 4, dtype=torch.float16), torch.randn(4, dtype=torch.float16)
    assert all(t.dtype == torch.float16 for t in decompose(m, s))


def test_shiftdc_uses_the_shared_decompose():
    import vlminterp.interventions.shiftdc as shiftdc_module
    from vlminterp.interventions import ShiftDC

    assert shiftdc_module.decompose is decompose
    m, s = torch.randn(3, 5), torch.randn(5)
    torch.testing.assert_close(ShiftDC.decompose(m, s)[0], decompose(m, s)[0])
