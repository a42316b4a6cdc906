"""Offline builders of tiny random VLMs, saved like real checkpoints.

Every builder writes a directory with ``config.json``, safetensors weights, tokenizer and processor
files, so ``HookedVLM.from_pretrained(directory)`` exercises exactly the code path of a real
checkpoint. Weights are random and deterministic for a seed; tokenizers are word-level and built
from a word list, so nothing is downloaded.

Example:
    >>> import tempfile
    >>> from vlminterp.models.tiny import build_tiny_vlm
    >>> path = build_tiny_vlm("llava", tempfile.mkdtemp(), seed=0)
    >>> sorted(p.name for p in path.iterdir())[:2]
    ['chat_template.jinja', 'config.json']
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "make_word_tokenizer",
    "build_tiny_vlm",
    "tiny_vlm_dir",
    "tiny_families",
    "save_tiny",
    "TinySizes",
    "TINY_WORDS",
]

#: Words of the tiny models' vocabulary: enough English for test prompts and dataset queries.
TINY_WORDS: tuple[str, ...] = tuple(
    [
        ".",
        ",",
        "?",
        "!",
        ":",
        ";",
        "'",
        '"',
        "-",
        "(",
        ")",
        "0",
        "1",
        "2",
        "3",
        "4",
        "5",
        "6",
        "7",
        "8",
        "9",
        "a",
        "an",
        "the",
        "this",
        "that",
        "these",
        "those",
        "it",
        "its",
        "is",
        "are",
        "was",
        "were",
        "be",
        "been",
        "am",
        "i",
        "you",
        "he",
        "she",
        "we",
        "they",
        "me",
        "my",
        "your",
        "what",
        "how",
        "why",
        "where",
        "when",
        "who",
        "which",
        "can",
        "could",
        "would",
        "should",
        "will",
        "do",
        "does",
        "did",
        "not",
        "no",
        "yes",
        "sure",
        "sorry",
        "help",
        "tell",
        "show",
        "explain",
        "describe",
        "make",
        "build",
        "create",
        "get",
        "buy",
        "use",
        "find",
        "write",
        "give",
        "teach",
        "draw",
        "list",
        "steps",
        "to",
        "of",
        "in",
        "on",
        "at",
        "for",
        "with",
        "from",
        "by",
        "about",
        "into",
        "image",
        "picture",
        "photo",
        "caption",
        "based",
        "given",
        "request",
        "shape",
        "color",
        "red",
        "green",
        "blue",
        "yellow",
        "white",
        "black",
        "cat",
        "dog",
        "car",
        "house",
        "tree",
        "man",
        "woman",
        "person",
        "people",
        "table",
        "street",
        "bomb",
        "gun",
        "drug",
        "poison",
        "weapon",
        "kill",
        "steal",
        "hack",
        "attack",
        "illegal",
        "harmful",
        "safe",
        "benign",
        "money",
        "bank",
        "fraud",
        "cake",
        "kite",
        "bread",
        "chair",
        "boat",
        "lamp",
        "song",
        "garden",
        "candle",
        "shirt",
        "first",
        "then",
        "and",
        "or",
        "but",
        "if",
        "so",
        "here",
        "there",
        "please",
        "detail",
        "details",
        "answer",
        "question",
        "text",
        "item",
        "items",
        "empty",
        "blank",
        "noise",
        "one",
        "two",
        "three",
        "Image",
        "Caption",
    ]
)


def make_word_tokenizer(
    words: Sequence[str],
    special: Sequence[str] = (),
    named: dict[str, str] | None = None,
    chat_template: str | None = None,
    bos: str | None = "<bos>",
    eos: str = "<eos>",
    pad: str = "<pad>",
    unk: str = "<unk>",
    add_bos: bool = True,
):
    """A word-level fast tokenizer (whitespace + punctuation split), left-padding.

    Args:
        words: Ordinary vocabulary words, ids assigned after the special tokens.
        special: Added special tokens (image placeholders, turn markers), split without spaces.
        named: Named special tokens, e.g. ``{"image_token": "<image>"}`` (become attributes).
        chat_template: Jinja chat template stored on the tokenizer.
        bos, eos, pad, unk: The tokenizer's control tokens (``bos=None`` for none).
        add_bos: Prepend BOS when encoding, as Llama tokenizers do.

    Returns:
        A ``PreTrainedTokenizerFast``.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    base = [t for t in (pad, bos, eos, unk) if t]
    vocab: dict[str, int] = {}
    for token in [*base, *special, *words]:
        vocab.setdefault(token, len(vocab))
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token=unk))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    if bos and add_bos:
        backend.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A $B", special_tokens=[(bos, vocab[bos])]
        )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=bos,
        eos_token=eos,
        pad_token=pad,
        unk_token=unk,
        padding_side="left",
        extra_special_tokens=named or {},
    )
    tokenizer.add_special_tokens(
        {"additional_special_tokens": list(special)}, replace_extra_special_tokens=False
    )
    tokenizer.chat_template = chat_template
    return tokenizer


