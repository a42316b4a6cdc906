"""One prompt before tokenisation: a sample under a condition, with the image that condition carries.

:meth:`PromptRow.from_sample` builds the row's user text (the query, or for CAPTION the family's
caption template) and its image: the sample's own (IMAGE), a blank one of the same size (BLANK,
``"white"``, any PIL colour or ``"mean_pixel"``), or seeded noise of the same size (NOISE, one stream
per sample id); samples without an image get the processor's default size.

Example:
    >>> from vlminterp import HookedVLM
    >>> model = HookedVLM.tiny("llava")
    >>> row = PromptRow.from_sample(model, Sample(id="a", query="what is this ?"), "noise")
    >>> row.condition, row.image.size == PromptRow.from_sample(model, Sample(id="a", query="hi"), "blank").image.size
    (<Condition.NOISE: 'noise'>, True)
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from vlminterp.prompts.samples import Condition, Sample, load_image

if TYPE_CHECKING:
    from vlminterp.models.hooked_vlm import HookedVLM

__all__ = ["PromptRow"]


def _blank_image(
    size: tuple[int, int], blank: str | tuple[int, int, int], reference: Image.Image | None
) -> Image.Image:
    if blank == "mean_pixel":
        if reference is None:
            raise ValueError("blank='mean_pixel' needs a sample image to average; use blank='white' instead.")
        color = tuple(int(round(c)) for c in np.asarray(reference, dtype=np.float64).reshape(-1, 3).mean(0))
        return Image.new("RGB", size, color)
    return Image.new("RGB", size, blank)


def _noise_image(size: tuple[int, int], seed: int, sample_id: str) -> Image.Image:
    digest = hashlib.sha256(f"{seed}:{sample_id}".encode()).digest()
    rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
    return Image.fromarray(rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8), "RGB")


def _default_image_size(model: HookedVLM) -> tuple[int, int]:
    ip = getattr(model.processor, "image_processor", None)
    for attr in ("crop_size", "size"):
        size = getattr(ip, attr, None)
        if isinstance(size, dict):
            if "height" in size and "width" in size:
                return int(size["width"]), int(size["height"])
            if "shortest_edge" in size:
                edge = int(size["shortest_edge"])
                if getattr(ip, "merge_size", None):  # Qwen-style: sizes are pixel counts (min_pixels)
                    edge = math.isqrt(edge)
                return edge, edge
    return 336, 336


@dataclass(frozen=True)
class PromptRow:
    """One prompt before tokenisation: a condition, the user text and the image it carries.

    Raises:
        ValueError: an image given to a text condition, or no image for an image condition.
    """

    sample_id: str
    condition: Condition
    text: str
    image: Image.Image | None = None
    label: str | None = None

    def __post_init__(self) -> None:
        if self.condition.has_image and self.image is None:
            raise ValueError(
                f"Sample {self.sample_id!r}: Condition.{self.condition.name} needs an image but none was given. "
                "Give the sample an image, or use Condition.TEXT_ONLY."
            )
        if not self.condition.has_image and self.image is not None:
            raise ValueError(
                f"Sample {self.sample_id!r}: an image was given to Condition.{self.condition.name}, which has no "
                "image tokens. Drop the image, or use Condition.IMAGE / BLANK / NOISE."
            )

    @classmethod
    def from_sample(
        cls,
        model: HookedVLM,
        sample: Sample,
        condition: Condition | str,
        *,
        blank: str | tuple[int, int, int] = "white",
        noise_seed: int = 0,
        caption_template: str | None = None,
    ) -> PromptRow:
        """The row of ``sample`` under ``condition`` (see :meth:`PromptBatch.paired` for the options)."""
        cond = Condition.parse(condition)
        image: Image.Image | None = None
        text = sample.query
        if cond is Condition.IMAGE:
            if sample.image is None:
                raise ValueError(
                    f"Sample {sample.id!r} has no image, so Condition.IMAGE cannot be built. Give it an image, or use "
                    "Condition.BLANK / NOISE / TEXT_ONLY."
                )
            image = load_image(sample.image, sample.id)
        elif cond in (Condition.BLANK, Condition.NOISE):
            reference = load_image(sample.image, sample.id) if sample.image is not None else None
            size = reference.size if reference is not None else _default_image_size(model)
            image = (
                _blank_image(size, blank, reference)
                if cond is Condition.BLANK
                else _noise_image(size, noise_seed, sample.id)
            )
        elif cond is Condition.CAPTION:
            if not sample.caption:
                raise ValueError(
                    f"Sample {sample.id!r} has no caption, so Condition.CAPTION cannot be built. Set sample.caption "
                    "(a dataset caption, or one from vlminterp's captioning step)."
                )
            text = (
                caption_template.format(query=sample.query, caption=sample.caption)
                if caption_template
                else model.family_rules.caption_text(sample.query, sample.caption)
            )
        return cls(sample_id=sample.id, condition=cond, text=text, image=image, label=sample.label)
