"""Tiny builder of the qwen2_5_vl family (word-level or real Qwen tokenizer).

Example:
    >>> from vlminterp.testing import tiny_vlm_dir
    >>> import json
    >>> json.loads((tiny_vlm_dir("qwen2_5_vl") / "config.json").read_text())["vision_config"]["spatial_merge_size"]
    2
"""

from __future__ import annotations

from pathlib import Path

from vlminterp.models.families.qwen import QWEN2_5_VL_CHAT_TEMPLATE
from vlminterp.models.processors import image_only
from vlminterp.testing.tiny import TINY_WORDS, TinySizes, register_builder, save_tiny, tiny_tokenizer


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


register_builder("qwen2_5_vl", _build_qwen2_5_vl)
