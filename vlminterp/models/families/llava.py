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

from vlminterp.models.families.base import Family, register_family
from vlminterp.models.processors import image_only_loader

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


LLAVA = register_family(
    Family(
        name="llava",
        model_types=("llava",),
        chat_template=LLAVA_15_CHAT_TEMPLATE,
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
