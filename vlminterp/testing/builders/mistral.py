"""Tiny builder of the mistral3 family (Pixtral tower, image-only Pixtral processor).

Example:
    >>> from vlminterp.testing import tiny_vlm_dir
    >>> import json
    >>> json.loads((tiny_vlm_dir("mistral3") / "config.json").read_text())["spatial_merge_size"]
    2
"""

from __future__ import annotations

from pathlib import Path

from vlminterp.models.families.mistral import MISTRAL3_CHAT_TEMPLATE, PixtralImageOnlyProcessor
from vlminterp.models.word_tokenizer import make_word_tokenizer
from vlminterp.testing.tiny import TINY_WORDS, TinySizes, register_builder, save_tiny


def _build_mistral3(out_dir: Path, **sizes: int) -> None:
    """Tiny ``Mistral3ForConditionalGeneration``: Mistral decoder, Pixtral tower, 2 x 2 patch merger.

    Images are capped at a 64-px longest edge and read in 16-px cells (8-px patches merged 2 x 2):
    a 40 x 56 (h x w) image becomes 48 x 64, i.e. 3 x 4 = 12 ``[IMG]`` tokens.
    """
    from transformers import (
        Mistral3Config,
        Mistral3ForConditionalGeneration,
        MistralConfig,
        PixtralVisionConfig,
    )
    from transformers.models.pixtral.image_processing_pil_pixtral import PixtralImageProcessorPil

    s = TinySizes.parse("mistral3", {"image_size": 64, **sizes})
    merge = 2
    image_tokens = ["[IMG]", "[IMG_BREAK]", "[IMG_END]"]
    tok = make_word_tokenizer(
        list(TINY_WORDS),
        special=["[INST]", "[/INST]", "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]", *image_tokens],
        named={"image_token": "[IMG]"},
        chat_template=MISTRAL3_CHAT_TEMPLATE,
        bos="<s>",
        eos="</s>",
    )
    # A text config passed as a dict would take Mistral 3's defaults (head_dim 128, rope_theta 1e9).
    text = MistralConfig(**s.text_config(tok, sliding_window=None))
    config = Mistral3Config(
        vision_config=PixtralVisionConfig(**s.vision_config()),
        text_config=text,
        image_token_index=tok.convert_tokens_to_ids("[IMG]"),
        spatial_merge_size=merge,
        vision_feature_layer=-1,
        multimodal_projector_bias=False,
    )
    step = s.patch_size * merge
    processor = PixtralImageOnlyProcessor(
        image_processor=PixtralImageProcessorPil(
            patch_size={"height": step, "width": step}, size={"longest_edge": s.image_size}
        ),
        tokenizer=tok,
        patch_size=s.patch_size,
        spatial_merge_size=merge,
        chat_template=MISTRAL3_CHAT_TEMPLATE,
    )
    save_tiny(Mistral3ForConditionalGeneration(config), processor, out_dir)


register_builder("mistral3", _build_mistral3)
