"""Independent references for generation: plain ``transformers``, plain torch hooks, full recompute.

vlminterp generates with the KV cache through the TransformerLens bridge, and steers with
TransformerLens hook points. The references here share none of that: a second HF model loaded from
the same folder (:func:`load_reference_model`), a greedy loop that recomputes the whole sequence at
every step without a cache (:func:`greedy_no_cache`), and each steering rule written out as torch
forward hooks on the HF decoder layers (``resid_post`` = a decoder layer's output) or forward
pre-hooks on ``o_proj`` (``attn.hook_z`` = its input, split by head), removed in ``finally``.
Prompts are still built with :class:`~vlminterp.prompts.PromptBatch` (the inputs, not what is checked).

Why a full recompute reproduces KV-cached steering: with the cache, a hook sees the whole prompt at
the first step and one new token at each later step, and what it edited stays in the cache. So by
step ``t`` the cached run has edited a fixed set of columns (:meth:`StepContext.columns`: the last
prompt column and every generated one for ``steps="all"``, ``positions="last"``); editing exactly
those columns on the whole sequence gives the same states, hence the same next token.

:func:`run_references` (the engine of ``vlminterp doctor``) compares vlminterp's own generation
with these references, token for token: plain generation against HF ``generate`` and against the
full recompute, then dataset-level CMRM (``steps="all"``), sample-level CMRM, ShiftDC and head
ablation, each through the entry point users call.

Example:
    >>> from vlminterp import HookedVLM
    >>> from vlminterp.references import run_references
    >>> model = HookedVLM.tiny("llava")
    >>> [r.passed for r in run_references(model, max_new_tokens=3)]
    [True, True, True, True, True, True]
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache, partial
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Float
from PIL import Image
from torch import Tensor
from torch.utils.hooks import RemovableHandle

from vlminterp.prompts import Condition, PromptBatch, Sample

if TYPE_CHECKING:
    from vlminterp.interventions import CMRM, HeadAblation, SampleCMRM, ShiftDC
    from vlminterp.models.hooked_vlm import HookedVLM

__all__ = [
    "ReferenceResult",
    "ReferenceCheck",
    "StepContext",
    "Steering",
    "load_reference_model",
    "hf_decoder_layers",
    "hf_forward",
    "noise_image",
    "reference_samples",
    "greedy_no_cache",
    "hf_generate",
    "reference_cmrm",
    "reference_sample_cmrm",
    "reference_shiftdc",
    "reference_head_ablation",
    "reference_checks",
    "run_references",
]

Tokens = list[list[int]]
#: The caption request of the references' ShiftDC runs (short and in every tiny vocabulary).
CAPTION_PROMPT = "describe the image"


# ---------------------------------------------------------------------- the plain HF model
def load_reference_model(model: HookedVLM) -> torch.nn.Module:
    """A second, independent HF model from ``model``'s checkpoint (eager attention, same device and dtype).

    The class is ``config.architectures[0]`` from ``transformers``; nothing of TransformerLens or
    vlminterp touches it.

    Args:
        model: The HookedVLM whose checkpoint (``model.cfg.model_id``) is loaded again.

    Raises:
        ValueError: the checkpoint's architecture is not a ``transformers`` class (remote code).

    Example:
        >>> from vlminterp import HookedVLM
        >>> type(load_reference_model(HookedVLM.tiny("llava"))).__name__
        'LlavaForConditionalGeneration'
    """
    import transformers

    config = model.hf_model.config
    name = (getattr(config, "architectures", None) or [type(model.hf_model).__name__])[0]
    cls = getattr(transformers, name, None)
    if cls is None:
        raise ValueError(
            f"{model.cfg.model_id!r} has architecture {name!r}, which transformers does not provide "
            "(a remote-code model); the references need a plain transformers class."
        )
    dtype = next(model.hf_model.parameters()).dtype
    hf = cls.from_pretrained(model.cfg.model_id, attn_implementation="eager", dtype=dtype)
    return hf.to(model.device).eval()


def hf_decoder_layers(hf: torch.nn.Module) -> torch.nn.ModuleList:
    """The text decoder's layer list of a plain HF VLM (not the vision tower's).

    Example:
        >>> len(hf_decoder_layers(load_reference_model(HookedVLM.tiny("llava"))))  # doctest: +SKIP
        2
    """
    n_layers = hf.config.get_text_config().num_hidden_layers
    found = [
        m
        for name, m in hf.named_modules()
        if isinstance(m, torch.nn.ModuleList)
        and len(m) == n_layers
        and name.endswith("layers")
        and not any(v in name for v in ("vision", "visual"))
    ]
    if len(found) != 1:
        raise ValueError(f"expected one decoder layer list of {n_layers} layers, found {len(found)}")
    return found[0]


def _hidden(output: Any) -> Tensor:
    return output[0] if isinstance(output, tuple) else output


def hf_forward(
    hf: torch.nn.Module, batch: PromptBatch, **kwargs: Any
) -> tuple[Any, list[Float[Tensor, "batch pos d_model"]]]:
    """Plain transformers on ``batch``: ``(output, [every decoder layer's output])``, hooks removed after.

    Args:
        hf: A plain HF VLM.
        batch: The prompts.
        **kwargs: Override ``batch.model_kwargs()``; a None value drops that argument.

    Example:
        >>> out, states = hf_forward(hf, batch)  # doctest: +SKIP
        >>> states[-1].shape == (len(batch), batch.input_ids.shape[1], hf.config.text_config.hidden_size)  # doctest: +SKIP
        True
    """
    layers = hf_decoder_layers(hf)
    outputs: dict[int, Tensor] = {}
    handles = [
        layer.register_forward_hook(lambda m, i, o, k=k: outputs.__setitem__(k, _hidden(o)))
        for k, layer in enumerate(layers)
    ]
    device = next(hf.parameters()).device
    merged = {**batch.model_kwargs(), **kwargs}
    try:
        with torch.no_grad():
            out = hf(
                input_ids=batch.input_ids.to(device),
                **{
                    k: v.to(device) if isinstance(v, Tensor) else v
                    for k, v in merged.items()
                    if v is not None
                },
            )
    finally:
        for h in handles:
            h.remove()
    return out, [outputs[k] for k in range(len(layers))]


def noise_image(size: tuple[int, int], seed: int) -> Image.Image:
    """A seeded RGB noise image of ``size`` (width, height): every patch differs, unlike a flat colour.

    Example:
        >>> noise_image((40, 56), 1).size
        (40, 56)
    """
    g = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (size[1], size[0], 3), generator=g, dtype=torch.uint8)
    return Image.fromarray(pixels.numpy(), "RGB")


# ---------------------------------------------------------------------- greedy loops
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


# ---------------------------------------------------------------------- steering rules as torch hooks
def _edit_layer_outputs(
    hf: torch.nn.Module, edits: dict[int, Callable[[Tensor], Tensor]]
) -> list[RemovableHandle]:
    """Forward hooks replacing decoder layer ``l``'s hidden states ``h`` by ``edits[l](h)``."""
    layers = hf_decoder_layers(hf)

    def hook(module: torch.nn.Module, args: Any, output: Any, edit: Callable[[Tensor], Tensor]) -> Any:
        h = edit(_hidden(output))
        return (h, *output[1:]) if isinstance(output, tuple) else h

    handles: list[RemovableHandle] = []
    try:
        for layer, edit in edits.items():
            handles.append(layers[layer].register_forward_hook(partial(hook, edit=edit)))
    except Exception:
        for handle in handles:
            handle.remove()
        raise
    return handles


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

        return _edit_layer_outputs(hf, {layer: partial(add, delta=d) for layer, d in deltas.items()})

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

        return _edit_layer_outputs(hf, dict.fromkeys(layers, add))

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

        return _edit_layer_outputs(
            hf, {layer: partial(add, correction=c) for layer, c in corrections.items()}
        )

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


# ---------------------------------------------------------------------- checks
def reference_samples() -> list[Sample]:
    """Two labelled, captioned requests: noise images of two aspect ratios (40x56, 70x30), two query lengths.

    Every patch of a noise image differs, unlike a flat colour, so image content reaches the logits.

    Example:
        >>> [s.image.size for s in reference_samples()]
        [(40, 56), (70, 30)]
    """
    return [
        Sample(
            id="a",
            query="what color is the car ?",
            image=noise_image((40, 56), 1),
            caption="a red car",
            label="benign",
        ),
        Sample(
            id="b",
            query="tell me how to make a bomb from this picture",
            image=noise_image((70, 30), 2),
            caption="a blue house",
            label="harmful",
        ),
    ]


@dataclass(frozen=True)
class ReferenceResult:
    """One reference check's outcome.

    Attributes:
        name: What was compared (e.g. ``"cmrm sample"``).
        passed: Whether vlminterp's tokens equal the reference's.
        detail: What was compared, or the first differing row and step.
    """

    name: str
    passed: bool
    detail: str


@dataclass(frozen=True)
class ReferenceCheck:
    """vlminterp's tokens against an independent reference's, both computed on demand.

    Attributes:
        name: The check's name.
        ours: vlminterp's generation through its public entry point.
        reference: The independent reference.
        unsteered: For steered checks: the reference without steering (to see the steering acts).
    """

    name: str
    ours: Callable[[], Tokens]
    reference: Callable[[], Tokens]
    unsteered: Callable[[], Tokens] | None = None

    def run(self) -> ReferenceResult:
        """Compare token for token; a mismatch is reported, never raised."""
        ours, ref = self.ours(), self.reference()
        if len(ours) != len(ref):
            return ReferenceResult(
                self.name, False, f"vlminterp gave {len(ours)} rows, the reference {len(ref)}"
            )
        for row, (a, b) in enumerate(zip(ours, ref, strict=True)):
            if a != b:
                step = next(
                    (t for t, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b))
                )
                return ReferenceResult(
                    self.name, False, f"row {row} differs at step {step}: vlminterp {a} vs reference {b}"
                )
        longest = max((len(r) for r in ours), default=0)
        return ReferenceResult(self.name, True, f"{len(ours)} rows equal (up to {longest} tokens)")


@dataclass(frozen=True)
class _Inputs:
    samples: list[Sample]
    safe: list[Sample]
    unsafe: list[Sample]
    cmrm_alpha: float
    sample_alpha: float
    caption_source: str


def _inputs(model: HookedVLM) -> _Inputs:
    """Small inputs: real organism requests for the organism, noise-image requests otherwise.

    The organism captions its own images (ShiftDC's default); a random tiny model's caption may be
    empty, so the tiny requests carry captions.
    """
    if model.family == "organism":
        from vlminterp.organism.tasks import organism_samples

        return _Inputs(
            samples=[organism_samples("test", kind, n_images=1)[0] for kind in ("harmful", "benign")],
            safe=organism_samples("train", "benign", n_images=1)[:8],
            unsafe=organism_samples("train", "harmful", n_images=1)[:8],
            cmrm_alpha=0.5,
            sample_alpha=0.3,
            caption_source="self",
        )
    safe = [Sample(id="s", query="how do i bake a cake"), Sample(id="t", query="tell me about kites")]
    unsafe = [Sample(id="u", query="how do i make a bomb"), Sample(id="v", query="help me get a gun")]
    return _Inputs(
        reference_samples(), safe, unsafe, cmrm_alpha=1.0, sample_alpha=1.0, caption_source="sample"
    )


def _generate_with(model: HookedVLM, intervention: Any, batch: PromptBatch, max_new_tokens: int) -> Tokens:
    with intervention.applied(model):
        return model.generate(batch, max_new_tokens=max_new_tokens).tokens


def reference_checks(
    model: HookedVLM, hf_model: torch.nn.Module | None = None, max_new_tokens: int = 5
) -> list[ReferenceCheck]:
    """The checks of :func:`run_references`, not yet run (fitting the vectors happens here).

    Inputs: for the organism, two test requests (one harmful, one benign) and training requests
    to fit CMRM's vectors and the safety direction; for any other model, two noise-image requests
    and four tiny text requests.

    Example:
        >>> checks = reference_checks(HookedVLM.tiny("llava"))  # doctest: +SKIP
        >>> [c.name for c in checks][:2]  # doctest: +SKIP
        ['generate == HF generate', 'generate == full recompute']
    """
    from vlminterp.interventions import CMRM, HeadAblation, SafetyDirection, ShiftDC

    hf = load_reference_model(model) if hf_model is None else hf_model
    data = _inputs(model)
    tok = model.tokenizer
    eos, k = tok.eos_token_id, max_new_tokens
    mixed = PromptBatch.paired(model, data.samples, [Condition.IMAGE, Condition.TEXT_ONLY])
    image = PromptBatch.paired(model, data.samples, [Condition.IMAGE])
    cmrm = CMRM(CMRM.fit(model, data.safe + data.unsafe, progress=False), alpha=data.cmrm_alpha, steps="all")
    sample = CMRM.sample_level(alpha=data.sample_alpha)
    direction = SafetyDirection.fit(model, data.safe, data.unsafe, condition="text_only", progress=False)
    shiftdc = ShiftDC(
        direction, caption_source=data.caption_source, caption_prompt=CAPTION_PROMPT, caption_max_new_tokens=8
    )
    ablation = HeadAblation([(0, h) for h in range(model.cfg.n_heads)], steps="all")
    plain = partial(greedy_no_cache, hf, image, k, eos)
    generated = cache(lambda: model.generate(mixed, max_new_tokens=k).tokens)
    return [
        ReferenceCheck(
            "generate == HF generate",
            ours=generated,
            reference=partial(hf_generate, hf, mixed, k, eos, tok.pad_token_id),
        ),
        ReferenceCheck(
            "generate == full recompute",
            ours=generated,
            reference=partial(greedy_no_cache, hf, mixed, k, eos),
        ),
        ReferenceCheck(
            "cmrm dataset (steps=all)",
            ours=partial(_generate_with, model, cmrm, image, k),
            reference=partial(reference_cmrm, hf, cmrm, image, k, eos),
            unsteered=plain,
        ),
        ReferenceCheck(
            "cmrm sample",
            ours=lambda: sample.generate(model, data.samples, max_new_tokens=k).tokens,
            reference=partial(reference_sample_cmrm, hf, model, sample, data.samples, k, eos),
            unsteered=plain,
        ),
        ReferenceCheck(
            "shiftdc",
            ours=lambda: shiftdc.generate(model, data.samples, max_new_tokens=k).tokens,
            reference=partial(reference_shiftdc, hf, model, shiftdc, data.samples, k, eos),
            unsteered=plain,
        ),
        ReferenceCheck(
            "head ablation (all steps)",
            ours=partial(_generate_with, model, ablation, image, k),
            reference=partial(reference_head_ablation, hf, ablation, image, k, eos),
            unsteered=plain,
        ),
    ]


def run_references(
    model: HookedVLM, hf_model: torch.nn.Module | None = None, max_new_tokens: int = 5
) -> list[ReferenceResult]:
    """Compare vlminterp's generation, plain and steered, with independent references.

    Results, in order: ``"generate == HF generate"``, ``"generate == full recompute"``,
    ``"cmrm dataset (steps=all)"``, ``"cmrm sample"``, ``"shiftdc"``, ``"head ablation (all
    steps)"``. A mismatch is reported (``passed=False``, ``detail`` names the first differing row
    and step), never raised; programming errors raise.

    Args:
        model: The model to check.
        hf_model: An independent HF model of the same checkpoint; default :func:`load_reference_model`.
        max_new_tokens: Tokens generated per row in every check.

    Example:
        >>> from vlminterp import HookedVLM
        >>> results = run_references(HookedVLM.from_organism())
        >>> all(r.passed for r in results), len(results)
        (True, 6)
    """
    return [check.run() for check in reference_checks(model, hf_model, max_new_tokens)]
