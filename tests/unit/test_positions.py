"""The position vocabulary: checks and command-line parsing (no model)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vlminterp.positions import POSITION_NAMES, check_positions, describe_positions, positions_from_text


@pytest.mark.parametrize("positions", [None, *POSITION_NAMES, -1, 3, torch.tensor([0, -1])])
def test_capture_accepts_every_selection(positions):
    assert check_positions(positions) is positions


def test_per_row_selections_are_names_and_ints():
    assert check_positions(np.int64(-2), per_row=True) == -2
    assert type(check_positions(np.int64(-2), per_row=True)) is int
    with pytest.raises(ValueError, match=r"positions=None is not supported .*choose from \['last'"):
        check_positions(None, per_row=True)
    with pytest.raises(ValueError, match=r"tensor of shape \(2,\).*run_with_cache"):
        check_positions(torch.tensor([0, 1]), per_row=True)


@pytest.mark.parametrize(
    ("positions", "per_row", "message"),
    [
        (
            "first",
            False,
            r"Unknown positions 'first': choose from \['last', 'last_instruction', 'mean_text'\], an int, an index",
        ),
        ("first", True, r"Unknown positions 'first': choose from .* or an int\.$"),
        (True, False, r"positions must be None, one of .*; got True"),
        (
            1.5,
            True,
            r"positions must be one of \['last', 'last_instruction', 'mean_text'\] or an int; got 1.5",
        ),
    ],
)
def test_errors_name_the_value_and_the_choices(positions, per_row, message):
    with pytest.raises(ValueError, match=message):
        check_positions(positions, per_row=per_row)


def test_text_and_description():
    assert positions_from_text("mean_text") == "mean_text" and positions_from_text("-3") == -3
    with pytest.raises(ValueError, match=r"--positions 'first': choose from"):
        positions_from_text("first")
    assert describe_positions(torch.tensor([[1, 2]])) == [[1, 2]] and describe_positions("last") == "last"
