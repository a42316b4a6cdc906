"""A dataset's requests and the conditions a request is shown under.

A :class:`Sample` is one request (query, optional image and caption, label); a
:class:`Condition` says how it becomes a prompt, and only the image part differs between
conditions (the sample's image, a blank or noise image of its size, its caption as text, or
nothing). Images given as files are opened by :func:`load_image`; a file that cannot be read
raises :class:`ImageLoadError` naming the sample and the path.

Example:
    >>> Condition.parse("TEXT_ONLY"), Condition.BLANK.has_image
    (<Condition.TEXT_ONLY: 'text_only'>, True)
    >>> Sample(id="a", query="hi", label="harmful").label
    'harmful'
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

__all__ = ["Sample", "Condition", "load_image", "ImageLoadError"]


class ImageLoadError(ValueError):
    """A sample's image file exists but cannot be read as an image (corrupt, truncated, not an image).

    Attributes:
        sample_id: The sample whose image failed.
        path: The image file.
    """

    def __init__(self, sample_id: str, path: Path, problem: str):
        self.sample_id, self.path = sample_id, path
        super().__init__(
            f"Sample {sample_id!r}: image file {str(path)!r} cannot be read as an image ({problem}). "
            "The file is corrupt, truncated or not an image: re-download it, or drop the sample "
            "(the dataset loaders take on_missing='skip')."
        )


@dataclass
class Sample:
    """One request of a dataset.

    Attributes:
        id: Unique id within its dataset.
        query: The user's request text.
        image: A PIL image, a path to an image file, an ``[height, width(, channels)]`` uint8 array
            (converted to a PIL image), or None.
        caption: A text description of the image (CAPTION condition), or None.
        label: ``"harmful"``, ``"benign"`` or None.
        meta: The benchmark's own fields.
    """

    id: str
    query: str
    image: Image.Image | str | Path | np.ndarray | None = None
    caption: str | None = None
    label: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.image, np.ndarray):
            self.image = _array_image(self.image, self.id)
        elif self.image is not None and not isinstance(self.image, (Image.Image, str, Path)):
            raise TypeError(
                f"Sample {self.id!r}: image must be a PIL image, a path, a uint8 numpy array or None, "
                f"got {type(self.image).__name__}."
            )
        if self.label not in (None, "harmful", "benign"):
            raise ValueError(
                f"Sample {self.id!r}: label must be 'harmful', 'benign' or None, got {self.label!r}."
            )


class Condition(str, enum.Enum):
    """How a sample is turned into a prompt. Only the image part differs between conditions."""

    IMAGE = "image"  # query + the sample's image
    BLANK = "blank"  # query + a blank image of the same size
    NOISE = "noise"  # query + a seeded noise image of the same size
    CAPTION = "caption"  # no image; the caption template "{query} Image Caption: {caption}"
    TEXT_ONLY = "text_only"  # query alone, no image tokens

    @property
    def has_image(self) -> bool:
        return self in (Condition.IMAGE, Condition.BLANK, Condition.NOISE)

    @classmethod
    def parse(cls, value: str | Condition) -> Condition:
        """A Condition from its value (``"text_only"``) or name (``"TEXT_ONLY"``)."""
        if isinstance(value, Condition):
            return value
        key = str(value).strip().lower()
        for c in cls:
            if key == c.value:
                return c
        raise ValueError(f"Unknown condition {value!r}. Choose from {[c.value for c in cls]}.")


def _array_image(array: np.ndarray, sample_id: str) -> Image.Image:
    """A ``[height, width]`` or ``[height, width, 1|3|4]`` uint8 array as a PIL image."""
    shape_ok = array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (1, 3, 4))
    if array.dtype != np.uint8 or not shape_ok:
        raise TypeError(
            f"Sample {sample_id!r}: an image array must be uint8 of shape [height, width] or "
            f"[height, width, 1|3|4] (channels last), got {array.dtype} {tuple(array.shape)}. "
            "Convert it, e.g. (x * 255).round().astype('uint8') for floats in [0, 1]."
        )
    return Image.fromarray(array[..., 0] if array.ndim == 3 and array.shape[2] == 1 else array)


def load_image(image: Image.Image | str | Path, sample_id: str = "?") -> Image.Image:
    """Open ``image`` as an RGB PIL image.

    Raises:
        FileNotFoundError: the file does not exist (the message names the sample).
        ImageLoadError: the file exists but is not a readable image (corrupt or truncated).
        TypeError: ``image`` is neither a PIL image nor a path.
    """
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if not isinstance(image, (str, Path)):
        raise TypeError(
            f"Sample {sample_id!r}: image must be a PIL image or a path, got {type(image).__name__}."
        )
    path = Path(image)
    if not path.is_file():
        raise FileNotFoundError(
            f"Sample {sample_id!r}: image file {str(path)!r} does not exist. Check the dataset's image root, "
            "or use Condition.TEXT_ONLY / Condition.CAPTION for samples without images."
        )
    try:
        with Image.open(path) as im:
            return im.convert("RGB")  # decodes the whole file: truncation surfaces here
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise ImageLoadError(sample_id, path, f"{type(err).__name__}: {err}") from err
