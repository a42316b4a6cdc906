"""Greedy decoding without vlminterp: a full recompute at every step, and HF's own ``generate``.

Why a full recompute reproduces KV-cached steering: with the cache, a hook sees the whole prompt at
the first step and one new token at each later step, and what it edited stays in the cache. So by
step ``t`` the cached run has edited a fixed set of columns (:meth:`StepContext.columns`: the last
prompt column and every generated one for ``steps="all"``, ``positions="last"``); editing exactly
those columns on the whole sequence gives the same states, hence the same next token. A
:data:`Steering` installs those edits as torch hooks for the whole loop.

Example:
    >>> StepContext(prompt_len=5, length=8).columns("all", "last")
    slice(4, 8, None)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.utils.hooks import RemovableHandle

from vlminterp.prompts import PromptBatch

__all__ = ["Tokens", "StepContext", "Steering", "greedy_no_cache", "hf_generate"]

#: New tokens per row, cut before the first EOS (like ``Generation.tokens``).
Tokens = list[list[int]]


@dataclass
class StepContext:
    """Where a full-recompute loop stands; steering hooks read it to know which columns to edit.

    Attributes:
        prompt_len: Columns of the (left-padded) prompt; generated tokens start at this column.
        length: Columns of the sequence fed at the current step (prompt + tokens so far).
    """

    prompt_len: int
    length: int

    def columns(self, steps: str, positions: str) -> slice:
        """Columns a KV-cached run with ``steps`` / ``positions`` has edited by this step.

        ``positions="last"``: the prompt's last column, then each new token's; ``"all"``: every
        prompt column too. ``steps="prefill"`` stops at the prompt.

        Example:
            >>> StepContext(prompt_len=5, length=8).columns("all", "last")
            slice(4, 8, None)
            >>> StepContext(prompt_len=5, length=8).columns("prefill", "all")
            slice(0, 5, None)
        """
        if steps not in ("all", "prefill") or positions not in ("all", "last"):
            raise ValueError(f"unsupported steps={steps!r} / positions={positions!r}")
        first = 0 if positions == "all" else self.prompt_len - 1
        return slice(first, self.prompt_len if steps == "prefill" else self.length)


#: ``steering(hf_model, context) -> handles``: installs torch hooks for the whole loop; the loop
#: updates ``context`` before every step and removes the handles when it ends, error or not.
Steering = Callable[[torch.nn.Module, StepContext], list[RemovableHandle]]


def _cut(rows: Sequence[Sequence[int]], eos_token_id: int) -> Tokens:
    return [list(r[: list(r).index(eos_token_id)]) if eos_token_id in r else list(r) for r in rows]


def _placeholders_as_text(
    hf: torch.nn.Module, ids: Tensor, prompt_len: int, pad_token_id: int
) -> tuple[Tensor, list[RemovableHandle]]:
    """Ids to feed, and a hook that embeds generated image/video placeholder tokens as plain text.

    With the KV cache the image tensors go with the first step only, so a placeholder token the model
    generates is embedded like any other token. Recomputed together with the images, it would claim
    image features; so it is fed as ``pad_token_id`` and a forward hook on the input embeddings puts
    the placeholder's own embedding back in its place.
    """
    config = hf.config
    placeholders = [
        v for a in ("image_token_id", "video_token_id") if isinstance(v := getattr(config, a, None), int)
    ]
    swap = torch.zeros_like(ids, dtype=torch.bool)
    swap[:, prompt_len:] = torch.isin(ids[:, prompt_len:], torch.tensor(placeholders, device=ids.device))
    if not bool(swap.any()):
        return ids, []
    embed = hf.get_input_embeddings()
    with torch.no_grad():
        rows = embed(ids[swap])

    def restore(module: torch.nn.Module, args: Any, output: Tensor) -> Tensor:
        out = output.clone()
        out[swap] = rows.to(out.dtype)
        return out

    return ids.masked_fill(swap, pad_token_id), [embed.register_forward_hook(restore)]


def greedy_no_cache(
    hf_model: torch.nn.Module,
    batch: PromptBatch,
    max_new_tokens: int,
    eos_token_id: int,
    steering: Steering | None = None,
    follow: Sequence[int | None] | None = None,
) -> Tokens:
    """Greedy decoding that recomputes the whole sequence at every step (``use_cache=False``).

    Every step feeds prompt + tokens so far with the attention mask extended by ones, position ids
    counted over real tokens (families with 1-D positions; mRoPE families derive theirs from the
    image grid and ``mm_token_type_ids``), the image tensors, and per-token kwargs
    (``token_type_ids``, ``mm_token_type_ids``) extended with 0 (text) for generated tokens.
    Generated image placeholder tokens are embedded as text, as a cached step does. A row that has
    produced EOS is fed EOS from then on.

    Args:
        hf_model: A plain HF VLM (:func:`load_reference_model`).
        batch: The prompts (left-padded).
        max_new_tokens: Tokens to generate per row.
        eos_token_id: End of sequence.
        steering: Installs torch hooks for the whole loop (see :data:`Steering`).
        follow: ``follow[i] = j`` feeds row ``i`` the tokens chosen for row ``j`` (twin rows).

    Returns:
        New tokens per row, cut before the first EOS (like ``Generation.tokens``).

    Example:
        >>> tokens = greedy_no_cache(hf, batch, 5, model.tokenizer.eos_token_id)  # doctest: +SKIP
    """
    device = next(hf_model.parameters()).device
    n, prompt_len = batch.input_ids.shape
    leaders = torch.tensor([i if j is None else j for i, j in enumerate(follow or [None] * n)], device=device)
    ids = batch.input_ids.to(device)
    mask = batch.attention_mask.to(device)
    images = {k: v.to(device) for k, v in batch.image_inputs.items()}
    per_token = {k: v.to(device) for k, v in batch.token_inputs.items()}
    context = StepContext(prompt_len=prompt_len, length=prompt_len)
    done = torch.zeros(n, dtype=torch.bool, device=device)
    chosen: list[Tensor] = []
    handles: list[RemovableHandle] = []
    try:
        if steering is not None:
            handles = steering(hf_model, context)
        for _ in range(max_new_tokens):
            context.length = ids.shape[1]
            kwargs: dict[str, Any] = {"attention_mask": mask, "use_cache": False, **images, **per_token}
            if batch.explicit_position_ids:
                kwargs["position_ids"] = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)
            fed, restore = _placeholders_as_text(hf_model, ids, prompt_len, batch.pad_token_id)
            try:
                with torch.no_grad():
                    logits = hf_model(input_ids=fed, **kwargs).logits[:, -1]
            finally:
                for handle in restore:
                    handle.remove()
            token = logits.float().argmax(-1)[leaders]
            token = torch.where(done, torch.full_like(token, eos_token_id), token)
            chosen.append(token)
            done = done | (token == eos_token_id)
            if bool(done.all()):
                break
            ids = torch.cat([ids, token[:, None]], dim=1)
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            per_token = {k: torch.cat([v, torch.zeros_like(v[:, :1])], dim=1) for k, v in per_token.items()}
    finally:
        for handle in handles:
            handle.remove()
    return _cut(torch.stack(chosen, dim=1).tolist(), eos_token_id)


def hf_generate(
    hf_model: torch.nn.Module, batch: PromptBatch, max_new_tokens: int, eos_token_id: int, pad_token_id: int
) -> Tokens:
    """HF's own greedy ``generate`` (with its KV cache) on ``batch``, cut before the first EOS.

    Example:
        >>> hf_generate(hf, batch, 5, tok.eos_token_id, tok.pad_token_id)  # doctest: +SKIP
    """
    device = next(hf_model.parameters()).device
    kwargs = {k: v.to(device) for k, v in {**batch.image_inputs, **batch.token_inputs}.items()}
    with torch.no_grad():
        out = hf_model.generate(
            input_ids=batch.input_ids.to(device),
            attention_mask=batch.attention_mask.to(device),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            num_beams=1,
            repetition_penalty=1.0,
            eos_token_id=eos_token_id,
            pad_token_id=pad_token_id,
            **kwargs,
        )
    return _cut(out[:, batch.input_ids.shape[1] :].tolist(), eos_token_id)
