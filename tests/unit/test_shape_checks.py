"""The test run checks jaxtyping annotations at runtime (pyproject ``--jaxtyping-packages``).

These tests fail if the checks are switched off (or the plugin is not loaded): a wrongly shaped
tensor passed to an annotated public function must stop with jaxtyping's error, not reach torch.
"""

from __future__ import annotations

import jaxtyping
import pytest
import torch

from vlminterp.directions import diff_in_means, projection_coefficient


def test_the_run_instruments_vlminterp(pytestconfig):
    packages = (pytestconfig.getoption("jaxtyping_packages") or "").split(",")
    assert "vlminterp" in packages, "pyproject addopts must pass --jaxtyping-packages=vlminterp,..."


def test_a_wrong_shape_raises_jaxtypings_error():
    # Without checks torch broadcasts [3] against [4] and raises a RuntimeError inside the function.
    with pytest.raises(jaxtyping.TypeCheckError, match="d_model"):
        projection_coefficient(torch.ones(3), torch.ones(4))
    # The library's own check (a ValueError) is never reached: the annotated boundary comes first.
    with pytest.raises(jaxtyping.TypeCheckError):
        diff_in_means(torch.ones(2, 3), torch.ones(2, 4))


def test_a_wrong_dtype_raises_jaxtypings_error():
    with pytest.raises(jaxtyping.TypeCheckError, match="Float"):
        projection_coefficient(torch.ones(3, dtype=torch.long), torch.ones(3, dtype=torch.long))


def test_the_fixture_turns_checks_off_for_one_test(no_shape_checks):
    with pytest.raises(ValueError, match="same \\[\\*layers, d_model\\]"):
        diff_in_means(torch.ones(2, 3), torch.ones(2, 4))
