"""Tiny random VLMs for tests: the builder registry, sizes, tokenizers and the on-disk cache.

A builder writes a directory with ``config.json``, safetensors weights, tokenizer and processor
files, so ``HookedVLM.from_pretrained(directory)`` exercises exactly the code path of a real
checkpoint. Weights are random and deterministic for a seed; tokenizers are word-level and built
from :data:`TINY_WORDS`, so nothing is downloaded. Some builders (llava, qwen2_5_vl, gemma3) can
instead take a real tokenizer folder (``tokenizer.json`` + ``tokenizer_config.json``, e.g.
Llama-2's), so that tokenization, special tokens and vocabulary size are those of the real
checkpoint. One builder per family is registered with :func:`register_builder` by the modules of
:mod:`vlminterp.testing.builders`.

Example:
    >>> import tempfile
    >>> from vlminterp.testing import build_tiny_vlm
    >>> path = build_tiny_vlm("llava", tempfile.mkdtemp(), seed=0)
    >>> sorted(p.name for p in path.iterdir())[:2]
    ['chat_template.jinja', 'config.json']
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from vlminterp.models.families import get_family
from vlminterp.models.word_tokenizer import make_word_tokenizer

__all__ = [
    "register_builder",
    "tiny_families",
    "build_tiny_vlm",
    "tiny_vlm_dir",
    "cached_build",
    "tiny_tokenizer",
    "save_tiny",
    "TinySizes",
    "TINY_WORDS",
]

#: Words of the tiny models' vocabulary: enough English for test prompts and dataset queries.
TINY_WORDS: tuple[str, ...] = tuple(
    """
    . , ? ! : ; ' " - ( ) 0 1 2 3 4 5 6 7 8 9 a an the this that these those it its is are was were
    be been am i you he she we they me my your what how why where when who which can could would
    should will do does did not no yes sure sorry help tell show explain describe make build create
    get buy use find write give teach draw list steps to of in on at for with from by about into
    image picture photo caption based given request shape color red green blue yellow white black
    cat dog car house tree man woman person people table street bomb gun drug poison weapon kill
    steal hack attack illegal harmful safe benign money bank fraud cake kite bread chair boat lamp
    song garden candle shirt first then and or but if so here there please detail details answer
    question text item items empty blank noise one two three Image Caption
    """.split()
)

#: family name -> builder ``f(out_dir, **sizes)`` (and ``tokenizer_dir=`` where supported).
_BUILDERS: dict[str, Callable[..., None]] = {}


def register_builder(family: str, build: Callable[..., None]) -> Callable[..., None]:
    """Register ``build`` as the tiny builder of the registered family ``family``; returns ``build``.

    ``build(out_dir, **sizes)`` writes a tiny random checkpoint of the family into ``out_dir``
    (torch is seeded before the call; the builder validates ``sizes`` with :meth:`TinySizes.parse`).
    A builder that also takes ``tokenizer_dir`` can build on a real tokenizer (:func:`tiny_tokenizer`).

    Raises:
        ValueError: ``family`` is not a registered family (the message lists them).
    """
    _BUILDERS[get_family(family).name] = build
    return build


def tiny_families() -> list[str]:
    """Registered families that have a tiny offline builder, sorted."""
    return sorted(_BUILDERS)


def tiny_tokenizer(
    words: Sequence[str],
    special: Sequence[str] = (),
    named: dict[str, str] | None = None,
    chat_template: str | None = None,
    tokenizer_dir: str | Path | None = None,
    **control: Any,
):
    """The tokenizer of a tiny build: word-level, or the real one in ``tokenizer_dir``.

    Without ``tokenizer_dir`` this is :func:`make_word_tokenizer` with the same arguments. With it,
    the real tokenizer is prepared the way the family's checkpoints ship it: the ``special`` tokens
    its vocabulary lacks are appended in order, then ``control["pad"]`` when it has no pad token
    (llava-hf appends ``<image>`` = 32000 and ``<pad>`` = 32001 to Llama-2's 32,000 pieces), the
    ``named`` tokens become attributes (``tokenizer.image_token``) and ``chat_template`` replaces the
    bundled one. ``words`` and the other ``control`` tokens apply to the word-level tokenizer only.

    Args:
        words, special, named, chat_template: As in :func:`make_word_tokenizer`.
        tokenizer_dir: A folder with a real ``tokenizer.json`` and ``tokenizer_config.json``.
        **control: ``bos``, ``eos``, ``pad``, ``unk``, ``add_bos`` of :func:`make_word_tokenizer`.

    Returns:
        A fast tokenizer.

    Example:
        >>> tok = tiny_tokenizer(["red", "car"], special=["<image>"], named={"image_token": "<image>"})
        >>> tok.convert_ids_to_tokens(tok("red <image> car")["input_ids"])
        ['<bos>', 'red', '<image>', 'car']
    """
    if tokenizer_dir is None:
        return make_word_tokenizer(words, special, named, chat_template, **control)
    from transformers import PreTrainedTokenizerFast

    # The tokenizer.json pipeline exactly as in the file, as transformers loads llava-hf checkpoints
    # (AutoTokenizer's LlamaTokenizer would swap Llama's normalizer for its own pre-tokenizer).
    tokenizer = PreTrainedTokenizerFast.from_pretrained(str(tokenizer_dir), extra_special_tokens=named or {})
    vocab = tokenizer.get_vocab()
    missing = [t for t in special if t not in vocab]
    tokenizer.add_special_tokens({"additional_special_tokens": missing}, replace_extra_special_tokens=False)
    if tokenizer.pad_token is None:
        tokenizer.add_special_tokens({"pad_token": control.get("pad", "<pad>")})
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


def build_tiny_vlm(
    family: str,
    out_dir: str | Path,
    seed: int = 0,
    tokenizer_dir: str | Path | None = None,
    **sizes: int,
) -> Path:
    """Build a tiny random VLM of ``family`` and save it (model, tokenizer, processor) to ``out_dir``.

    Args:
        family: A family with a tiny builder (:func:`tiny_families`).
        out_dir: Directory to write; created if needed.
        seed: Seed of the random weights.
        tokenizer_dir: A real tokenizer folder to use instead of the word-level tokenizer (families
            whose builder takes ``tokenizer_dir``: llava, qwen2_5_vl, gemma3). The vocabulary then
            has the real size: keep ``d_model`` small.
        **sizes: Overrides of the builder's sizes (``d_model``, ``n_layers``, ``n_heads``, ...).

    Returns:
        ``out_dir`` as a Path.

    Raises:
        ValueError: no tiny builder for ``family``, or its builder takes no ``tokenizer_dir``.
    """
    if family not in _BUILDERS:
        raise ValueError(f"No tiny builder for family {family!r}. Available: {tiny_families()}.")
    builder = _BUILDERS[family]
    options: dict[str, Any] = {}
    if tokenizer_dir is not None:
        if not _takes_tokenizer(builder):
            able = [f for f in tiny_families() if _takes_tokenizer(_BUILDERS[f])]
            raise ValueError(
                f"The tiny builder of {family!r} cannot use a real tokenizer; families that can: {able}."
            )
        options["tokenizer_dir"] = Path(tokenizer_dir)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    builder(out, **options, **sizes)
    return out


def _takes_tokenizer(builder: Callable[..., None]) -> bool:
    return "tokenizer_dir" in inspect.signature(builder).parameters


def tiny_vlm_dir(
    family: str = "llava", seed: int = 0, tokenizer_dir: str | Path | None = None, **sizes: int
) -> Path:
    """A cached directory holding the tiny model for (family, seed, tokenizer, sizes), built on first use.

    A real tokenizer is keyed by the content of its folder, not its path.

    Example:
        >>> from vlminterp import HookedVLM
        >>> path = tiny_vlm_dir("llava", tokenizer_dir="../shared/tokenizers/llama2", d_model=16)  # doctest: +SKIP
        >>> HookedVLM.from_pretrained(path).tokenizer.convert_tokens_to_ids("<image>")  # doctest: +SKIP
        32000
    """
    salt = _folder_digest(Path(tokenizer_dir)) if tokenizer_dir is not None else b""
    return cached_build(
        family,
        [family, seed, sorted(sizes.items())],
        lambda out: build_tiny_vlm(family, out, seed, tokenizer_dir, **sizes),
        salt=salt,
    )


def _folder_digest(folder: Path) -> bytes:
    """A digest of the names and contents of the files in ``folder``."""
    if not folder.is_dir():
        raise FileNotFoundError(f"Tokenizer folder {str(folder)!r} does not exist.")
    digest = hashlib.sha1()
    for path in sorted(p for p in folder.iterdir() if p.is_file()):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.digest()


def cached_build(name: str, key: Any, build: Callable[[Path], Any], salt: bytes = b"") -> Path:
    """``<tmp>/vlminterp-tiny/<name>-<hash of key and salt>``, written by ``build(staging_dir)`` on first use.

    The folder is built in a staging directory and renamed into place, so concurrent test workers
    never see a half-written checkpoint.
    """
    digest = hashlib.sha1(json.dumps(key).encode() + salt).hexdigest()[:12]
    path = Path(tempfile.gettempdir()) / "vlminterp-tiny" / f"{name}-{digest}"
    if not (path / "config.json").exists():
        staged_build(path, build)
    return path


def staged_build(path: Path, build: Callable[[Path], Any]) -> Path:
    """``build(staging)`` in a new folder beside ``path``, renamed to ``path`` once it succeeds.

    A build that raises leaves nothing behind, so a rerun starts clean. ``path`` may be missing or
    empty; if another process renamed its own copy there first, this one is dropped.

    Example:
        >>> import tempfile
        >>> out = Path(tempfile.mkdtemp()) / "ckpt"
        >>> staged_build(out, lambda d: (d / "config.json").write_text("{}")) == out, sorted(out.parent.iterdir()) == [out]
        (True, True)
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}-", dir=path.parent))
    try:
        build(staging)
        with contextlib.suppress(OSError):  # another process won the race; its copy is identical
            staging.rename(path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return path
