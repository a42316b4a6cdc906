"""Tiny builders of the LLaVA-format families: llava (1.5), llava_next (1.6), llava_onevision.

Example:
    >>> from vlminterp.testing import tiny_vlm_dir
    >>> import json
    >>> json.loads((tiny_vlm_dir("llava") / "config.json").read_text())["image_seq_length"]
    16
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vlminterp.models.families.llava import (
    LLAVA_15_CHAT_TEMPLATE,
    LLAVA_NEXT_CHAT_TEMPLATE,
    LLAVA_ONEVISION_CHAT_TEMPLATE,
)
from vlminterp.models.processors import image_only
from vlminterp.models.word_tokenizer import make_word_tokenizer
from vlminterp.testing.tiny import TINY_WORDS, TinySizes, register_builder, save_tiny, tiny_tokenizer

__all__ = ["tiny_llava_processor"]


def tiny_llava_processor(s: TinySizes, tokenizer_dir: Path | None = None) -> Any:
    """The tiny llava-1.5 ``LlavaProcessor``: a tokenizer with ``<image>``, CLIP PIL image processor.

    The tokenizer is word-level, or the real one in ``tokenizer_dir`` (Llama-2's, as in
    llava-hf/llava-1.5-7b-hf: ``<image>`` = 32000, ``<pad>`` = 32001 appended).
    """
    from transformers import LlavaProcessor
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    tok = tiny_tokenizer(
        [*TINY_WORDS, "USER", "ASSISTANT"],
        special=["<image>"],
        named={"image_token": "<image>"},
        chat_template=LLAVA_15_CHAT_TEMPLATE,
        tokenizer_dir=tokenizer_dir,
    )
    return LlavaProcessor(
        image_processor=CLIPImageProcessorPil(
            size={"shortest_edge": s.image_size}, crop_size={"height": s.image_size, "width": s.image_size}
        ),
        tokenizer=tok,
        patch_size=s.patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=LLAVA_15_CHAT_TEMPLATE,
    )


def _build_llava(out_dir: Path, tokenizer_dir: Path | None = None, **sizes: int) -> None:
    """Tiny ``LlavaForConditionalGeneration``: Llama decoder, CLIP tower, 16 image tokens."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    s = TinySizes.parse("llava", sizes)
    processor = tiny_llava_processor(s, tokenizer_dir)
    tok = processor.tokenizer
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(**s.vision_config()),
        text_config=LlamaConfig(**s.text_config(tok)),
        image_token_index=tok.convert_tokens_to_ids("<image>"),
        image_seq_length=s.n_patches,
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
        pad_token_id=tok.pad_token_id,
    )
    save_tiny(LlavaForConditionalGeneration(config), processor, out_dir)


def _pinpoints(s: TinySizes) -> list[list[int]]:
    """Any-resolution grid: every pinpoint a multiple of the tower's image size (at most 2 x 2 tiles)."""
    n = s.image_size
    return [[n, n], [n, 2 * n], [2 * n, n], [2 * n, 2 * n]]


def _build_llava_next(out_dir: Path, **sizes: int) -> None:
    """Tiny ``LlavaNextForConditionalGeneration``: Llama decoder, CLIP tower, any-resolution tiles."""
    from transformers import (
        CLIPVisionConfig,
        LlamaConfig,
        LlavaNextConfig,
        LlavaNextForConditionalGeneration,
        LlavaNextProcessor,
    )
    from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil

    s = TinySizes.parse("llava_next", sizes)
    tok = make_word_tokenizer(
        list(TINY_WORDS),
        special=["<image>", "[INST]", "[/INST]"],
        named={"image_token": "<image>"},
        chat_template=LLAVA_NEXT_CHAT_TEMPLATE,
    )
    pins = _pinpoints(s)
    config = LlavaNextConfig(
        vision_config=CLIPVisionConfig(**s.vision_config()),
        text_config=LlamaConfig(**s.text_config(tok)),
        image_token_index=tok.convert_tokens_to_ids("<image>"),
        image_grid_pinpoints=pins,
        image_seq_length=s.n_patches,
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
        pad_token_id=tok.pad_token_id,
    )
    image_processor = LlavaNextImageProcessorPil(
        size={"shortest_edge": s.image_size},
        crop_size={"height": s.image_size, "width": s.image_size},
        image_grid_pinpoints=pins,
    )
    processor = LlavaNextProcessor(
        image_processor=image_processor,
        tokenizer=tok,
        patch_size=s.patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=LLAVA_NEXT_CHAT_TEMPLATE,
    )
    save_tiny(LlavaNextForConditionalGeneration(config), processor, out_dir)


def _build_llava_onevision(out_dir: Path, **sizes: int) -> None:
    """Tiny ``LlavaOnevisionForConditionalGeneration``: Qwen2 decoder, SigLIP tower, anyres_max_9."""
    from transformers import (
        LlavaOnevisionConfig,
        LlavaOnevisionForConditionalGeneration,
        LlavaOnevisionProcessor,
        Qwen2Config,
        SiglipVisionConfig,
    )
    from transformers.models.llava_onevision.image_processing_pil_llava_onevision import (
        LlavaOnevisionImageProcessorPil,
    )

    s = TinySizes.parse("llava_onevision", sizes)
    tok = make_word_tokenizer(
        [*TINY_WORDS, "user", "assistant"],
        special=["<|im_start|>", "<|im_end|>", "<image>", "<video>"],
        named={"image_token": "<image>", "video_token": "<video>"},
        chat_template=LLAVA_ONEVISION_CHAT_TEMPLATE,
        bos=None,
        eos="<|im_end|>",
        pad="<|endoftext|>",
    )
    pins = _pinpoints(s)
    config = LlavaOnevisionConfig(
        vision_config=SiglipVisionConfig(**s.vision_config()),
        text_config=Qwen2Config(**s.text_config(tok, tie_word_embeddings=False)),
        image_token_index=tok.convert_tokens_to_ids("<image>"),
        video_token_index=tok.convert_tokens_to_ids("<video>"),
        image_grid_pinpoints=pins,
        vision_feature_layer=-1,
        vision_feature_select_strategy="full",
        vision_aspect_ratio="anyres_max_9",
        pad_token_id=tok.pad_token_id,
    )
    processor = image_only(LlavaOnevisionProcessor)(
        image_processor=LlavaOnevisionImageProcessorPil(
            size={"height": s.image_size, "width": s.image_size}, image_grid_pinpoints=pins
        ),
        tokenizer=tok,
        num_image_tokens=s.n_patches,
        vision_feature_select_strategy="full",
        vision_aspect_ratio="anyres_max_9",
        chat_template=LLAVA_ONEVISION_CHAT_TEMPLATE,
    )
    save_tiny(LlavaOnevisionForConditionalGeneration(config), processor, out_dir)


register_builder("llava", _build_llava)
register_builder("llava_next", _build_llava_next)
register_builder("llava_onevision", _build_llava_onevision)
