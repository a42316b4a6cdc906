"""The test run checks jaxtyping annotations at runtime (the root ``conftest.py`` installs jaxtyping's import hook).

These tests fail if the checks are switched off (or the root conftest's import hook is not installed): a wrongly shaped
tensor passed to an annotated public function must stop with jaxtyping's error, not reach torch.
"""

from __future__ import annotations

import jaxtyping
import pytest
import torch

from vlminterp.directions import diff_in_means, projection_coefficient


def test_every_module_with_a_tensor_annotation_is_checked():
    import pathlib

    import vlminterp
    from conftest import SHAPE_CHECKED

    root = pathlib.Path(vlminterp.__file__).parent
    annotated = {
        f"vlminterp.{path.relative_to(root).parts[0].removesuffix('.py')}"
        for path in root.rglob("*.py")
        if "Float[" in path.read_text() or "Int[" in path.read_text()
    }
    missing = sorted(annotated - set(SHAPE_CHECKED) - {"vlminterp.testing"})
    assert not missing, f"add {missing} to conftest.SHAPE_CHECKED"


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
