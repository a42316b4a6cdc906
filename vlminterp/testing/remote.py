"""Offline builder of a tiny remote-code VLM: a checkpoint only ``trust_remote_code=True`` loads.

The folder holds ``config.json`` (``model_type`` ``vlminterp_tiny_remote``, unknown to transformers,
and an ``auto_map`` to the copied source ``tiny_remote_vlm.py``), safetensors weights, and a llava-1.5
``LlavaProcessor`` (word-level tokenizer, 32-px images, 16 image tokens), so ``AutoProcessor`` loads
the processor without remote code. The model follows the original Qwen-VL module names
(``transformer.h.{i}.attn.c_proj``); TransformerLens 4.3 has no adapter for it, which is what the
fallback adapter (:mod:`vlminterp.models.fallback`) is tested on. ``config.vlminterp_family`` is
``"llava"``: prompts are built with the llava rules.

Example:
    >>> import tempfile
    >>> from vlminterp.testing import build_tiny_remote_vlm
    >>> path = build_tiny_remote_vlm(tempfile.mkdtemp(), seed=0)
    >>> (path / "tiny_remote_vlm.py").exists()
    True
"""

from __future__ import annotations

from pathlib import Path

import torch

from vlminterp.testing.builders.llava import tiny_llava_processor
from vlminterp.testing.tiny import TinySizes, cached_build, save_tiny

__all__ = ["build_tiny_remote_vlm", "tiny_remote_vlm_dir", "TINY_REMOTE_MODEL_TYPE"]

#: The config's model_type: transformers has no class for it, so loading needs the remote code.
TINY_REMOTE_MODEL_TYPE = "vlminterp_tiny_remote"


def build_tiny_remote_vlm(
    out_dir: str | Path,
    seed: int = 0,
    d_model: int = 64,
    n_layers: int = 2,
    n_heads: int = 4,
    d_mlp: int = 128,
    image_size: int = 32,
    patch_size: int = 8,
) -> Path:
    """Build the tiny remote-code VLM with random weights and save it (code, weights, processor).

    Args:
        out_dir: Directory to write; created if needed.
        seed: Seed of the random weights.
        d_model, n_layers, n_heads, d_mlp: Decoder sizes.
        image_size, patch_size: Image side and patch side in pixels ((image/patch)^2 image tokens).

    Returns:
        ``out_dir`` as a Path.
    """
    from vlminterp.testing.remote_code.tiny_remote_vlm import TinyRemoteVLMConfig, TinyRemoteVLMLMHeadModel

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    processor = tiny_llava_processor(TinySizes(image_size=image_size, patch_size=patch_size))
    tokenizer = processor.tokenizer
    config = TinyRemoteVLMConfig(
        vocab_size=len(tokenizer),
        hidden_size=d_model,
        num_hidden_layers=n_layers,
        num_attention_heads=n_heads,
        intermediate_size=d_mlp,
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        visual={"image_size": image_size, "patch_size": patch_size},
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        vlminterp_family="llava",
    )
    TinyRemoteVLMConfig.register_for_auto_class()
    TinyRemoteVLMLMHeadModel.register_for_auto_class("AutoModelForCausalLM")
    torch.manual_seed(seed)
    save_tiny(TinyRemoteVLMLMHeadModel(config), processor, out)
    return out


def tiny_remote_vlm_dir(seed: int = 0, **sizes: int) -> Path:
    """A cached directory holding the tiny remote-code VLM for (seed, sizes), built on first use."""
    from vlminterp.testing.remote_code import tiny_remote_vlm

    source = Path(tiny_remote_vlm.__file__).read_bytes()  # an edited model file gets a fresh folder
    return cached_build(
        "remote",
        [seed, sorted(sizes.items())],
        lambda out: build_tiny_remote_vlm(out, seed, **sizes),
        salt=source,
    )
