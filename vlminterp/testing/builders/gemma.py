"""Tiny builder of the gemma3 family (word-level or real Gemma 3 tokenizer).

Example:
    >>> from vlminterp.testing import tiny_vlm_dir
    >>> import json
    >>> json.loads((tiny_vlm_dir("gemma3") / "config.json").read_text())["mm_tokens_per_image"]
    4
"""

from __future__ import annotations

from pathlib import Path

from vlminterp.models.families.gemma import GEMMA3_CHAT_TEMPLATE
from vlminterp.testing.tiny import TINY_WORDS, TinySizes, register_builder, save_tiny, tiny_tokenizer


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


register_builder("gemma3", _build_gemma3)
