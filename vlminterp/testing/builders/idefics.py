"""Tiny builders of the idefics3 and smolvlm families (one recipe, two classes).

Example:
    >>> from vlminterp.testing import tiny_vlm_dir
    >>> import json
    >>> json.loads((tiny_vlm_dir("smolvlm") / "config.json").read_text())["scale_factor"]
    2
"""

from __future__ import annotations

from pathlib import Path

from vlminterp.models.families.idefics import IDEFICS3_CHAT_TEMPLATE, SMOLVLM_CHAT_TEMPLATE
from vlminterp.models.processors import image_only
from vlminterp.models.word_tokenizer import make_word_tokenizer
from vlminterp.testing.tiny import TINY_WORDS, TinySizes, register_builder, save_tiny


def _build(out_dir: Path, sizes: dict[str, int], name: str, classes: tuple[type, ...], smolvlm: bool) -> None:
    """Tiny Idefics3 / SmolVLM: Llama decoder, 4 image tokens per crop, 2 x 2 crops for a 40 x 56 image.

    ``classes`` = (config, model, processor, PIL image processor) of the family.
    """
    from transformers import LlamaConfig

    config_cls, model_cls, processor_cls, image_processor_cls = classes
    s = TinySizes.parse(name, sizes)
    template = SMOLVLM_CHAT_TEMPLATE if smolvlm else IDEFICS3_CHAT_TEMPLATE
    markers = ["<fake_token_around_image>", "<image>", "<end_of_utterance>", "<global-img>"]
    markers += [f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)]
    tok = make_word_tokenizer(
        [*TINY_WORDS, "User", "Assistant"],
        special=markers,
        named={"image_token": "<image>"},
        chat_template=template,
        # Llama 3 tokenizers prepend <|begin_of_text|> (and so does the template); SmolLM's add no BOS.
        bos="<|im_start|>" if smolvlm else "<|begin_of_text|>",
        add_bos=not smolvlm,
        eos="<end_of_utterance>",
    )
    scale_factor = 2  # the pixel shuffle merges 2 x 2 patches: 16 patches -> 4 tokens per crop
    config = config_cls(
        text_config=LlamaConfig(**s.text_config(tok)).to_dict(),
        vision_config=s.vision_config(),
        scale_factor=scale_factor,
        image_token_id=tok.convert_tokens_to_ids("<image>"),
    )
    image_processor = image_processor_cls(
        size={"longest_edge": 2 * s.image_size},
        max_image_size={"longest_edge": s.image_size},
        do_image_splitting=True,
    )
    processor = processor_cls(
        image_processor=image_processor,
        tokenizer=tok,
        image_seq_len=s.n_patches // scale_factor**2,
        chat_template=template,
    )
    save_tiny(model_cls(config), processor, out_dir)


def _build_idefics3(out_dir: Path, **sizes: int) -> None:
    """Tiny ``Idefics3ForConditionalGeneration`` (see :func:`_build`)."""
    from transformers import Idefics3Config, Idefics3ForConditionalGeneration, Idefics3Processor
    from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil

    classes = (Idefics3Config, Idefics3ForConditionalGeneration, Idefics3Processor, Idefics3ImageProcessorPil)
    _build(out_dir, sizes, "idefics3", classes, smolvlm=False)


def _build_smolvlm(out_dir: Path, **sizes: int) -> None:
    """Tiny ``SmolVLMForConditionalGeneration`` (see :func:`_build`); its processor needs ``num2words``."""
    from transformers import SmolVLMConfig, SmolVLMForConditionalGeneration, SmolVLMProcessor
    from transformers.models.smolvlm.image_processing_pil_smolvlm import SmolVLMImageProcessorPil

    classes = (
        SmolVLMConfig,
        SmolVLMForConditionalGeneration,
        image_only(SmolVLMProcessor),
        SmolVLMImageProcessorPil,
    )
    _build(out_dir, sizes, "smolvlm", classes, smolvlm=True)


register_builder("idefics3", _build_idefics3)
register_builder("smolvlm", _build_smolvlm)
