"""Tokenising prompt rows with the processor, and locating every token's role without searching strings.

The row's text is rendered with the model's chat template; rendering a sentinel instead shows
where the template puts the user text, so the instruction characters are known exactly. The
processor expands the image placeholder into the family's image block, and the instruction tokens
are carried over from the unexpanded tokenisation through the shared prefix and suffix
(:func:`encode_row`). Roles (:data:`ROLE_NAMES`): ``image`` placeholder tokens, ``instruction``
(the user text as the template inserted it), ``template`` (every other prompt token) and
``generated`` (tokens appended after the prompt; none here). :func:`encode_rows` encodes many rows
with one processor call and one tokenizer call (split back per row by
:mod:`~vlminterp.prompts.splitting`), equal to :func:`encode_row` row by row.

Example:
    >>> from vlminterp import HookedVLM
    >>> from vlminterp.prompts import PromptRow, Sample
    >>> model = HookedVLM.tiny("llava")
    >>> ids, masks, images, _ = encode_row(model, PromptRow.from_sample(model, Sample(id="a", query="hi"), "text_only"))
    >>> sorted(masks) == sorted(ROLE_NAMES), images is None, bool(masks["instruction"].any())
    (True, True, True)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, NamedTuple

import torch
from torch import Tensor

from vlminterp.prompts.rows import PromptRow
from vlminterp.prompts.splitting import processor_rows

if TYPE_CHECKING:
    from vlminterp.models.hooked_vlm import HookedVLM

__all__ = ["ROLE_NAMES", "encode_row", "encode_rows"]

#: The token roles of a prompt batch, each a bool ``[batch, pos]`` mask.
ROLE_NAMES = ("image", "instruction", "template", "generated")
_SENTINEL = "\u2063VLMINTERP_QUERY\u2063"
#: One encoded row: token ids ``[pos]``, role masks (bool ``[pos]``), image tensors or None, token kwargs.
Encoded = tuple[Tensor, dict[str, Tensor], dict[str, Tensor] | None, dict[str, Tensor]]


def _render(model: HookedVLM, text: str, with_image: bool) -> str:
    messages = model.family_rules.messages(text, with_image)
    return model.tokenizer.apply_chat_template(
        messages, chat_template=model.chat_template, add_generation_prompt=True, tokenize=False
    )


class _Prompt(NamedTuple):
    text: str  # the rendered prompt, before image-token expansion
    query: tuple[int, int]  # character span of the instruction in ``text``
    special: bool  # add_special_tokens: False when the template already starts with BOS


def _prompt(model: HookedVLM, row: PromptRow, frames: dict[bool, tuple[str, str]]) -> _Prompt:
    """The row's rendered prompt and where its instruction lies; ``frames`` caches the template's frame."""
    with_image = row.image is not None
    if with_image not in frames:
        prefix, _, suffix = _render(model, _SENTINEL, with_image).partition(_SENTINEL)
        frames[with_image] = (prefix, suffix)
    prefix, suffix = frames[with_image]
    full = _render(model, row.text, with_image)
    text = full[len(prefix) : len(full) - len(suffix)]
    placed = full.startswith(prefix) and full.endswith(suffix) and len(full) >= len(prefix) + len(suffix)
    if not (placed and text in row.text and text.strip() == row.text.strip()):
        raise RuntimeError(
            f"Family {model.family!r}: the chat template transforms the user text, so the instruction tokens "
            "cannot be located. Use a template that inserts the text verbatim (trimming its surrounding whitespace "
            "is fine)."
        )
    # Templates that begin with BOS already carry it: do not let the tokenizer add a second one
    # (the rule of HF's own processor.apply_chat_template).
    bos = model.tokenizer.bos_token
    return _Prompt(full, (len(prefix), len(prefix) + len(text)), not (bos and full.startswith(bos)))


def encode_row(model: HookedVLM, row: PromptRow) -> Encoded:
    """Token ids, role masks, image tensors and per-token kwargs (``token_type_ids``, ...) of one row.

    The prompt is the template rendered with the row's text, untouched: the instruction is the text
    as the template inserted it (verbatim, or trimmed by templates that trim). One processor call
    for this row alone; :func:`encode_rows` encodes many rows with one call.
    """
    prompt = _prompt(model, row, {})
    with_image = row.image is not None
    images_arg = [[row.image]] if with_image else None
    out = model.processor(
        text=[prompt.text], images=images_arg, return_tensors="pt", add_special_tokens=prompt.special
    )
    rules = model.family_rules
    ids = out["input_ids"][0]
    images = {k: out[k] for k in rules.image_kwargs if k in out} if with_image else None
    tokens = {k: out[k][0] for k in rules.token_kwargs if k in out}
    _check_outputs(model, images, tokens)
    plain = model.tokenizer(prompt.text, return_offsets_mapping=True, add_special_tokens=prompt.special)
    return (
        ids,
        _role_masks(model, ids, plain["input_ids"], plain["offset_mapping"], prompt.query),
        images,
        tokens,
    )


def encode_rows(model: HookedVLM, rows: Sequence[PromptRow]) -> list[Encoded]:
    """:func:`encode_row` of every row, with one processor call and one tokenizer call for all of them.

    Equal to encoding the rows one by one (ids, role masks, image tensors, token kwargs). Families
    whose batched image tensors cannot be split with certainty (:func:`~vlminterp.prompts.splitting.
    processor_rows` returns None) are encoded row by row.

    Example:
        >>> from vlminterp import HookedVLM
        >>> from vlminterp.prompts import PromptRow, Sample
        >>> model = HookedVLM.tiny("llava")
        >>> rows = [PromptRow.from_sample(model, Sample(id=i, query=q), "text_only") for i, q in (("a", "hi"), ("b", "a kite"))]
        >>> [len(ids) for ids, *_ in encode_rows(model, rows)] == [len(encode_row(model, r)[0]) for r in rows]
        True
    """
    frames: dict[bool, tuple[str, str]] = {}
    prompts = [_prompt(model, r, frames) for r in rows]
    encoded: list[Encoded | None] = [None] * len(rows)
    for special in sorted({p.special for p in prompts}):
        idx = [i for i, p in enumerate(prompts) if p.special == special]
        texts = [prompts[i].text for i in idx]
        processed = processor_rows(model, texts, [rows[i].image for i in idx], special)
        if processed is None:  # a layout without a certain split: one processor call per row
            for i in idx:
                encoded[i] = encode_row(model, rows[i])
            continue
        plain = model.tokenizer(texts, return_offsets_mapping=True, add_special_tokens=special)
        for j, (i, (ids, images, tokens)) in enumerate(zip(idx, processed, strict=True)):
            _check_outputs(model, images, tokens)
            masks = _role_masks(
                model, ids, plain["input_ids"][j], plain["offset_mapping"][j], prompts[i].query
            )
            encoded[i] = (ids, masks, images, tokens)
    return [e for e in encoded if e is not None]


def _check_outputs(model: HookedVLM, images: dict[str, Tensor] | None, tokens: dict[str, Tensor]) -> None:
    rules = model.family_rules
    missing = [k for k in rules.token_kwargs if k not in tokens]
    if images is not None:
        missing += [k for k in rules.image_kwargs if k not in images]
    if missing:
        raise RuntimeError(
            f"Family {model.family!r}: the processor returned no {missing}; the model needs them. Load the "
            "checkpoint's own processor (HookedVLM.from_pretrained does)."
        )


def _role_masks(
    model: HookedVLM,
    ids: Tensor,
    plain_ids: Sequence[int],
    offsets: Sequence[tuple[int, int]],
    query: tuple[int, int],
) -> dict[str, Tensor]:
    """Role masks of the processor's ``ids`` from the unexpanded tokenisation and the query's characters."""
    q0, q1 = query
    instruction_plain = [(b > a) and a < q1 and b > q0 for a, b in offsets]
    instruction = torch.zeros(len(ids), dtype=torch.bool)
    instruction[_expanded_positions(ids.tolist(), list(plain_ids), instruction_plain, model)] = True
    is_image = ids == model.image_token_id
    return {
        "image": is_image,
        "instruction": instruction,
        "template": ~is_image & ~instruction,
        "generated": torch.zeros_like(is_image),
    }


def _expanded_positions(
    expanded: list[int], plain: list[int], wanted: list[bool], model: HookedVLM
) -> list[int]:
    """Positions in the processor's ids of the ``wanted`` tokens of the unexpanded prompt.

    The processor replaces the image placeholder with the family's image block (a run of image
    tokens, or image tokens between row / break / boundary markers), so the two id lists share a
    prefix and a suffix. Every wanted token must lie in them.
    """
    p = 0
    while p < min(len(plain), len(expanded)) and plain[p] == expanded[p]:
        p += 1
    s = 0
    while s < min(len(plain), len(expanded)) - p and plain[-1 - s] == expanded[-1 - s]:
        s += 1
    shift = len(expanded) - len(plain)
    out = []
    for i, w in enumerate(wanted):
        if not w:
            continue
        if i < p:
            out.append(i)
        elif i >= len(plain) - s:
            out.append(i + shift)
        else:
            raise RuntimeError(
                f"Family {model.family!r}: the processor changed the prompt's text tokens (token {i}, "
                f"{model.tokenizer.convert_ids_to_tokens(plain[i])!r}), not only the image placeholder; role masks "
                "cannot be located. Check the family's chat template and processor."
            )
    return out
