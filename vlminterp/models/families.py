"""Per-family prompt rules: chat template, image token, image kwargs, CAPTION template.

A *family* is everything vlminterp must know about a VLM's prompt format to build paired
conditions that differ only in the image part. Adding a family is one :class:`Family` entry passed
to :func:`register_family`; nothing else in the pipeline special-cases a family.

Families are keyed by the HF config's ``model_type``. A checkpoint may name its family explicitly
with a ``vlminterp_family`` attribute in its ``config.json`` (the shipped organism does this: it is a
``llava`` checkpoint with its own prompt layout).

Example:
    >>> from vlminterp.models.families import get_family
    >>> get_family("llava").caption_template
    '{query} Image Caption: {caption}'
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["Family", "register_family", "get_family", "family_for_config", "family_names"]

#: Default CAPTION-condition text: ShiftDC's text-only twin of an image input.
SHIFTDC_CAPTION_TEMPLATE = "{query} Image Caption: {caption}"

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


@dataclass(frozen=True)
class Family:
    """Prompt rules of one VLM family.

    Attributes:
        name: Family name used in errors, results and ``HookedVLM.family``.
        model_types: HF ``config.model_type`` values this family handles.
        chat_template: Jinja chat template used when the checkpoint's processor ships none.
        caption_template: Text of the CAPTION condition, with ``{query}`` and ``{caption}``.
        image_token_attr: Name of the config attribute holding the image placeholder token id.
        image_kwargs: Processor outputs (besides ``input_ids``/``attention_mask``) the model takes.
        explicit_position_ids: Pass ``position_ids`` derived from the attention mask (1-D RoPE
            families); False for families whose model derives positions itself (mRoPE).
    """

    name: str
    model_types: tuple[str, ...]
    chat_template: str
    caption_template: str = SHIFTDC_CAPTION_TEMPLATE
    image_token_attr: str = "image_token_index"
    image_kwargs: tuple[str, ...] = ("pixel_values",)
    explicit_position_ids: bool = True

    def messages(self, text: str, with_image: bool) -> list[dict[str, Any]]:
        """One user turn in the HF multimodal chat format (image first, then text)."""
        content: list[dict[str, Any]] = [{"type": "image"}] if with_image else []
        content.append({"type": "text", "text": text})
        return [{"role": "user", "content": content}]

    def caption_text(self, query: str, caption: str) -> str:
        """The CAPTION condition's user text for ``query`` and ``caption``."""
        return self.caption_template.format(query=query, caption=caption)

    def image_token_id(self, config: Any) -> int:
        """The image placeholder token id from the HF config."""
        value = getattr(config, self.image_token_attr, None)
        if value is None:
            raise ValueError(
                f"Family {self.name!r} reads the image token id from config.{self.image_token_attr}, "
                "but this checkpoint's config has no such attribute. Pass family=... to "
                "HookedVLM.from_pretrained, or register a family with the right image_token_attr."
            )
        return int(value)


_FAMILIES: dict[str, Family] = {}


def register_family(family: Family) -> Family:
    """Register (or replace) a family; returns it so it can be used as a module constant."""
    _FAMILIES[family.name] = family
    return family


def family_names() -> list[str]:
    """Names of all registered families, sorted."""
    return sorted(_FAMILIES)


def get_family(name: str) -> Family:
    """The registered family called ``name``.

    Raises:
        ValueError: ``name`` is not registered; the message lists the registered families.
    """
    if name not in _FAMILIES:
        raise ValueError(f"Unknown VLM family {name!r}. Supported families: {family_names()}.")
    return _FAMILIES[name]


def family_for_config(config: Any) -> Family:
    """The family of an HF config: its ``vlminterp_family`` attribute, else its ``model_type``.

    Raises:
        ValueError: no registered family handles this config; the message lists what is supported.
    """
    explicit = getattr(config, "vlminterp_family", None)
    if explicit:
        return get_family(explicit)
    model_type = getattr(config, "model_type", None)
    for family in _FAMILIES.values():
        if model_type in family.model_types:
            return family
    supported = {f.name: list(f.model_types) for f in _FAMILIES.values()}
    raise ValueError(
        f"Unsupported VLM family: config.model_type={model_type!r}. Supported (family: model types): "
        f"{supported}. Register one with vlminterp.models.families.register_family."
    )


LLAVA = register_family(Family(name="llava", model_types=("llava",), chat_template=LLAVA_15_CHAT_TEMPLATE))

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
