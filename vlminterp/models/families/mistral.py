"""Mistral 3 (``Mistral3ForConditionalGeneration``): Mistral decoder, Pixtral tower, any image size.

Pixtral reads an image at its own size (longest edge capped, both sides rounded up to a multiple of
``patch_size x spatial_merge_size``), so the number of image tokens depends on the aspect ratio. The
prompt carries one ``[IMG]`` per image; the processor expands it row by row to
``[IMG] x w + [IMG_BREAK]`` for each of the ``h`` rows, the last break replaced by ``[IMG_END]``.
``[IMG_BREAK]`` / ``[IMG_END]`` are ordinary embedded tokens, so the image role mask holds the
``[IMG]`` tokens only, and projector row r is the r-th ``[IMG]`` position in raster order. The model
needs ``image_sizes`` (it raises without them) to crop the zero padding of a batch's
``pixel_values`` [images, 3, H_max, W_max]. The Pixtral tower is delegated opaquely by the bridge:
only ``vision_encoder.hook_in`` / ``hook_out`` exist (use PyTorch hooks on
``hf_model.model.vision_tower.transformer.layers[j]`` for more).

transformers' ``PixtralProcessor`` cannot be imported without torchvision, so this module ships
:class:`PixtralImageOnlyProcessor`, the same processor (same config fields, same token expansion)
on top of the PIL image processor; it is the family's ``load_processor``.

Example:
    >>> from vlminterp.models.families import get_family
    >>> mistral = get_family("mistral3")
    >>> mistral.image_kwargs, mistral.load_processor.__self__.__name__
    (('pixel_values', 'image_sizes'), 'PixtralImageOnlyProcessor')
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, no_type_check

from transformers import ProcessorMixin

from vlminterp.models.families.base import Family, register_family

__all__ = ["MISTRAL3", "MISTRAL3_CHAT_TEMPLATE", "PixtralImageOnlyProcessor"]

# mistralai/Mistral-Small-3.1-24B-Instruct-2503 style, without the checkpoint's long default system
# prompt (real checkpoints ship their own template): "<s>[SYSTEM_PROMPT]..[/SYSTEM_PROMPT]" only when
# a system turn is given, then "[INST][IMG]{text}[/INST]"; the answer follows [/INST] directly.
MISTRAL3_CHAT_TEMPLATE = (
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{%- if message['content'] is string %}{%- set items = [{'type': 'text', 'text': message['content']}] %}"
    "{%- else %}{%- set items = message['content'] %}{%- endif %}"
    "{%- if message['role'] == 'system' %}{{- '[SYSTEM_PROMPT]' + items[0]['text'] + '[/SYSTEM_PROMPT]' }}"
    "{%- elif message['role'] == 'user' %}{{- '[INST]' }}"
    "{%- for item in items %}"
    "{%- if item['type'] == 'text' %}{{- item['text'] }}"
    "{%- elif item['type'] in ['image', 'image_url'] %}{{- '[IMG]' }}{%- endif %}"
    "{%- endfor %}{{- '[/INST]' }}"
    "{%- elif message['role'] == 'assistant' %}{{- items[0]['text'] + eos_token }}"
    "{%- endif %}{%- endfor %}"
)


class PixtralImageOnlyProcessor(ProcessorMixin):
    """transformers' ``PixtralProcessor`` without its torchvision import.

    Same ``__init__`` fields as ``PixtralProcessor`` (so a hub ``processor_config.json`` loads) and
    the same call: the image processor resizes to multiples of ``patch_size * spatial_merge_size``
    and each ``[IMG]`` placeholder becomes ``h`` rows of ``w`` image tokens. Saved folders name
    ``PixtralProcessor`` as their class, like real checkpoints.

    Args:
        image_processor: A Pixtral image processor (``PixtralImageProcessorPil``).
        tokenizer: The checkpoint's tokenizer.
        patch_size: The vision tower's patch size in pixels.
        spatial_merge_size: Patches merged per side into one image token.
        chat_template: Jinja chat template.
        image_token, image_break_token, image_end_token: The image placeholder, row break and end tokens.

    Example:
        >>> from vlminterp.testing import tiny_vlm_dir
        >>> from PIL import Image
        >>> proc = PixtralImageOnlyProcessor.from_pretrained(tiny_vlm_dir("mistral3"))
        >>> out = proc(text=["[INST][IMG]hi[/INST]"], images=[[Image.new("RGB", (56, 40))]], return_tensors="pt")
        >>> out["image_sizes"].tolist(), int((out["input_ids"] == proc.image_token_id).sum())
        ([[48, 64]], 12)
    """

    # Not wrapped by runtime type checkers (jaxtyping's import hook in the tests): transformers reads
    # the saved fields from this function's own code object (``from_args_and_dict``).
    @no_type_check
    def __init__(
        self,
        image_processor: Any = None,
        tokenizer: Any = None,
        patch_size: int = 16,
        spatial_merge_size: int = 1,
        chat_template: str | None = None,
        image_token: str = "[IMG]",
        image_break_token: str = "[IMG_BREAK]",
        image_end_token: str = "[IMG_END]",
        **kwargs: Any,
    ):
        super().__init__(image_processor, tokenizer, chat_template=chat_template)
        self.patch_size = patch_size
        self.spatial_merge_size = spatial_merge_size
        self.image_token = image_token
        self.image_break_token = image_break_token
        self.image_end_token = image_end_token
        self.image_token_id = tokenizer.convert_tokens_to_ids(image_token)

    def _process_images(self, images: Any, **images_kwargs: Any) -> Any:
        images_kwargs["patch_size"] = self.patch_size * self.spatial_merge_size
        return super()._process_images(images, **images_kwargs)

    def replace_image_token(self, image_inputs: Mapping[str, Any], image_idx: int, **kwargs: Any) -> str:
        """The expansion of the ``image_idx``-th ``[IMG]``: rows of image tokens, breaks, an end token."""
        step = self.patch_size * self.spatial_merge_size
        height, width = (int(x) for x in image_inputs["image_sizes"][image_idx])
        row = self.image_token * (width // step) + self.image_break_token
        return (row * (height // step))[: -len(self.image_break_token)] + self.image_end_token

    def to_dict(self) -> dict[str, Any]:
        # The saved config is PixtralProcessor's, so the folder loads with it where torchvision exists.
        return {**super().to_dict(), "processor_class": "PixtralProcessor"}


MISTRAL3 = register_family(
    Family(
        name="mistral3",
        model_types=("mistral3",),
        chat_template=MISTRAL3_CHAT_TEMPLATE,
        image_token_attr="image_token_index",
        image_kwargs=("pixel_values", "image_sizes"),
        load_processor=PixtralImageOnlyProcessor.from_pretrained,
        checkpoints=(
            "mistralai/Mistral-Small-3.1-24B-Instruct-2503",
            "mistralai/Mistral-Small-3.2-24B-Instruct-2506",
        ),
    )
)
