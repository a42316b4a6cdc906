"""The organism's images: one coloured shape on a white 32x32 canvas, and the blank image.

A shape is centred at (16+dx, 16+dy) with dx, dy in [-2, 2] and size r in [9, 12]:

- circle: radius r;
- square: half-width r (its corners reach past the circle's, so the two differ);
- triangle: apex up, height 2r, base width 2r;
- cross: two bars of half-width r // 3 and half-length r.

The BLANK image is the white canvas without a shape (:data:`BLANK_COLOR`), which is exactly what
``PromptBatch.paired(..., blank="white")`` (its default) builds, so the default BLANK condition is
the blank image the organism was trained on.

Example:
    >>> from vlminterp.organism.images import ImageSpec, draw
    >>> draw(ImageSpec("red", "circle")).size
    (32, 32)
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
from PIL import Image

from vlminterp.organism.language import COLORS, SHAPES

__all__ = ["IMAGE_SIZE", "BLANK_COLOR", "ImageSpec", "draw", "blank_image", "random_spec"]

IMAGE_SIZE = 32
#: RGB of the organism's BLANK image: the empty white canvas (PromptBatch's default ``blank``).
BLANK_COLOR: tuple[int, int, int] = (255, 255, 255)
_OFFSETS = range(-2, 3)
_RADII = range(9, 13)


@dataclass(frozen=True)
class ImageSpec:
    """Parameters of one shape image (hashable, so rendered images can be cached by spec)."""

    color: str
    shape: str
    dx: int = 0
    dy: int = 0
    r: int = 10

    def __post_init__(self) -> None:
        if self.color not in COLORS:
            raise ValueError(f"Unknown colour {self.color!r}; choose from {list(COLORS)}.")
        if self.shape not in SHAPES:
            raise ValueError(f"Unknown shape {self.shape!r}; choose from {list(SHAPES)}.")
        if self.dx not in _OFFSETS or self.dy not in _OFFSETS or self.r not in _RADII:
            raise ValueError(
                f"ImageSpec offsets must lie in [-2, 2] and r in [9, 12]; got dx={self.dx}, dy={self.dy}, r={self.r}."
            )


def _mask(spec: ImageSpec) -> np.ndarray:
    y, x = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE]
    cx, cy, r = IMAGE_SIZE // 2 + spec.dx, IMAGE_SIZE // 2 + spec.dy, spec.r
    ax, ay = np.abs(x - cx), np.abs(y - cy)
    if spec.shape == "circle":
        return (x - cx) ** 2 + (y - cy) ** 2 <= r * r
    if spec.shape == "square":
        return (ax <= r) & (ay <= r)
    if spec.shape == "triangle":
        down = y - (cy - r)  # 0 at the apex, 2r at the base
        return (down >= 0) & (down <= 2 * r) & (2 * ax <= down)
    w = r // 3
    return ((ax <= w) & (ay <= r)) | ((ay <= w) & (ax <= r))


def draw(spec: ImageSpec) -> Image.Image:
    """The RGB image of ``spec``."""
    pixels = np.full((IMAGE_SIZE, IMAGE_SIZE, 3), 255, dtype=np.uint8)
    pixels[_mask(spec)] = COLORS[spec.color]
    return Image.fromarray(pixels, "RGB")


def blank_image() -> Image.Image:
    """The organism's BLANK image (the empty canvas)."""
    return Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), BLANK_COLOR)


def random_spec(rng: random.Random) -> ImageSpec:
    """A uniformly random colour, shape, offset and size."""
    return ImageSpec(
        color=rng.choice(list(COLORS)),
        shape=rng.choice(SHAPES),
        dx=rng.choice(_OFFSETS),
        dy=rng.choice(_OFFSETS),
        r=rng.choice(_RADII),
    )