@dataclass(frozen=True)
class TinySizes:
    """Sizes of a tiny random VLM (every family builder takes these as keyword overrides).

    Attributes:
        d_model, n_layers, n_heads, n_kv_heads, d_mlp: The text decoder (head_dim = d_model / n_heads).
        vision_d_model, vision_layers: The vision tower (2 heads).
        image_size, patch_size: The vision tower's input size and patch size in pixels.
    """

    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 4
    n_kv_heads: int = 2
    d_mlp: int = 128
    vision_d_model: int = 32
    vision_layers: int = 2
    image_size: int = 32
    patch_size: int = 8

    @classmethod
    def parse(cls, family: str, sizes: dict[str, int]) -> TinySizes:
        """``TinySizes(**sizes)``; an unknown key raises naming the valid ones."""
        unknown = sorted(set(sizes) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(
                f"Unknown tiny-model size(s) {unknown} for family {family!r}; valid: {[f.name for f in fields(cls)]}."
            )
        return cls(**sizes)

    @property
    def d_head(self) -> int:
        return self.d_model // self.n_heads

    @property
    def n_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    def text_config(self, tokenizer: Any, **extra: Any) -> dict[str, Any]:
        """Keyword arguments of a Llama-style text config (Llama, Qwen2, Mistral, Gemma 3 take them)."""
        return {
            "hidden_size": self.d_model,
            "intermediate_size": self.d_mlp,
            "num_hidden_layers": self.n_layers,
            "num_attention_heads": self.n_heads,
            "num_key_value_heads": self.n_kv_heads,
            "head_dim": self.d_head,
            "vocab_size": len(tokenizer),
            "max_position_embeddings": 2048,
            "pad_token_id": tokenizer.pad_token_id,
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            **extra,
        }

    def vision_config(self, **extra: Any) -> dict[str, Any]:
        """Keyword arguments of a ViT-style vision config (CLIP, SigLIP, Idefics3, Pixtral take them)."""
        return {
            "hidden_size": self.vision_d_model,
            "intermediate_size": 2 * self.vision_d_model,
            "num_hidden_layers": self.vision_layers,
            "num_attention_heads": 2,
            "image_size": self.image_size,
            "patch_size": self.patch_size,
            **extra,
        }


def save_tiny(
    model: torch.nn.Module, processor: Any, out_dir: Path, *, reinit: Sequence[Tensor] = ()
) -> None:
    """Save a freshly built tiny model and its processor; ``reinit`` tensors get N(0, 0.1) first.

    ``reinit`` is for parameters HF initialises to zeros (Gemma 3's projector), which would make the
    image invisible to a random model.
    """
    with torch.no_grad():
        for tensor in reinit:
            tensor.normal_(std=0.1)
    model.eval().save_pretrained(out_dir)
    processor.save_pretrained(out_dir)


def build_tiny_vlm(family: str, out_dir: str | Path, seed: int = 0, **sizes: int) -> Path:
    """Build a tiny random VLM of ``family`` and save it (model, tokenizer, processor) to ``out_dir``.

    Args:
        family: A family with a tiny builder (:func:`tiny_families`).
        out_dir: Directory to write; created if needed.
        seed: Seed of the random weights.
        **sizes: Overrides of the builder's sizes (``d_model``, ``n_layers``, ``n_heads``, ...).

    Returns:
        ``out_dir`` as a Path.
    """
    from vlminterp.models.families import get_family

    builder = get_family(family).build_tiny if family in tiny_families() else None
    if builder is None:
        raise ValueError(f"No tiny builder for family {family!r}. Available: {tiny_families()}.")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    builder(out, **sizes)
    return out


def tiny_families() -> list[str]:
    """Registered families that have a tiny offline builder."""
    from vlminterp.models.families import family_names, get_family

    return [name for name in family_names() if get_family(name).build_tiny is not None]


def tiny_vlm_dir(family: str = "llava", seed: int = 0, **sizes: int) -> Path:
    """A cached directory holding the tiny model for (family, seed, sizes), built on first use."""
    return cached_build(
        family, [family, seed, sorted(sizes.items())], lambda out: build_tiny_vlm(family, out, seed, **sizes)
    )


def cached_build(name: str, key: Any, build: Callable[[Path], Any], salt: bytes = b"") -> Path:
    """``<tmp>/vlminterp-tiny/<name>-<hash of key and salt>``, written by ``build(staging_dir)`` on first use.

    The folder is built in a staging directory and renamed into place, so concurrent test workers
    never see a half-written checkpoint.
    """
    digest = hashlib.sha1(json.dumps(key).encode() + salt).hexdigest()[:12]
    path = Path(tempfile.gettempdir()) / "vlminterp-tiny" / f"{name}-{digest}"
    if not (path / "config.json").exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=path.parent))
        build(staging)
        try:
            staging.rename(path)
        except OSError:  # another process won the race; its copy is identical
            shutil.rmtree(staging, ignore_errors=True)
    return path
