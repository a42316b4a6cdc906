"""Qwen2.5-VL (``Qwen2_5_VLForConditionalGeneration``): windowed ViT, patch merger, mRoPE decoder.

What differs from the LLaVA layout, and how vlminterp handles it:

- Positions are 3-D (mRoPE: temporal, height, width). The model derives them itself from
  ``image_grid_thw`` and ``mm_token_type_ids``, so the family passes no ``position_ids``. Without
  ``mm_token_type_ids`` the model silently falls back to 1-D positions: it is a token kwarg here.
- The processor holds a video processor that needs torchvision: it is loaded image-only.
- :func:`prepare` makes HF's position computation fit a KV-cache loop (``HookedVLM.generate`` feeds
  one new token with the whole attention mask), and forgets the previous prompt's rope deltas.
- The vision tower and ``vision_projector.hook_out`` run in *window order*; the image tokens of the
  decoder are in raster order: ``hook_out[argsort(window_index)]`` (:func:`raster_order`) equals
  ``blocks.0.hook_resid_pre`` at the image mask. Vision hooks are 2-D ``[patches, d_vision]`` (no
  batch dim), so ``positions=`` refuses them.
- Attention stays HF-native (mRoPE), so there is no ``attn.hook_result``
  (``bridge.set_use_attn_result(True)`` raises NotImplementedError): per-head outputs are
  ``blocks.{l}.attn.hook_z`` times the head's slice of ``W_O``.

Example:
    >>> from vlminterp.models.families import get_family
    >>> qwen = get_family("qwen2_5_vl")
    >>> qwen.image_kwargs, qwen.token_kwargs, qwen.explicit_position_ids
    (('pixel_values', 'image_grid_thw'), ('mm_token_type_ids',), False)
"""

from __future__ import annotations

from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor
from transformer_lens.model_bridge.supported_architectures import Qwen2_5_VLArchitectureAdapter

from vlminterp.models.compat import passed_kv_cache
from vlminterp.models.families.base import Family, register_family
from vlminterp.models.processors import image_only_loader

__all__ = ["QWEN2_5_VL", "QWEN2_5_VL_CHAT_TEMPLATE", "raster_order"]

# TransformerLens 4.3 lists torchvision as required by this adapter (for the video processor); the
# model itself does not use it and vlminterp loads the processor image-only, so lift the check. It
# must happen at import: the adapter is built inside TransformerBridge.boot_transformers, before
# Family.prepare runs. Idempotent.
Qwen2_5_VLArchitectureAdapter.required_libraries = []

# The chat template shipped with Qwen/Qwen2.5-VL-7B-Instruct (chat_template.json): a default system
# turn, then "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>{text}<|im_end|>\n".
QWEN2_5_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}<|im_end|>\n{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture "
    "{{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}Video "
    "{{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def raster_order(
    projector_out: Float[Tensor, "tokens d_model"],
    image_grid_thw: Int[Tensor, "images 3"],
    vision_config: Any,
) -> Float[Tensor, "tokens d_model"]:
    """``vision_projector.hook_out`` rows reordered from window order to the image tokens' order.

    Row ``r`` of the result is the feature of the ``r``-th image token of the batch (the order of
    ``blocks.0.hook_resid_pre[image_mask]``).

    Args:
        projector_out: The merger's output, one row per image token, in window order.
        image_grid_thw: The batch's ``image_grid_thw`` (one row per image).
        vision_config: The model's ``config.vision_config``.

    Example:
        >>> from PIL import Image
        >>> from vlminterp import HookedVLM, Sample, Condition, PromptBatch
        >>> model = HookedVLM.tiny("qwen2_5_vl")
        >>> image = Image.effect_noise((64, 64), 40).convert("RGB")
        >>> batch = PromptBatch.paired(model, [Sample(id="a", query="what is this ?", image=image)], [Condition.IMAGE])
        >>> _, cache = model.run_with_cache(batch, names_filter=["vision_projector.hook_out", "blocks.0.hook_resid_pre"])
        >>> rows = raster_order(
        ...     cache["vision_projector.hook_out"], batch.image_inputs["image_grid_thw"], model.hf_model.config.vision_config
        ... )
        >>> torch.equal(rows, cache["blocks.0.hook_resid_pre"][batch.image_mask])
        True
    """
    from transformers.vision_utils import get_vision_window_index

    window_index, _ = get_vision_window_index(
        image_grid_thw,
        spatial_merge_size=vision_config.spatial_merge_size,
        window_size=vision_config.window_size,
        patch_size=vision_config.patch_size,
    )
    if window_index.numel() != projector_out.shape[0]:
        raise ValueError(
            f"image_grid_thw describes {window_index.numel()} image tokens but the projector output has "
            f"{projector_out.shape[0]} rows; pass the grid of the batch that produced the activation."
        )
    return projector_out[torch.argsort(window_index.to(projector_out.device))]


def _prepare(bridge: Any) -> None:
    """Make ``compute_3d_position_ids`` work for one new token fed with the whole attention mask.

    HF's method builds positions for every column of the attention mask (rope deltas + mask
    cumsum) and keeps the deltas on the model. A KV-cache step feeds only the new token, so the
    positions are cut to the fed length. At the first step (no cache) the previous prompt's deltas
    are dropped, so a text-only prompt never inherits an earlier image prompt's deltas.
    """
    model = bridge.original_model.model
    original = model.compute_3d_position_ids
    if getattr(original, "_vlminterp_sliced", False):
        return

    def compute_3d_position_ids(*args: Any, **kwargs: Any) -> Tensor | None:
        cache = passed_kv_cache(kwargs)  # transformers 5.24 renamed past_key_values to cache
        if cache is None or cache.get_seq_length() == 0:
            model.rope_deltas = None
        positions = original(*args, **kwargs)
        fed = kwargs["inputs_embeds"].shape[1]
        if positions is not None and positions.shape[-1] != fed:
            positions = positions[..., -fed:]
        return positions

    compute_3d_position_ids._vlminterp_sliced = True  # type: ignore[attr-defined]
    model.compute_3d_position_ids = compute_3d_position_ids


QWEN2_5_VL = register_family(
    Family(
        name="qwen2_5_vl",
        model_types=("qwen2_5_vl",),
        chat_template=QWEN2_5_VL_CHAT_TEMPLATE,
        image_token_attr="image_token_id",
        image_kwargs=("pixel_values", "image_grid_thw"),
        explicit_position_ids=False,
        token_kwargs=("mm_token_type_ids",),
        load_processor=image_only_loader("Qwen2_5_VLProcessor"),
        prepare=_prepare,
        checkpoints=("Qwen/Qwen2.5-VL-7B-Instruct", "Qwen/Qwen2.5-VL-3B-Instruct"),
    )
)
