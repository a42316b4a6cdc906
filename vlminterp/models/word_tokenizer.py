"""Word-level fast tokenizers built from a word list (offline, nothing downloaded).

The shipped organism's tokenizer is one (:func:`vlminterp.organism.language.make_organism_tokenizer`),
and so are the tiny test checkpoints' (:mod:`vlminterp.testing`). Words split on whitespace and
punctuation; added special tokens (image placeholders, turn markers) split without spaces.

Example:
    >>> tok = make_word_tokenizer(["red", "car"], special=["<image>"], named={"image_token": "<image>"})
    >>> tok.convert_ids_to_tokens(tok("red <image>car")["input_ids"]), tok.image_token
    (['<bos>', 'red', '<image>', 'car'], '<image>')
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["make_word_tokenizer"]


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
