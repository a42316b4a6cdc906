"""Tokenising one prompt row with the processor, and locating every token's role without searching strings.

The row's text is rendered with the model's chat template; rendering a sentinel instead shows
where the template puts the user text, so the instruction characters are known exactly. The
processor expands the image placeholder into the family's image block, and the instruction tokens
are carried over from the unexpanded tokenisation through the shared prefix and suffix
(:func:`encode_row`). Roles (:data:`ROLE_NAMES`): ``image`` placeholder tokens, ``instruction``
(the user text as the template inserted it), ``template`` (every other prompt token) and
``generated`` (tokens appended after the prompt; none here).

Example:
    >>> from vlminterp import HookedVLM
    >>> from vlminterp.prompts import PromptRow, Sample
    >>> model = HookedVLM.tiny("llava")
    >>> ids, masks, images, _ = encode_row(model, PromptRow.from_sample(model, Sample(id="a", query="hi"), "text_only"))
    >>> sorted(masks) == sorted(ROLE_NAMES), images is None, bool(masks["instruction"].any())
    (True, True, True)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from vlminterp.prompts.rows import PromptRow

if TYPE_CHECKING:
    from vlminterp.models.hooked_vlm import HookedVLM

__all__ = ["ROLE_NAMES", "encode_row"]

#: The token roles of a prompt batch, each a bool ``[batch, pos]`` mask.
ROLE_NAMES = ("image", "instruction", "template", "generated")
_SENTINEL = "\u2063VLMINTERP_QUERY\u2063"


def _render(model: HookedVLM, text: str, with_image: bool) -> str:
    messages = model.family_rules.messages(text, with_image)
    return model.tokenizer.apply_chat_template(
        messages, chat_template=model.chat_template, add_generation_prompt=True, tokenize=False
    )


def encode_row(
    model: HookedVLM, row: PromptRow
) -> tuple[Tensor, dict[str, Tensor], dict[str, Tensor] | None, dict[str, Tensor]]:
    """Token ids, role masks, image tensors and per-token kwargs (``token_type_ids``, ...) of one row.

    The prompt is the template rendered with the row's text, untouched: the instruction is the text
    as the template inserted it (verbatim, or trimmed by templates that trim).
    """
    rules = model.family_rules
    with_image = row.image is not None
    prefix, _, suffix = _render(model, _SENTINEL, with_image).partition(_SENTINEL)
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
    special = {"add_special_tokens": not (bos and full.startswith(bos))}
    images_arg = [[row.image]] if with_image else None
    proc_out = model.processor(text=[full], images=images_arg, return_tensors="pt", **special)
    ids = proc_out["input_ids"][0]
    images = {k: proc_out[k] for k in rules.image_kwargs if k in proc_out} if with_image else None
    tokens = {k: proc_out[k][0] for k in rules.token_kwargs if k in proc_out}
    missing = [k for k in rules.token_kwargs if k not in tokens]
    if with_image:
        missing += [k for k in rules.image_kwargs if k not in proc_out]
    if missing:
        raise RuntimeError(
            f"Family {model.family!r}: the processor returned no {missing}; the model needs them. Load the "
            "checkpoint's own processor (HookedVLM.from_pretrained does)."
        )

    plain = model.tokenizer(full, return_offsets_mapping=True, **special)
    plain_ids, offsets = list(plain["input_ids"]), plain["offset_mapping"]
    q0, q1 = len(prefix), len(prefix) + len(text)
    instruction_plain = [(b > a) and a < q1 and b > q0 for a, b in offsets]
    instruction = torch.zeros(len(ids), dtype=torch.bool)
    instruction[_expanded_positions(ids.tolist(), plain_ids, instruction_plain, model)] = True
    is_image = ids == model.image_token_id
    masks = {
        "image": is_image,
        "instruction": instruction,
        "template": ~is_image & ~instruction,
        "generated": torch.zeros_like(is_image),
    }
    return ids, masks, images, tokens


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
