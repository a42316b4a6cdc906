"""LLaVA-format families: LLaVA-1.5 (and ShareGPT4V), LLaVA-NeXT (1.6), LLaVA-OneVision, the organism.

All three HF classes put image features in one contiguous run of ``<image>`` tokens. For LLaVA-NeXT
and LLaVA-OneVision the run holds unpadded any-resolution tiles plus newline slots, so projector
rows do not map one-to-one onto image tokens: read per-token image features at
``blocks.0.hook_resid_pre`` under the batch's image mask.

Example:
    >>> from vlminterp.models.families import get_family
    >>> get_family("llava_next").image_kwargs
    ('pixel_values', 'image_sizes')
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vlminterp.models.families.base import Family, register_family
from vlminterp.models.processors import image_only_loader
from vlminterp.models.tiny import TINY_WORDS, TinySizes, make_word_tokenizer, save_tiny, tiny_tokenizer

__all__ = ["LLAVA", "LLAVA_NEXT", "LLAVA_ONEVISION", "ORGANISM", "LLAVA_15_CHAT_TEMPLATE"]

# The chat template shipped with llava-hf/llava-1.5-7b-hf (chat_template.json). It renders
# "USER: <image>\n{text} ASSISTANT:"; the tokenizer prepends BOS.
LLAVA_15_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] != 'system' %}"
    "{{ message['role'].upper() + ': '}}{% endif %}"
    "{# Render all images first #}{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}"
    "{{ '<image>\n' }}{% endfor %}"
    "{# Render all text next #}{% if message['role'] != 'assistant' %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ content['text'] + ' '}}{% endfor %}{% else %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{% generation %}{{ content['text'] + ' '}}{% endgeneration %}{% endfor %}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)

# llava-hf/llava-v1.6-mistral-7b-hf style: "[INST] <image>\n{text} [/INST]".
LLAVA_NEXT_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'user' %}{{ '[INST] ' }}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] }}{% endfor %}"
    "{{ ' [/INST]' }}{% else %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ ' ' + content['text'] }}{% endfor %}"
    "{{ eos_token }}{% endif %}{% endfor %}"
)

# llava-hf/llava-onevision-qwen2-*-ov-hf style (ChatML): "<|im_start|>user <image>\n{text}<|im_end|>".
LLAVA_ONEVISION_CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] }}{% endfor %}"
    "{{ '<|im_end|>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


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

    from vlminterp.models.processors import image_only

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


LLAVA = register_family(
    Family(
        name="llava",
        model_types=("llava",),
        chat_template=LLAVA_15_CHAT_TEMPLATE,
        build_tiny=_build_llava,
        checkpoints=(
            "llava-hf/llava-1.5-7b-hf",
            "llava-hf/llava-1.5-13b-hf",
            "Lin-Chen/ShareGPT4V-7B (llava format)",
        ),
    )
)

LLAVA_NEXT = register_family(
    Family(
        name="llava_next",
        model_types=("llava_next",),
        chat_template=LLAVA_NEXT_CHAT_TEMPLATE,
        image_kwargs=("pixel_values", "image_sizes"),
        build_tiny=_build_llava_next,
        checkpoints=("llava-hf/llava-v1.6-34b-hf", "llava-hf/llava-v1.6-mistral-7b-hf"),
    )
)

LLAVA_ONEVISION = register_family(
    Family(
        name="llava_onevision",
        model_types=("llava_onevision",),
        chat_template=LLAVA_ONEVISION_CHAT_TEMPLATE,
        image_kwargs=("pixel_values", "image_sizes"),
        load_processor=image_only_loader("LlavaOnevisionProcessor"),
        build_tiny=_build_llava_onevision,
        checkpoints=("llava-hf/llava-onevision-qwen2-7b-ov-hf", "llava-hf/llava-onevision-qwen2-0.5b-ov-hf"),
    )
)

# The shipped model organism (a llava checkpoint, config.vlminterp_family = "organism"): renders
# "user : <image>{text} ? assistant :"; the tokenizer prepends BOS. Its CAPTION condition puts the
# caption sentence before the query, where the image tokens would be.
ORGANISM_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['content'] is string %}{% set items = [{'type': 'text', 'text': message['content']}] %}"
    "{% else %}{% set items = message['content'] %}{% endif %}"
    "{% if message['role'] == 'user' %}{{ 'user : ' }}"
    "{% for item in items | selectattr('type', 'equalto', 'image') %}{{ '<image>' }}{% endfor %}"
    "{% for item in items | selectattr('type', 'equalto', 'text') %}{{ item['text'] }}{% endfor %}"
    "{{ ' ?' }}{% else %}{{ ' assistant : ' }}"
    "{% for item in items | selectattr('type', 'equalto', 'text') %}{{ item['text'] }}{% endfor %}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ ' assistant :' }}{% endif %}"
)
ORGANISM = register_family(
    Family(
        name="organism",
        model_types=(),
        chat_template=ORGANISM_CHAT_TEMPLATE,
        caption_template="image shows {caption} {query}",
    )
)
