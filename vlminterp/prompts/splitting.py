"""One processor call for many prompts, split back into exactly what one call per prompt returns.

The processor pads a batch: token ids to the longest prompt, and image tensors across images
(LLaVA-NeXT / OneVision tiles to the most tiles, Pixtral pixels to the largest image, Idefics3 /
SmolVLM crops to the most crops and the largest crop). :func:`processor_rows` undoes that padding
by the family's image layout, read from :attr:`Family.image_kwargs` (no family is named):

- ``images`` (``pixel_values`` [+ ``image_sizes``]: LLaVA, LLaVA-NeXT, OneVision, Gemma 3,
  Mistral 3): no tensors are stacked, and an image processor that pads a batch
  (``_pad_for_batching``) is asked not to (``do_pad=False``), so each image's entry is its own,
  unpadded. Any other ``do_pad`` (LLaVA's pad-to-square, the base backend's batch padding) keeps
  the call per prompt, and so do extra entries per image (Gemma 3's pan-and-scan crops).
- ``patches`` (``image_grid_thw``: Qwen2.5-VL): ``pixel_values`` concatenates every image's
  patches, ``prod(grid_thw)`` rows each.
- ``crops`` (``pixel_attention_mask``: Idefics3, SmolVLM): one ``pixel_values`` row per prompt,
  crops and pixels padded with zeros; a prompt's own crops are those with a real pixel, and its
  own height and width the extent of its real pixels. The cut must be all zero, else the call is
  per prompt.

Any other layout returns None, and the caller tokenises prompt by prompt.

Example:
    >>> from PIL import Image
    >>> from vlminterp import HookedVLM
    >>> model = HookedVLM.tiny("qwen2_5_vl")
    >>> rows = processor_rows(
    ...     model, ["<|vision_start|><|image_pad|><|vision_end|>hi", "hello"], [Image.new("RGB", (40, 56)), None], True
    ... )
    >>> rows[0][1]["pixel_values"].shape, rows[0][1]["image_grid_thw"].tolist(), rows[1][1]
    (torch.Size([32, 384]), [[1, 8, 4]], None)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

if TYPE_CHECKING:
    from vlminterp.models.hooked_vlm import HookedVLM

__all__ = ["image_layout", "processor_rows"]

#: Per prompt: token ids, image tensors (None without an image), per-token kwargs.
Processed = tuple[Tensor, dict[str, Tensor] | None, dict[str, Tensor]]


def image_layout(image_kwargs: Sequence[str]) -> str | None:
    """How a family's batched image tensors are laid out: ``images``, ``patches``, ``crops`` or None.

    Example:
        >>> image_layout(("pixel_values", "image_sizes")), image_layout(("pixel_values", "pixel_attention_mask"))
        ('images', 'crops')
    """
    keys = set(image_kwargs)
    if "pixel_attention_mask" in keys:
        return "crops" if keys == {"pixel_values", "pixel_attention_mask"} else None
    if "image_grid_thw" in keys:
        return "patches" if keys == {"pixel_values", "image_grid_thw"} else None
    return "images" if keys <= {"pixel_values", "image_sizes"} else None


def processor_rows(
    model: HookedVLM, texts: Sequence[str], images: Sequence[Image.Image | None], add_special_tokens: bool
) -> list[Processed] | None:
    """Each prompt's processor outputs, from one processor call for all of them.

    Args:
        model: The model whose processor and family rules are used.
        texts: Rendered prompts (one image placeholder where ``images`` has an image).
        images: One image or None per prompt.
        add_special_tokens: Passed to the tokenizer (False when the template carries BOS).

    Returns:
        Per prompt ``(input_ids [pos], image tensors or None, token kwargs {name: [pos]})``, equal to
        the processor called on that prompt alone; None when the family's layout cannot be split
        with certainty (see the module docstring), so the caller calls per prompt.
    """
    rules = model.family_rules
    has_image = [im is not None for im in images]
    layout = image_layout(rules.image_kwargs) if any(has_image) else "images"
    if layout is None:
        return None
    kwargs: dict[str, Any] = {"padding": True, "add_special_tokens": add_special_tokens}
    if any(has_image):
        kwargs["images"] = [[im] if im is not None else [] for im in images]
        image_processor = getattr(model.processor, "image_processor", None)
        if layout == "crops":
            kwargs["return_tensors"] = "pt"  # pixel_attention_mask exists only for the padded batch
        elif getattr(image_processor, "do_pad", None):
            # transformers' _pad_for_batching pads only across images (LLaVA-NeXT / OneVision tiles,
            # Pixtral pixels), so do_pad=False leaves each image as it is alone. Elsewhere do_pad
            # means the class's own thing (LLaVA pads each image to a square, the base backend pads a
            # batch to its largest image): not certain to split, so one call per prompt.
            if not hasattr(image_processor, "_pad_for_batching"):
                return None
            kwargs["do_pad"] = False
    out = model.processor(text=list(texts), **kwargs)
    per_image = (
        _split_images(out, layout, has_image, rules.image_kwargs) if any(has_image) else [None] * len(texts)
    )
    if per_image is None:
        return None
    ids = torch.as_tensor(out["input_ids"])
    real = torch.as_tensor(out["attention_mask"]).bool()
    tokens = {k: torch.as_tensor(out[k]) for k in rules.token_kwargs if k in out}
    return [
        (ids[i][real[i]], per_image[i], {k: v[i][real[i]] for k, v in tokens.items()})
        for i in range(len(texts))
    ]


def _split_images(
    out: Any, layout: str, has_image: list[bool], image_kwargs: Sequence[str]
) -> list[dict[str, Tensor] | None] | None:
    """Per prompt, its image tensors as the processor returns them for that prompt alone."""
    if any(k not in out for k in image_kwargs):
        return None  # the per-prompt call names what is missing
    owners = [i for i, h in enumerate(has_image) if h]  # prompt of each image, in order
    per_image: list[dict[str, Tensor]] | None
    if layout == "images":
        # Unpadded per-image entries (do_pad=False, no tensors): each is what that image alone gives.
        keys = list(image_kwargs)
        if any(len(out[k]) != len(owners) for k in keys):
            return None  # extra crops per image (Gemma 3 pan-and-scan): not one entry per image
        per_image = [
            {k: torch.as_tensor(np.asarray(out[k][j]))[None] for k in keys} for j in range(len(owners))
        ]
    elif layout == "patches":
        grid = torch.as_tensor(np.asarray(out["image_grid_thw"]))
        pixels = torch.as_tensor(np.asarray(out["pixel_values"]))
        sizes = grid.prod(-1).tolist()
        if len(sizes) != len(owners) or sum(sizes) != pixels.shape[0]:
            return None
        parts = torch.split(pixels, sizes)
        per_image = [{"pixel_values": p, "image_grid_thw": grid[j : j + 1]} for j, p in enumerate(parts)]
    else:
        per_image = _split_crops(out["pixel_values"], out["pixel_attention_mask"], owners, len(has_image))
    if per_image is None:
        return None
    rows: list[dict[str, Tensor] | None] = [None] * len(has_image)
    for owner, tensors in zip(owners, per_image, strict=True):
        rows[owner] = tensors
    return rows


def _split_crops(
    pixels: Tensor, mask: Tensor, owners: list[int], n_prompts: int
) -> list[dict[str, Tensor]] | None:
    """Idefics3 / SmolVLM: each prompt's crops, cut to its own crop count, height and width."""
    if pixels.dim() != 5 or pixels.shape[0] != n_prompts or mask.shape[0] != n_prompts:
        return None  # not one row of crops per prompt
    parts = []
    for i in owners:
        real = mask[i].flatten(1).any(1)
        n = int(real.sum())
        extent = mask[i, :n].any(0)  # [H, W]: where any of the prompt's crops has a real pixel
        h = int(extent.any(1).nonzero().max()) + 1 if n else 0
        w = int(extent.any(0).nonzero().max()) + 1 if n else 0
        cut_zero = (
            not pixels[i, n:].any() and not pixels[i, :, :, h:].any() and not pixels[i, :, :, :, w:].any()
        )
        if not (n and real[:n].all() and cut_zero):
            return None
        parts.append(
            {
                "pixel_values": pixels[i : i + 1, :n, :, :h, :w],
                "pixel_attention_mask": mask[i : i + 1, :n, :h, :w],
            }
        )
    return parts
