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

from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor
from transformer_lens.model_bridge.supported_architectures import Qwen2_5_VLArchitectureAdapter

from vlminterp.models.families.base import Family, register_family
from vlminterp.models.processors import image_only_loader
from vlminterp.models.tiny import TINY_WORDS, TinySizes, save_tiny, tiny_tokenizer

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
        >>> _, cache = model.run_with_cache(batch, names_filter="vision_projector.hook_out")  # doctest: +SKIP
        >>> raster_order(cache["vision_projector.hook_out"], batch.image_inputs["image_grid_thw"],
        ...              model.hf_model.config.vision_config)  # doctest: +SKIP
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
        cache = kwargs.get("past_key_values")
        if cache is None or cache.get_seq_length() == 0:
            model.rope_deltas = None
        positions = original(*args, **kwargs)
        fed = kwargs["inputs_embeds"].shape[1]
        if positions is not None and positions.shape[-1] != fed:
            positions = positions[..., -fed:]
        return positions

    compute_3d_position_ids._vlminterp_sliced = True  # type: ignore[attr-defined]
    model.compute_3d_position_ids = compute_3d_position_ids


def _build_qwen2_5_vl(out_dir: Path, tokenizer_dir: Path | None = None, **sizes: int) -> None:
    """Tiny ``Qwen2_5_VLForConditionalGeneration``: mRoPE decoder, 2-block windowed ViT, merge 2x2.

    ``tokenizer_dir``: a real Qwen tokenizer (Qwen2.5-VL's vision specials and ids), used with the
    Qwen2.5-VL chat template instead of the word-level tokenizer.
    """
    from transformers import (
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLProcessor,
    )
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from vlminterp.models.processors import image_only

    s = TinySizes.parse("qwen2_5_vl", sizes)
    specials = [
        "<|im_start|>",
        "<|im_end|>",
        "<|vision_start|>",
        "<|vision_end|>",
        "<|image_pad|>",
        "<|video_pad|>",
    ]
    tok = tiny_tokenizer(
        [*TINY_WORDS, "system", "user", "assistant", "You", "helpful"],
        special=specials,
        named={"image_token": "<|image_pad|>", "video_token": "<|video_pad|>"},
        chat_template=QWEN2_5_VL_CHAT_TEMPLATE,
        tokenizer_dir=tokenizer_dir,
        bos=None,
        eos="<|im_end|>",
        pad="<|endoftext|>",
    )
    half = s.d_head // 2  # mRoPE sections (temporal, height, width) split the rotary half of a head
    section = [half - 2 * (half // 3), half // 3, half // 3]
    merge = 2
    config = Qwen2_5_VLConfig(
        text_config=s.text_config(
            tok, rope_parameters={"rope_type": "default", "mrope_section": section, "rope_theta": 1e4}
        ),
        vision_config={
            "depth": s.vision_layers,
            "hidden_size": s.vision_d_model,
            "intermediate_size": 2 * s.vision_d_model,
            "num_heads": 2,
            "patch_size": s.patch_size,
            "spatial_merge_size": merge,
            "temporal_patch_size": 2,
            "window_size": 4 * s.patch_size,  # 2 x 2 merged tokens per window: window order != raster
            "out_hidden_size": s.d_model,
            "fullatt_block_indexes": [s.vision_layers - 1],
        },
        image_token_id=tok.convert_tokens_to_ids("<|image_pad|>"),
        video_token_id=tok.convert_tokens_to_ids("<|video_pad|>"),
        vision_start_token_id=tok.convert_tokens_to_ids("<|vision_start|>"),
        vision_end_token_id=tok.convert_tokens_to_ids("<|vision_end|>"),
        pad_token_id=tok.pad_token_id,
    )
    unit = s.patch_size * merge  # one image token covers unit x unit pixels
    image_processor = Qwen2VLImageProcessorPil(
        patch_size=s.patch_size,
        merge_size=merge,
        temporal_patch_size=2,
        size={"shortest_edge": (2 * unit) ** 2, "longest_edge": (4 * unit) ** 2},
    )
    processor = image_only(Qwen2_5_VLProcessor)(
        image_processor=image_processor, tokenizer=tok, chat_template=QWEN2_5_VL_CHAT_TEMPLATE
    )
    save_tiny(Qwen2_5_VLForConditionalGeneration(config), processor, out_dir)


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
        build_tiny=_build_qwen2_5_vl,
        checkpoints=("Qwen/Qwen2.5-VL-7B-Instruct", "Qwen/Qwen2.5-VL-3B-Instruct"),
    )
)
