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
from pathlib import Path

import torch

__all__ = ["make_word_tokenizer", "build_tiny_vlm", "tiny_vlm_dir", "TINY_WORDS", "TINY_BUILDERS"]

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

_LLAVA_SPECIAL = ("<image>",)


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


def _build_llava(
    out_dir: Path,
    seed: int,
    d_model: int = 64,
    n_layers: int = 2,
    n_heads: int = 4,
    n_kv_heads: int = 2,
    d_mlp: int = 128,
    vision_d_model: int = 32,
    vision_layers: int = 2,
    image_size: int = 32,
    patch_size: int = 8,
    words: Sequence[str] = TINY_WORDS,
) -> None:
    from transformers import (
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    from vlminterp.models.families import LLAVA_15_CHAT_TEMPLATE

    tokenizer = make_word_tokenizer(
        [*words, "USER", "ASSISTANT"],
        special=_LLAVA_SPECIAL,
        named={"image_token": "<image>"},
        chat_template=LLAVA_15_CHAT_TEMPLATE,
    )
    image_id = tokenizer.convert_tokens_to_ids("<image>")
    n_patches = (image_size // patch_size) ** 2
    text = LlamaConfig(
        hidden_size=d_model,
        intermediate_size=d_mlp,
        num_hidden_layers=n_layers,
        num_attention_heads=n_heads,
        num_key_value_heads=n_kv_heads,
        vocab_size=len(tokenizer),
        max_position_embeddings=2048,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    vision = CLIPVisionConfig(
        hidden_size=vision_d_model,
        intermediate_size=2 * vision_d_model,
        num_hidden_layers=vision_layers,
        num_attention_heads=2,
        image_size=image_size,
        patch_size=patch_size,
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=image_id,
        image_seq_length=n_patches,
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config).eval()
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessorPil(
            size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
        ),
        tokenizer=tokenizer,
        patch_size=patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=LLAVA_15_CHAT_TEMPLATE,
    )
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)


#: family name -> builder(out_dir, seed, **sizes)
TINY_BUILDERS: dict[str, Callable[..., None]] = {"llava": _build_llava}


def build_tiny_vlm(family: str, out_dir: str | Path, seed: int = 0, **sizes: int) -> Path:
    """Build a tiny random VLM of ``family`` and save it (model, tokenizer, processor) to ``out_dir``.

    Args:
        family: A family with a tiny builder (``TINY_BUILDERS``).
        out_dir: Directory to write; created if needed.
        seed: Seed of the random weights.
        **sizes: Overrides of the builder's sizes (``d_model``, ``n_layers``, ``n_heads``, ...).

    Returns:
        ``out_dir`` as a Path.
    """
    if family not in TINY_BUILDERS:
        raise ValueError(f"No tiny builder for family {family!r}. Available: {sorted(TINY_BUILDERS)}.")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    TINY_BUILDERS[family](out, seed, **sizes)
    return out


def tiny_vlm_dir(family: str = "llava", seed: int = 0, **sizes: int) -> Path:
    """A cached directory holding the tiny model for (family, seed, sizes), built on first use."""
    key = hashlib.sha1(json.dumps([family, seed, sorted(sizes.items())]).encode()).hexdigest()[:12]
    path = Path(tempfile.gettempdir()) / "vlminterp-tiny" / f"{family}-{key}"
    if not (path / "config.json").exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{family}-", dir=path.parent))
        build_tiny_vlm(family, staging, seed, **sizes)
        try:
            staging.rename(path)
        except OSError:  # another process won the race; its copy is identical
            shutil.rmtree(staging, ignore_errors=True)
    return path
