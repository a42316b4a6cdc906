"""Each steering rule written out from its math as torch hooks on the plain HF model, decoded by full recompute.

``resid_post`` is a decoder layer's output (forward hooks); ``attn.hook_z`` is the input of
``o_proj``, split by head (forward pre-hooks). The rules read their settings from the
intervention objects users build, never their hooks.

Example:
    >>> from vlminterp.interventions import CMRM
    >>> reference_cmrm(hf, CMRM(vectors, alpha=0.5), batch, 5, eos)  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from functools import partial
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor
from torch.utils.hooks import RemovableHandle

from vlminterp.prompts import Condition, PromptBatch, Sample
from vlminterp.references.greedy import StepContext, Tokens, greedy_no_cache
from vlminterp.references.hf_model import edit_layer_outputs, hf_decoder_layers, hf_forward

if TYPE_CHECKING:
    from vlminterp.interventions import CMRM, HeadAblation, SampleCMRM, ShiftDC
    from vlminterp.models.hooked_vlm import HookedVLM

__all__ = ["reference_cmrm", "reference_sample_cmrm", "reference_shiftdc", "reference_head_ablation"]


def _check_resid_post(hook: str, who: str) -> None:
    if hook != "resid_post":
        raise ValueError(f"the {who} reference steers resid_post (decoder layer outputs), not {hook!r}")


def reference_cmrm(
    hf_model: torch.nn.Module, cmrm: CMRM, batch: PromptBatch, max_new_tokens: int, eos_token_id: int
) -> Tokens:
    """Dataset-level CMRM, full recompute: ``h^l <- h^l + alpha * v^l`` on the columns it has edited.

    Reads the rule's settings (``alpha``, ``layers``, ``positions``, ``steps`` and the vectors) from
    ``cmrm``; the edit itself is a torch hook on each chosen decoder layer's output.

    Example:
        >>> from vlminterp.interventions import CMRM
        >>> reference_cmrm(hf, CMRM(vectors, alpha=0.5), batch, 5, eos)  # doctest: +SKIP
    """
    _check_resid_post(cmrm.vectors.hook, "CMRM")
    deltas = {layer: cmrm.alpha * cmrm.vectors.vectors[layer].float() for layer in cmrm.layers}

    def steer(hf: torch.nn.Module, step: StepContext) -> list[RemovableHandle]:
        def add(h: Tensor, delta: Tensor) -> Tensor:
            out = h.clone()
            cols = step.columns(cmrm.steps, cmrm.positions)
            out[:, cols] = out[:, cols] + delta.to(h.device, h.dtype)
            return out

        return edit_layer_outputs(hf, {layer: partial(add, delta=d) for layer, d in deltas.items()})

    return greedy_no_cache(hf_model, batch, max_new_tokens, eos_token_id, steering=steer)


def reference_sample_cmrm(
    hf_model: torch.nn.Module,
    model: HookedVLM,
    sample_cmrm: SampleCMRM,
    samples: Sequence[Sample],
    max_new_tokens: int,
    eos_token_id: int,
) -> Tokens:
    """Sample-level CMRM, full recompute: ``h_i <- h_i + alpha * (h_i(TEXT_ONLY) - h_i(blank))``.

    Each IMAGE prompt runs beside its TEXT_ONLY and blank-image twins, which are fed the IMAGE row's
    tokens and never edited; on every edited column (the last prompt column, and each generated
    one with ``steps="all"``) layer ``l`` adds ``alpha`` times the twins' difference at ``l`` in that
    column (left padding aligns every row's last columns).

    Args:
        hf_model: A plain HF VLM.
        model: Used only to build the prompts (processor, chat template).
        sample_cmrm: The rule's settings (``alpha``, ``layers``, ``steps``, ``blank``).
        samples: Requests with images.
        max_new_tokens: Tokens per row.
        eos_token_id: End of sequence.

    Returns:
        The IMAGE rows' tokens.

    Example:
        >>> reference_sample_cmrm(hf, model, CMRM.sample_level(alpha=0.3), samples, 5, eos)  # doctest: +SKIP
    """
    _check_resid_post(sample_cmrm.hook, "sample-level CMRM")
    n = len(samples)
    layers = range(model.cfg.n_layers) if sample_cmrm.layers == "all" else sample_cmrm.layers
    if sample_cmrm.blank == "noise":
        blank, options = Condition.NOISE, {}
    else:
        blank, options = Condition.BLANK, {"blank": sample_cmrm.blank}
    batch = PromptBatch.paired(model, samples, [Condition.IMAGE, Condition.TEXT_ONLY, blank], **options)

    def steer(hf: torch.nn.Module, step: StepContext) -> list[RemovableHandle]:
        def add(h: Tensor) -> Tensor:
            out = h.clone()
            cols = step.columns(sample_cmrm.steps, "last")
            shift = h[n : 2 * n, cols] - h[2 * n :, cols]
            out[:n, cols] = out[:n, cols] + sample_cmrm.alpha * shift
            return out

        return edit_layer_outputs(hf, dict.fromkeys(layers, add))

    follow = [None] * n + [i for _ in range(2) for i in range(n)]
    return greedy_no_cache(hf_model, batch, max_new_tokens, eos_token_id, steering=steer, follow=follow)[:n]


def _captions(
    hf_model: torch.nn.Module, model: HookedVLM, shiftdc: ShiftDC, samples: Sequence[Sample]
) -> list[Sample]:
    """``samples`` captioned as ShiftDC's ``caption_source`` says (self-captions: full recompute)."""
    source = shiftdc.caption_source
    if source == "sample":
        return list(samples)
    if callable(source):
        return [dataclasses.replace(s, caption=str(source(s))) for s in samples]
    requests = [
        dataclasses.replace(s, query=shiftdc.caption_prompt.replace("{query}", s.query), caption=None)
        for s in samples
    ]
    batch = PromptBatch.paired(model, requests, [Condition.IMAGE])
    tokens = greedy_no_cache(hf_model, batch, shiftdc.caption_max_new_tokens, model.tokenizer.eos_token_id)
    texts = model.tokenizer.batch_decode(tokens, skip_special_tokens=True)
    return [dataclasses.replace(s, caption=t.strip()) for s, t in zip(samples, texts, strict=True)]


def reference_shiftdc(
    hf_model: torch.nn.Module,
    model: HookedVLM,
    shiftdc: ShiftDC,
    samples: Sequence[Sample],
    max_new_tokens: int,
    eos_token_id: int,
) -> Tokens:
    """ShiftDC (``estimate="prefill"``), full recompute, from the math.

    Captions each image (greedy, no cache, for ``caption_source="self"``), runs the IMAGE prompts
    and their CAPTION twins once unsteered, takes the modality shift ``m^l = x^l(image) -
    x^l(twin)`` at the last prompt column and the correction ``-(m^l . s^l / |s^l|^2) s^l``, then
    generates the IMAGE prompts adding each row's correction at layer ``l`` on the columns of
    ``steps`` (the last prompt column for ``"prefill"``).

    Args:
        hf_model: A plain HF VLM.
        model: Used only to build prompts and decode captions.
        shiftdc: The rule's settings (direction, layers, steps, caption source and prompt).
        samples: Requests, every one with an image.
        max_new_tokens: Tokens per row.
        eos_token_id: End of sequence.

    Example:
        >>> reference_shiftdc(hf, model, ShiftDC(direction), samples, 5, eos)  # doctest: +SKIP
    """
    if shiftdc.estimate != "prefill":
        raise ValueError(f"the ShiftDC reference covers estimate='prefill', not {shiftdc.estimate!r}")
    if any(s.image is None for s in samples):
        raise ValueError("the ShiftDC reference needs samples with images")
    _check_resid_post(shiftdc.direction.hook, "ShiftDC")
    n = len(samples)
    captioned = _captions(hf_model, model, shiftdc, samples)
    _, states = hf_forward(
        hf_model, PromptBatch.paired(model, captioned, [Condition.IMAGE, Condition.CAPTION])
    )
    corrections = {}
    for layer in shiftdc.layers:
        x = states[layer][:, -1].float()
        m, s = x[:n] - x[n:], shiftdc.direction.vectors[layer].float().to(x.device)
        norm2 = s @ s
        coef = (m @ s) / norm2 if norm2 > 0 else torch.zeros(n, device=x.device)
        corrections[layer] = -coef[:, None] * s

    def steer(hf: torch.nn.Module, step: StepContext) -> list[RemovableHandle]:
        def add(h: Tensor, correction: Tensor) -> Tensor:
            out = h.clone()
            cols = step.columns(shiftdc.steps, "last")
            out[:, cols] = out[:, cols] + correction.to(h.device, h.dtype)[:, None]
            return out

        return edit_layer_outputs(hf, {layer: partial(add, correction=c) for layer, c in corrections.items()})

    batch = PromptBatch.paired(model, captioned, [Condition.IMAGE])
    return greedy_no_cache(hf_model, batch, max_new_tokens, eos_token_id, steering=steer)


def reference_head_ablation(
    hf_model: torch.nn.Module,
    ablation: HeadAblation,
    batch: PromptBatch,
    max_new_tokens: int,
    eos_token_id: int,
) -> Tokens:
    """Head ablation, full recompute: head ``h``'s slice of layer ``l``'s ``o_proj`` input set to 0 (or its mean).

    ``o_proj``'s input is the heads' outputs side by side (``[..., head * d_head]``); a forward
    pre-hook overwrites ``[h * d_head, (h + 1) * d_head)`` on every column the rule has edited
    (every column for ``steps="all"``, the prompt's for ``"prefill"``).

    Example:
        >>> from vlminterp.interventions import HeadAblation
        >>> reference_head_ablation(hf, HeadAblation([(1, 0)]), batch, 5, eos)  # doctest: +SKIP
    """
    if ablation.mode == "mean" and not isinstance(ablation.mean_from, Tensor):
        raise ValueError(
            "the head-ablation reference needs mean_from as a [n_layers, n_heads, d_head] tensor"
        )
    n_heads = hf_model.config.get_text_config().num_attention_heads

    def steer(hf: torch.nn.Module, step: StepContext) -> list[RemovableHandle]:
        layers = hf_decoder_layers(hf)

        def pre_hook(module: torch.nn.Module, args: tuple[Any, ...], layer: int) -> tuple[Any, ...]:
            x = args[0].clone()
            d_head = x.shape[-1] // n_heads
            cols = step.columns(ablation.steps, "all")
            for lay, head in ablation.heads:
                if lay == layer:
                    value = 0.0 if ablation.mode == "zero" else ablation.mean_from[layer, head].to(x)
                    x[:, cols, head * d_head : (head + 1) * d_head] = value
            return (x, *args[1:])

        return [
            layers[layer].self_attn.o_proj.register_forward_pre_hook(partial(pre_hook, layer=layer))
            for layer in ablation.layers
        ]

    return greedy_no_cache(hf_model, batch, max_new_tokens, eos_token_id, steering=steer)
