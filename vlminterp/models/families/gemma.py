"""Gemma 3 (``Gemma3ForConditionalGeneration``): SigLIP tower, pooled to a fixed number of soft tokens.

The prompt carries one ``<start_of_image>`` per image; the processor expands it to
``<start_of_image><image_soft_token> x mm_tokens_per_image <end_of_image>`` and returns
``token_type_ids`` (1 on soft image tokens). The model needs them: they switch on bidirectional
attention among the tokens of one image, and without them the logits silently differ, so they are a
per-token kwarg of every batch. A freshly initialised model has an all-zero
``multi_modal_projector.mm_input_projection_weight`` (images then change nothing); the tiny
builder draws it at random.

Example:
    >>> from vlminterp.models.families import get_family
    >>> gemma = get_family("gemma3")
    >>> gemma.token_kwargs, gemma.image_token_attr
    (('token_type_ids',), 'image_token_index')
"""

from __future__ import annotations

from pathlib import Path

from vlminterp.models.families.base import Family, register_family
from vlminterp.models.tiny import TINY_WORDS, TinySizes, save_tiny, tiny_tokenizer

__all__ = ["GEMMA3", "GEMMA3_CHAT_TEMPLATE"]

# google/gemma-3-*-it (chat_template.json): "<bos><start_of_turn>user\n<start_of_image>{text}<end_of_turn>\n
# <start_of_turn>model\n"; the assistant role is called "model", a system turn prefixes the first user turn.
GEMMA3_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{%- if messages[0]['role'] == 'system' -%}"
    "{%- if messages[0]['content'] is string -%}{%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}"
    "{%- else -%}{%- set first_user_prefix = messages[0]['content'][0]['text'] + '\n\n' -%}{%- endif -%}"
    "{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}{%- set first_user_prefix = '' -%}{%- set loop_messages = messages -%}{%- endif -%}"
    "{%- for message in loop_messages -%}"
    "{%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}"
    "{{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else '') }}"
    "{%- if message['content'] is string -%}{{ message['content'] | trim }}"
    "{%- else -%}{%- for item in message['content'] -%}"
    "{%- if item['type'] == 'image' -%}{{ '<start_of_image>' }}"
    "{%- elif item['type'] == 'text' -%}{{ item['text'] | trim }}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{{ '<end_of_turn>\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\n' }}{%- endif -%}"
)


def _build_gemma3(out_dir: Path, tokenizer_dir: Path | None = None, **sizes: int) -> None:
    """Tiny ``Gemma3ForConditionalGeneration``: Gemma 3 decoder (sliding + full layer), SigLIP tower.

    4 x 4 patches are average-pooled to ``mm_tokens_per_image`` = 4 soft tokens per image.
    ``tokenizer_dir``: a real Gemma 3 tokenizer instead of the word-level one.
    """
    from transformers import (
        Gemma3Config,
        Gemma3ForConditionalGeneration,
        Gemma3Processor,
        Gemma3TextConfig,
        SiglipVisionConfig,
    )
    from transformers.models.gemma3.image_processing_pil_gemma3 import Gemma3ImageProcessorPil

    s = TinySizes.parse("gemma3", sizes)
    specials = {
        "boi_token": "<start_of_image>",
        "eoi_token": "<end_of_image>",
        "image_token": "<image_soft_token>",
    }
    tok = tiny_tokenizer(
        [*TINY_WORDS, "user", "model"],
        special=["<start_of_turn>", "<end_of_turn>", *specials.values()],
        named=specials,
        chat_template=GEMMA3_CHAT_TEMPLATE,
        tokenizer_dir=tokenizer_dir,
        eos="<end_of_turn>",
    )
    n_image_tokens = max(1, s.n_patches // 4)  # the pooling must give a perfect square
    # With the default sliding pattern (every 6th layer full) a 2-layer model would be all sliding.
    layer_types = ["sliding_attention" if (i + 1) % 2 else "full_attention" for i in range(s.n_layers)]
    text = Gemma3TextConfig(
        **s.text_config(tok, query_pre_attn_scalar=s.d_head, sliding_window=16, layer_types=layer_types)
    )
    config = Gemma3Config(
        text_config=text,
        vision_config=SiglipVisionConfig(**s.vision_config()),
        mm_tokens_per_image=n_image_tokens,
        boi_token_index=tok.convert_tokens_to_ids(specials["boi_token"]),
        eoi_token_index=tok.convert_tokens_to_ids(specials["eoi_token"]),
        image_token_index=tok.convert_tokens_to_ids(specials["image_token"]),
    )
    processor = Gemma3Processor(
        image_processor=Gemma3ImageProcessorPil(size={"height": s.image_size, "width": s.image_size}),
        tokenizer=tok,
        chat_template=GEMMA3_CHAT_TEMPLATE,
        image_seq_length=n_image_tokens,
    )
    model = Gemma3ForConditionalGeneration(config)
    # HF initialises the projector to zeros: a random model would ignore every image.
    save_tiny(
        model, processor, out_dir, reinit=[model.model.multi_modal_projector.mm_input_projection_weight]
    )


GEMMA3 = register_family(
    Family(
        name="gemma3",
        model_types=("gemma3",),
        chat_template=GEMMA3_CHAT_TEMPLATE,
        image_token_attr="image_token_index",
        token_kwargs=("token_type_ids",),
        build_tiny=_build_gemma3,
        checkpoints=("google/gemma-3-4b-it", "google/gemma-3-12b-it"),
    )
)
