"""The :class:`Family` record and the family registry.

A *family* is everything vlminterp must know about a VLM checkpoint format to build paired
conditions that differ only in the image part and to run it: chat template, image token, the
processor outputs the model takes, how to load its processor without torchvision, and patches the
bridge needs. Adding a family is one :class:`Family` entry passed to :func:`register_family` (see
the sibling modules); nothing else in the pipeline special-cases a family. Its tiny offline
checkpoint for tests is built by a builder registered in :mod:`vlminterp.testing`, which imports
the families (never the other way round).

Families are keyed by the HF config's ``model_type``. A checkpoint may name its family explicitly
with a ``vlminterp_family`` attribute in its ``config.json`` (the shipped organism does this: it is a
``llava`` checkpoint with its own prompt layout).

Example:
    >>> from vlminterp.models.families import get_family
    >>> get_family("llava").caption_template
    '{query} Image Caption: {caption}'
    >>> get_family("gemma3").token_kwargs
    ('token_type_ids',)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["Family", "register_family", "get_family", "family_for_config", "family_names"]

#: Default CAPTION-condition text: ShiftDC's text-only twin of an image input.
SHIFTDC_CAPTION_TEMPLATE = "{query} Image Caption: {caption}"


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
        token_kwargs: Per-token processor outputs (``[1, pos]``, e.g. Gemma 3's ``token_type_ids``)
            the model takes; batches left-pad them with 0 and pass them at the first step only.
        load_processor: ``f(source) -> processor`` used when ``AutoProcessor`` does not return a
            processor with an image processor (classes that need torchvision for video).
        prepare: ``f(bridge)`` run once after the bridge is booted (fixes for bridge pitfalls).
        model_class: HF model class name to boot with, when the Auto classes do not map the config.
        checkpoints: Real checkpoint ids of the family (README table, error messages).
    """

    name: str
    model_types: tuple[str, ...]
    chat_template: str
    caption_template: str = SHIFTDC_CAPTION_TEMPLATE
    image_token_attr: str = "image_token_index"
    image_kwargs: tuple[str, ...] = ("pixel_values",)
    explicit_position_ids: bool = True
    token_kwargs: tuple[str, ...] = ()
    load_processor: Callable[[str], Any] | None = None
    prepare: Callable[[Any], None] | None = None
    model_class: str | None = None
    checkpoints: tuple[str, ...] = ()

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
    supported = {f.name: list(f.model_types) for f in _FAMILIES.values() if f.model_types}
    raise ValueError(
        f"Unsupported VLM family: config.model_type={model_type!r}. Supported (family: model types): "
        f"{supported}. If the checkpoint uses one of these prompt formats, pass family=<name> (a model "
        "the TransformerLens bridge cannot wrap then runs through vlminterp's fallback adapter); otherwise "
        "register a Family with vlminterp.models.families.register_family."
    )
