"""Gemma 3 (``Gemma3ForConditionalGeneration``): SigLIP tower, pooled to a fixed number of soft tokens.

The prompt carries one ``<start_of_image>`` per image; the processor expands it to
``<start_of_image><image_soft_token> x mm_tokens_per_image <end_of_image>`` and returns
``token_type_ids`` (1 on soft image tokens). The model needs them: they switch on bidirectional
attention among the tokens of one image, and without them the logits silently differ, so they are a
per-token kwarg of every batch. A freshly initialised model has an all-zero
``multi_modal_projector.mm_input_projection_weight`` (images then change nothing); the tiny
builder (:mod:`vlminterp.testing.builders.gemma`) draws it at random.

Example:
    >>> from vlminterp.models.families import get_family
    >>> gemma = get_family("gemma3")
    >>> gemma.token_kwargs, gemma.image_token_attr
    (('token_type_ids',), 'image_token_index')
"""

from __future__ import annotations

from vlminterp.models.families.base import Family, register_family

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


GEMMA3 = register_family(
    Family(
        name="gemma3",
        model_types=("gemma3",),
        chat_template=GEMMA3_CHAT_TEMPLATE,
        image_token_attr="image_token_index",
        token_kwargs=("token_type_ids",),
        checkpoints=("google/gemma-3-4b-it", "google/gemma-3-12b-it"),
    )
)
