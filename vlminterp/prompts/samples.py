"""A dataset's requests and the conditions a request is shown under.

A :class:`Sample` is one request (query, optional image and caption, label); a
:class:`Condition` says how it becomes a prompt, and only the image part differs between
conditions (the sample's image, a blank or noise image of its size, its caption as text, or
nothing). Images given as files are opened by :func:`load_image`.

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

from PIL import Image

__all__ = ["Sample", "Condition", "load_image"]


@dataclass
class Sample:
    """One request of a dataset.

    Attributes:
        id: Unique id within its dataset.
        query: The user's request text.
        image: A PIL image, a path to an image file, or None.
        caption: A text description of the image (CAPTION condition), or None.
        label: ``"harmful"``, ``"benign"`` or None.
        meta: The benchmark's own fields.
    """

    id: str
    query: str
    image: Image.Image | str | Path | None = None
    caption: str | None = None
    label: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
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


def load_image(image: Image.Image | str | Path, sample_id: str = "?") -> Image.Image:
    """Open ``image`` as an RGB PIL image; a missing file raises naming the sample."""
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    path = Path(image)
    if not path.is_file():
        raise FileNotFoundError(
            f"Sample {sample_id!r}: image file {str(path)!r} does not exist. Check the dataset's image root, "
            "or use Condition.TEXT_ONLY / Condition.CAPTION for samples without images."
        )
    with Image.open(path) as im:
        return im.convert("RGB")
