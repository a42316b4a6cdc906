"""NaN or infinite strengths are refused at construction, naming the argument.

A NaN ``alpha`` used to be accepted: every steered activation became NaN, generation produced empty
responses and the judge scored them "not refused". Each float parameter of an intervention is
checked when the object is built, before any model runs.
"""

from __future__ import annotations

import math

import pytest
import torch

from vlminterp.interventions import CMRM, DirectionAddition, ShiftDC, SteeringVectors

BAD = [math.nan, math.inf, -math.inf]


def _vectors(**fields) -> SteeringVectors:
    return SteeringVectors(vectors=torch.ones(2, 8), model_id="m", d_model=8, n_layers=2, **fields)


BUILDERS = {
    "CMRM": lambda value: CMRM(_vectors(), alpha=value),
    "CMRM.sample_level": lambda value: CMRM.sample_level(alpha=value),
    "DirectionAddition": lambda value: DirectionAddition(torch.ones(8), alpha=value),
    "ShiftDC": lambda value: ShiftDC(_vectors(), alpha=value, caption_source="sample"),
    "SteeringVectors": lambda value: _vectors(alpha=value),
}


@pytest.mark.parametrize("value", BAD, ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("who", list(BUILDERS))
def test_a_non_finite_alpha_is_refused_naming_the_argument(who, value):
    with pytest.raises(ValueError, match=rf"alpha={value} is not a finite number"):
        BUILDERS[who](value)


@pytest.mark.parametrize("who", list(BUILDERS))
def test_finite_alphas_are_kept_as_floats(who):
    for value in (0, -2, 0.25):
        built = BUILDERS[who](value)
        assert built.alpha == value and isinstance(built.alpha, float)
