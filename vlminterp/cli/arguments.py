"""Argument types the subcommands share (``type=`` of ``argparse``): layers, finite numbers, counts.

Each raises ``argparse.ArgumentTypeError``, so argparse exits 2 with a message naming the value.

Example:
    >>> layer_spec("8,9,-1"), layer_spec("second_half"), finite_float("0.5"), positive_int("3")
    ([8, 9, -1], 'second_half', 0.5, 3)
    >>> finite_float("nan")
    Traceback (most recent call last):
    ...
    argparse.ArgumentTypeError: 'nan' is not a finite number.
"""

from __future__ import annotations

import argparse
import math

from vlminterp.interventions.site import LAYER_WORDS

__all__ = ["layer_spec", "finite_float", "positive_int"]


def layer_spec(text: str) -> str | list[int]:
    """``--layers``: a layer word (``all``, ``second_half``, ...) or comma-separated indices."""
    if text in LAYER_WORDS:
        return text
    try:
        return [int(x) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--layers {text!r}: use one of {list(LAYER_WORDS)} or comma-separated layer indices (8,9,10; "
            "negative: from the end)."
        ) from None


def finite_float(text: str) -> float:
    """A finite number (``nan`` and ``inf`` refused)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number.")
    return value


def positive_int(text: str) -> int:
    """An integer >= 1."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer.")
    return int(text)
