"""Idefics3 and SmolVLM: a SigLIP-style tower over image crops, pixel-shuffled into a Llama decoder.

The image processor splits an image into a grid of crops plus one global view (``pixel_values`` is
5-D ``[batch, crops, 3, H, W]``, with a ``pixel_attention_mask`` of the same crops); the model
drops all-zero crops, so batches of images with different crop counts are zero-padded. The
processor expands the prompt's ``<image>`` into one group per crop,
``<fake_token_around_image><row_i_col_j><image> x image_seq_len``, then the global view
``<fake_token_around_image><global-img><image> x image_seq_len<fake_token_around_image>``: image
tokens are not contiguous, and the ``image`` role mask covers only the ``<image>`` tokens (the
markers are ``template``).

TransformerLens 4.3 has no entry for ``SmolVLMForConditionalGeneration``; its module tree is
Idefics3's, so importing this module registers it with the Idefics3 adapter.

Example:
    >>> from vlminterp.models.families import get_family
    >>> get_family("smolvlm").image_kwargs
    ('pixel_values', 'pixel_attention_mask')
    >>> from transformer_lens.factories.architecture_adapter_factory import SUPPORTED_ARCHITECTURES
    >>> SUPPORTED_ARCHITECTURES["SmolVLMForConditionalGeneration"].__name__
    'Idefics3ArchitectureAdapter'
"""

from __future__ import annotations

from vlminterp.models.families.base import Family, register_family
from vlminterp.models.processors import image_only_loader

__all__ = [
    "IDEFICS3",
    "SMOLVLM",
    "IDEFICS3_CHAT_TEMPLATE",
    "SMOLVLM_CHAT_TEMPLATE",
    "register_smolvlm_adapter",
]

# HuggingFaceM4/Idefics3-8B-Llama3: "<|begin_of_text|>User:<image>{text}<end_of_utterance>\nAssistant:".
_TURNS = (
    "{% for message in messages %}{{ message['role'] | capitalize }}"
    "{% if message['content'][0]['type'] == 'image' %}{{ ':' }}{% else %}{{ ': ' }}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{ line['text'] }}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}<end_of_utterance>\n{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)
IDEFICS3_CHAT_TEMPLATE = "<|begin_of_text|>" + _TURNS
# HuggingFaceTB/SmolVLM-Instruct: the same turns after "<|im_start|>".
SMOLVLM_CHAT_TEMPLATE = "<|im_start|>" + _TURNS

_SMOLVLM_CLASS = "SmolVLMForConditionalGeneration"


def register_smolvlm_adapter() -> None:
    """Make TransformerLens boot ``SmolVLMForConditionalGeneration`` with its Idefics3 adapter (idempotent).

    Architecture detection reads the module-level ``SUPPORTED_ARCHITECTURES``; adapter selection
    reads the factory's registry: both need the entry. An adapter TransformerLens ships itself wins.
    """
    from transformer_lens.factories import architecture_adapter_factory as factory
    from transformer_lens.model_bridge.supported_architectures import Idefics3ArchitectureAdapter

    adapter = factory.SUPPORTED_ARCHITECTURES.setdefault(_SMOLVLM_CLASS, Idefics3ArchitectureAdapter)
    factory.ArchitectureAdapterFactory.register_adapter(_SMOLVLM_CLASS, adapter)


IDEFICS3 = register_family(
    Family(
        name="idefics3",
        model_types=("idefics3",),
        chat_template=IDEFICS3_CHAT_TEMPLATE,
        image_token_attr="image_token_id",
        image_kwargs=("pixel_values", "pixel_attention_mask"),
        checkpoints=("HuggingFaceM4/Idefics3-8B-Llama3",),
    )
)

SMOLVLM = register_family(
    Family(
        name="smolvlm",
        model_types=("smolvlm",),
        chat_template=SMOLVLM_CHAT_TEMPLATE,
        image_token_attr="image_token_id",
        image_kwargs=("pixel_values", "pixel_attention_mask"),
        load_processor=image_only_loader("SmolVLMProcessor"),
        model_class=_SMOLVLM_CLASS,
        checkpoints=("HuggingFaceTB/SmolVLM-Instruct", "HuggingFaceTB/SmolVLM2-2.2B-Instruct"),
    )
)

register_smolvlm_adapter()
