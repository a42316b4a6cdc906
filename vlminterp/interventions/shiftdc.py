"""ShiftDC: Activation Shift Disentanglement and Calibration (arXiv 2502.13095).

Per decoder layer ``l`` a *safety direction* ``s^l = mean(text-only safe) - mean(text-only unsafe)``
(last token; :meth:`~vlminterp.interventions.safety_direction.SafetyDirection.fit`). For an image input, its text-only twin is the same
request with a caption of the image, ``"{query} Image Caption: {caption}"`` (``Condition.CAPTION``);
the *modality shift* is ``m^l = x^l(image) - x^l(twin)``, and ShiftDC removes only its safety
component at the last position:

    x^l <- x^l - (m^l . s^l / |s^l|^2) s^l          for l in layers (default L//2 .. L-1)

so that afterwards ``(x^l - x^l(twin)) . s^l = 0`` while the part of the shift orthogonal to
``s^l`` (the image's meaning) is kept.

How ``m`` is estimated (``estimate=``):

- ``"prefill"`` (default; DESIGN, the paper and its reference code): every ``m^l`` comes from one
  *unsteered* prompt pass over the image rows and their twins; all corrections are computed first
  and then added together, so a correction at layer ``l`` never changes the one at ``l + 1``.
  ``steps="prefill"`` adds them at the prompt's last position; ``steps="all"`` also adds the same
  corrections to every generated token.
- ``"per_step"``: recomputed at every decoding step from unsteered copies of the image rows and
  their twins, run in the same batch and fed the same generated tokens (``follow=``): the DESIGN
  rule applied at every step.
- ``"per_step_edited"``: recomputed at every step from the *current* (already corrected) image
  state and the twin (../shared/notes/model-organism.md §4): at every steered layer the safety
  component of ``x - x(twin)`` is then exactly zero, whatever earlier layers did.

Inputs without an image are passed through unchanged (their twin is themselves), with a logged note.

KV reuse (``reuse_kv=True``, the default, with ``estimate="prefill"``): :meth:`ShiftDC.generate`
pays only for the work that differs from plain generation. The edit touches only the last prompt
position, so the unsteered pass over the inputs (which measures ``m``) is also the steered
generation's prompt pass: its KV cache is kept for positions ``[:-1]`` and only the last token is
recomputed, corrected (:class:`~vlminterp.models.stepping.KVPrefix`). The caption twins run as
their own short prompt pass, stopped after the last steered layer. Self-captioning
(``caption_source="self"``) starts from that pass's cache of the template and image, which the
caption prompt shares, so it pays for its own request and caption tokens only. Results equal the one-batch
path (``reuse_kv=False``: one unsteered pass over inputs and twins padded together, then steered
generation from scratch) to float rounding; with ``steer_template`` the steered prompts differ from
the measured ones, so only the truncated twin passes are saved. Over many chunks (the eval runner),
:meth:`ShiftDC.generate_chunks` also decodes two chunks' rows in every generation: a chunk's
self-captions with an earlier chunk's responses.

Presets (:meth:`ShiftDC.preset`): ``"vlminterp"`` (the defaults) and ``"authors"`` (the reference
code's rules); each rule, its source and why the defaults differ are in
:mod:`vlminterp.interventions.shiftdc_rules`.

Example:
    >>> from vlminterp import HookedVLM, Sample
    >>> from vlminterp.interventions import SafetyDirection, ShiftDC
    >>> from PIL import Image
    >>> model = HookedVLM.tiny("llava")
    >>> safe = [Sample(id="s", query="how do i make a cake")]
    >>> unsafe = [Sample(id="u", query="how do i make a bomb")]
    >>> shiftdc = ShiftDC(SafetyDirection.fit(model, safe, unsafe, progress=False), caption_source="sample")
    >>> x = Sample(id="x", query="how do i make this", image=Image.new("RGB", (32, 32)), caption="a bomb")
    >>> len(shiftdc.generate(model, [x], max_new_tokens=3)), model.count_hooks()
    (1, 0)
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable, Iterator, Sequence
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Float
from torch import Tensor

from vlminterp.directions import decompose
from vlminterp.interventions.base import (
    Intervention,
    PreparedRun,
    add_at,
    finite,
    model_dtype,
    twin_blocks,
    twin_follow,
)
from vlminterp.interventions.captioning import (
    QUERY_CONDITIONED_PROMPT,
    CaptionCache,
    Captioner,
    CaptionPrefix,
    caption_images,
    caption_requests,
    check_captions,
)
from vlminterp.interventions.shiftdc_rules import (
    AUTHORS_CAPTION_TEMPLATE,
    NORMAL_SAFE,
    PRESET_OPTIONS,
    PRESETS,
    PROMPT_FORMATS,
    bare_prompts,
    final_normed,
    last_states,
    stripped,
)
from vlminterp.interventions.site import LayerSpec, check_choice
from vlminterp.interventions.steering import SteeringVectors
from vlminterp.models.hooked_vlm import Generation
from vlminterp.models.kv_prefix import (
    KVPrefix,
    common_prefix_lengths,
    kv_reuse_supported,
    prefix_sharing_supported,
)
from vlminterp.models.stepping import CachedRun
from vlminterp.prompts import Condition, PromptBatch, PromptRow, Sample

if TYPE_CHECKING:
    from vlminterp.interventions.base import Inputs
    from vlminterp.models.hooked_vlm import HookedVLM

__all__ = [
    "ShiftDC",
    "ESTIMATES",
    "PROMPT_FORMATS",
    "PRESETS",
    "NORMAL_SAFE",
    "AUTHORS_CAPTION_TEMPLATE",
    "bare_prompts",
]

logger = logging.getLogger(__name__)

ESTIMATES = ("prefill", "per_step", "per_step_edited")
_MAIN = {Condition.IMAGE, Condition.TEXT_ONLY}
_TWIN = {Condition.CAPTION, Condition.TEXT_ONLY}


def _fixed_hook(
    activation: Float[Tensor, "batch pos d_model"], hook: Any, *, correction: Float[Tensor, "batch d_model"]
) -> Float[Tensor, "batch pos d_model"]:
    return add_at(activation, correction.to(activation.device, activation.dtype), "last")


class _Corrections:
    """The fixed corrections of :meth:`ShiftDC.generate`'s KV-reuse path, one hook per steered layer.

    The prompt pass feeds one token (the rest is a reused prefix), so "prompt pass" is told by
    order, not shape: with ``steps="prefill"`` each hook adds its correction the first time it
    fires only.
    """

    def __init__(self, correction: Float[Tensor, "n layers d_model"], names: Sequence[str], every_step: bool):
        self.correction = {name: correction[:, j] for j, name in enumerate(names)}
        self.every_step = every_step
        self.fired: set[str] = set()

    def hook(
        self, activation: Float[Tensor, "batch pos d_model"], hook: Any
    ) -> Float[Tensor, "batch pos d_model"]:
        if hook.name in self.fired and not self.every_step:
            return activation
        self.fired.add(hook.name)
        return _fixed_hook(activation, hook, correction=self.correction[hook.name])


@dataclasses.dataclass
class _Chunk:
    """A chunk of :meth:`ShiftDC.generate_chunks` measured: its samples, rows, unsteered states, KV
    cache, the samples still to caption and the captions known."""

    samples: list[Sample]
    main: PromptBatch
    x: Float[Tensor, "n layers d_model"]
    held: KVPrefix
    todo: list[Sample]
    captions: dict[str, str]

    def caption(self, out: Generation, cache: CaptionCache) -> None:
        """Take the captions of ``todo`` from their generation, into ``captions`` and the cache."""
        cache.update(self.todo, out.texts)
        self.captions.update(zip([s.id for s in self.todo], out.texts, strict=True))


@dataclasses.dataclass
class _Job:
    """Rows of one chunk waiting to be decoded: its captions (``correction`` None) or its steered responses."""

    index: int
    batch: PromptBatch
    prefix: KVPrefix
    limit: int
    correction: Float[Tensor, "n layers d_model"] | None = None


def _next_jobs(jobs: list[_Job], final: bool) -> list[_Job]:
    """The jobs to decode together next, taken out of ``jobs``; none to wait for the next chunk.

    The oldest response with the oldest caption; two captions when no response waits; two
    responses when three wait and no caption (so at most three chunks' caches are held); at the
    end (``final``) whatever is left, two at a time. Otherwise wait: the next chunk may bring a
    caption to decode with.
    """
    captions = sorted((j for j in jobs if j.correction is None), key=lambda j: j.index)
    responses = sorted((j for j in jobs if j.correction is not None), key=lambda j: j.index)
    if captions and responses:
        pick = [responses[0], captions[0]]
    elif len(captions) >= 2:
        pick = captions[:2]
    elif final or len(responses) >= 3:
        pick = sorted(jobs, key=lambda j: j.index)[:2]
    else:
        pick = []
    for job in pick:
        jobs.remove(job)
    return pick


class _Overlap:
    """:meth:`ShiftDC.generate_chunks` under way: chunks measured, rows waiting to be decoded, results.

    Each chunk is measured as it comes (its inputs' unsteered prompt pass, kept as a prefix); its
    captions, then its steered responses, wait as :class:`_Job` s and are decoded two at a time
    (:func:`_next_jobs`); finished chunks are handed out in order by :meth:`ready`.
    """

    def __init__(self, shiftdc: ShiftDC, model: HookedVLM, max_new_tokens: int):
        self.shiftdc, self.model, self.max_new_tokens = shiftdc, model, max_new_tokens
        self.names = shiftdc._names(model)
        self.cache = CaptionCache(
            shiftdc.caption_cache, model, shiftdc.caption_prompt, shiftdc.caption_max_new_tokens
        )
        self.jobs: list[_Job] = []
        self.measured: dict[int, _Chunk] = {}
        self.done: dict[int, Generation] = {}
        self.turn = 0  # the next chunk to hand out

    def add(self, index: int, chunk: list[Sample]) -> None:
        """Measure ``chunk``, queue its captions (its responses when nothing is left to caption), decode what can be."""
        shiftdc, model = self.shiftdc, self.model
        shiftdc.direction.check_compatible(model, shiftdc.layers)
        main = shiftdc._inputs(model, chunk)
        x, held = shiftdc._measure(model, main, self.names)
        known = {s.id: self.cache.get(s) for s in chunk if s.image is not None}
        todo = [s for s in chunk if s.image is not None and known[s.id] is None]
        captions = {sid: text for sid, text in known.items() if text is not None}
        self.measured[index] = state = _Chunk(chunk, main, x, held, todo, captions)
        requests = caption_requests(model, todo, shiftdc.caption_prompt) if todo else None
        start = None if requests is None else _CaptionPrefix(held, main)(todo, requests)
        if start is not None:
            self.jobs.append(_Job(index, requests, start, shiftdc.caption_max_new_tokens))
        else:  # nothing to caption, or no prefix to share: captioned alone
            if requests is not None:
                state.caption(model.generate(requests, shiftdc.caption_max_new_tokens), self.cache)
            self.jobs.append(self._responses(index))
        while pick := _next_jobs(self.jobs, final=False):
            self._decode(pick)

    def flush(self) -> None:
        """Decode every job left (no chunk will join them)."""
        while pick := _next_jobs(self.jobs, final=True):
            self._decode(pick)

    def ready(self) -> Iterator[Generation]:
        """The finished chunks' generations, in chunk order, as far as they are done."""
        while self.turn in self.done:
            yield self.done.pop(self.turn)
            self.turn += 1

    def _responses(self, index: int) -> _Job:
        """Chunk ``index``'s steered rows, their corrections measured against its captions' twins."""
        state = self.measured[index]
        check_captions(state.captions)
        captioned = [
            dataclasses.replace(s, caption=state.captions[s.id]) if s.id in state.captions else s
            for s in state.samples
        ]
        batch = self.shiftdc._prompts_of(self.model, captioned)
        correction = self.shiftdc._correction(self.model, batch, len(captioned), state.x, self.names)
        return _Job(index, state.main, state.held.dropped(1), self.max_new_tokens, correction)

    def _decode(self, pick: list[_Job]) -> None:
        """Decode ``pick`` in one generation; captions are cached and queue their chunk's responses,
        responses are done."""
        for job, out in zip(pick, self._generate(pick), strict=True):
            if job.correction is None:
                self.measured[job.index].caption(out, self.cache)
                self.jobs.append(self._responses(job.index))
            else:
                self.done[job.index] = out
                del self.measured[job.index]

    def _generate(self, pick: list[_Job]) -> list[Generation]:
        """The jobs' rows generated together (each from its prefix, to the longest limit), split back per job."""
        steered = [j.correction for j in pick if j.correction is not None]
        hooks = []
        if steered:
            zeros = steered[0].new_zeros  # caption rows: nothing added
            rows = [
                zeros(len(j.batch), *steered[0].shape[1:]) if j.correction is None else j.correction
                for j in pick
            ]
            edit = _Corrections(torch.cat(rows), self.names, every_step=self.shiftdc.steps == "all")
            hooks = [(name, edit.hook) for name in self.names]
        if len(pick) == 1:
            batch, prefix = pick[0].batch, pick[0].prefix
        else:
            batch = PromptBatch.concat([j.batch for j in pick])
            prefix = KVPrefix.concat([j.prefix for j in pick])
        out = self.model.generate(batch, max(j.limit for j in pick), fwd_hooks=hooks, prefix=prefix)
        parts, first = [], 0
        for j in pick:
            tokens = [t[: j.limit] for t in out.tokens[first : first + len(j.batch)]]
            parts.append(Generation.decoded(self.model.tokenizer, tokens, j.batch))
            first += len(j.batch)
        return parts


class _CaptionPrefix:
    """For a chunk of caption prompts: a copy of the inputs' cache holding what each shares with them."""

    def __init__(self, held: KVPrefix, main: PromptBatch):
        self.held, self.main = held, main
        self.row = {sample_id: i for i, sample_id in enumerate(main.sample_ids)}

    def __call__(self, chunk: Sequence[Sample], batch: PromptBatch) -> KVPrefix | None:
        rows = [self.row[s.id] for s in chunk]
        shared = common_prefix_lengths(self.main.select(rows), batch)
        return None if bool((shared == 0).any()) else self.held.copy_rows(rows, shared)


def _last_states(
    model: HookedVLM, batch: PromptBatch, names: Sequence[str], stop_after_layer: int
) -> tuple[Float[Tensor, "n layers d_model"], CachedRun]:
    """Last-position states at ``names`` from a prompt pass stopped after ``stop_after_layer``, and the run."""
    seen: dict[str, Tensor] = {}

    def keep(activation: Tensor, hook: Any) -> None:
        seen[hook.name] = activation[:, -1]

    run = CachedRun(model, batch, stop_after_layer=stop_after_layer)
    with torch.no_grad(), model.hooks([(name, keep) for name in names]):
        run.step()
    return torch.stack([seen[name] for name in names], dim=1).float().cpu(), run


def _per_step_hook(
    activation: Float[Tensor, "batch pos d_model"],
    hook: Any,
    *,
    n: int,
    direction: Float[Tensor, " d_model"],
    steered: Tensor,
    edited: bool,
) -> Float[Tensor, "batch pos d_model"]:
    last = activation[:, -1]
    image = last[:n] if edited else last[2 * n : 3 * n]
    safety, _ = decompose(image - last[n : 2 * n], direction.to(last.device, last.dtype))
    return add_at(
        activation, -safety * steered.to(last.device, last.dtype)[:, None], "last", rows=slice(0, n)
    )


class ShiftDC(Intervention):
    """Remove the safety component of the image-induced activation shift.

    Args:
        direction: Safety direction from :meth:`SafetyDirection.fit`.
        layers: Layers to steer; default ``"second_half"``, ``L//2 .. L-1`` (LLaVA-1.5-7B: 16..31;
            the paper uses 10..31). None/``"all"``, an int or a list (negative: from the end).
        positions: ``"last"`` (the prompt's last token, then each new token).
        steps: ``"prefill"`` (default, as the reference code: the prompt's last position only) or
            ``"all"`` (every generated token too).
        caption_source: Text twin captions: ``"self"`` (the model captions its own image with
            ``caption_prompt``), ``"sample"`` (``Sample.caption``) or a callable ``Sample -> str``.
        estimate: ``"prefill"``, ``"per_step"`` or ``"per_step_edited"`` (module docstring).
        caption_prompt: Prompt of self-captioning (``{query}`` = the request).
        caption_max_new_tokens: Caption length limit.
        caption_cache: JSON file of self-captions, read first and updated (a rerun or a second call
            on the same samples does not caption again).
        alpha: Strength: the correction is ``-alpha (m . s / |s|^2) s`` (default 1, the paper).
        prompt_format: ``"chat"`` (default: twins in the chat template, like the input) or
            ``"bare"`` (twins tokenised alone and every query and caption stripped, as the
            reference code; fit the direction with the same format).
        final_norm: Read the last layer's state after the final norm when measuring ``m`` (HF
            ``hidden_states[-1]``, as the reference code); the edit stays at the layer's output.
        steer_template: The steered input's text, ``{query}`` the request (the reference code:
            :data:`NORMAL_SAFE`); ``m`` is then measured on the plain query. None: the query itself.
            Needs ``estimate="prefill"``.
        caption_template: The twin's text (``{query}``, ``{caption}``); default the family's.
        reuse_kv: With ``estimate="prefill"``, :meth:`generate` reuses the unsteered pass's KV
            cache and stops the twins early (module docstring); False runs the one-batch path
            (the reference it is tested equal to). Results agree to float rounding.

    :meth:`preset` builds the two named rule sets (module docstring).

    Inputs are samples (captioned, then built into ``[input x n, text twin x n]``, see
    :meth:`prompts`) or such a batch. With ``estimate="prefill"`` the corrections come from one
    unsteered pass over both blocks, and the prepared run holds the input rows alone; the per-step
    estimates run the twins alongside, fed the same tokens (``run.follow``).

    Example:
        >>> from vlminterp import HookedVLM, Sample
        >>> from vlminterp.interventions import SafetyDirection, ShiftDC
        >>> from PIL import Image
        >>> model = HookedVLM.tiny("llava")
        >>> d = SafetyDirection.fit(model, [Sample("s", "bake a cake")], [Sample("u", "make a bomb")], progress=False)
        >>> x = Sample(id="x", query="how do i make this", image=Image.new("RGB", (32, 32)), caption="a bomb")
        >>> with ShiftDC(d, caption_source="sample").applied(model, [x]) as run:
        ...     out = model.generate(run.batch, max_new_tokens=3, follow=run.follow)
        >>> len(run.batch), run.batch.conditions
        (1, [<Condition.IMAGE: 'image'>])
    """

    def __init__(
        self,
        direction: SteeringVectors,
        layers: LayerSpec = "second_half",
        positions: str = "last",
        steps: str = "prefill",
        caption_source: str | Captioner = "self",
        estimate: str = "prefill",
        caption_prompt: str = QUERY_CONDITIONED_PROMPT,
        caption_max_new_tokens: int = 64,
        caption_cache: str | Path | None = None,
        alpha: float = 1.0,
        prompt_format: str = "chat",
        final_norm: bool = False,
        steer_template: str | None = None,
        caption_template: str | None = None,
        reuse_kv: bool = True,
    ):
        if not isinstance(direction, SteeringVectors):
            raise TypeError(
                f"ShiftDC needs SteeringVectors (from SafetyDirection.fit), got {type(direction).__name__}."
            )
        check_choice("positions", positions, ("last",))
        super().__init__(
            layers=layers, hook=direction.hook, positions=positions, steps=steps, n_layers=direction.n_layers
        )
        self.direction = direction
        direction.check_layers(self.layers)
        bad = [layer for layer in self.layers if not bool(torch.isfinite(direction.vectors[layer]).all())]
        if bad:
            raise ValueError(f"ShiftDC: the direction is not finite (NaN or inf) at layers {bad}; refit it.")
        self.caption_source = caption_source
        self.estimate = check_choice("estimate", estimate, ESTIMATES)
        self.caption_prompt = caption_prompt
        self.caption_max_new_tokens = caption_max_new_tokens
        self.caption_cache = caption_cache
        self.alpha = finite("alpha", alpha)
        self.prompt_format = check_choice("prompt_format", prompt_format, PROMPT_FORMATS)
        self.final_norm = bool(final_norm)
        if steer_template is not None and "{query}" not in steer_template:
            raise ValueError(f"steer_template must contain '{{query}}'; got {steer_template!r}.")
        if steer_template is not None and self.estimate != "prefill":
            raise ValueError(
                f"steer_template measures m on the plain query in one unsteered pass: it needs "
                f"estimate='prefill', got {self.estimate!r}."
            )
        self.steer_template = steer_template
        self.caption_template = caption_template
        self.reuse_kv = bool(reuse_kv)
        for name, meta in (("prompt_format", "prompt_format"), ("final_norm", "final_norm")):
            fitted = direction.meta.get(meta)
            if fitted is not None and fitted != getattr(self, name):
                logger.warning(
                    "ShiftDC: %s=%r but the direction was fitted with %s=%r; m and s are then read differently.",
                    name, getattr(self, name), meta, fitted,
                )  # fmt: skip

    @classmethod
    def preset(cls, name: str, direction: SteeringVectors, **overrides: Any) -> ShiftDC:
        """ShiftDC with a named rule set; ``overrides`` replace single settings.

        ``"vlminterp"``: the defaults. ``"authors"``: the reference code's rules (module
        docstring): ``prompt_format="bare"``, ``final_norm=True``, ``steer_template=NORMAL_SAFE``,
        ``caption_template=AUTHORS_CAPTION_TEMPLATE``, ``caption_prompt=AUTHORS_CAPTION_PROMPT``,
        ``caption_max_new_tokens=128``, ``alpha=1``, layers ``L//2 .. L-1``, prefill only. Fit the
        direction with :meth:`direction_options` of the same preset.

        Example:
            >>> from vlminterp import HookedVLM, Sample
            >>> from vlminterp.interventions import SafetyDirection
            >>> model = HookedVLM.tiny("llava")
            >>> d = SafetyDirection.fit(model, [Sample("s", "bake a cake")], [Sample("u", "make a bomb")],
            ...                         progress=False, **ShiftDC.direction_options("authors"))
            >>> sd = ShiftDC.preset("authors", d, caption_source="sample")
            >>> sd.prompt_format, sd.final_norm, sd.alpha, sd.caption_max_new_tokens
            ('bare', True, 1.0, 128)
        """
        return cls(direction, **{**PRESET_OPTIONS[check_choice("preset", name, PRESETS)], **overrides})

    @staticmethod
    def direction_options(name: str) -> dict[str, Any]:
        """The :meth:`SafetyDirection.fit` options of preset ``name`` (how its ``s`` is read).

        Example:
            >>> ShiftDC.direction_options("authors")["prompt_format"]
            'bare'
        """
        options = PRESET_OPTIONS[check_choice("preset", name, PRESETS)]
        return {k: options[k] for k in ("prompt_format", "final_norm", "caption_template")}

    @property
    def layers(self) -> tuple[int, ...]:
        """The steered layers, as indices."""
        return self.site.layer_indices(self.direction.n_layers)

    @property
    def n_blocks(self) -> int:
        """Row blocks: steered, twin, and (``"per_step"`` or ``steer_template``) the unsteered plain input."""
        return 3 if self.estimate == "per_step" or self.steer_template is not None else 2

    def _twins(self) -> tuple[set[Condition], ...]:
        return (_TWIN, _MAIN)[: self.n_blocks - 1]

    # ------------------------------------------------------------------ prompts
    def caption(
        self, model: HookedVLM, samples: Sequence[Sample], prefix: CaptionPrefix | None = None
    ) -> list[Sample]:
        """``samples`` with captions from ``caption_source`` (see :func:`caption_images`)."""
        return caption_images(
            model,
            samples,
            self.caption_prompt,
            self.caption_max_new_tokens,
            source=self.caption_source,
            cache=self.caption_cache,
            prefix=prefix,
        )

    def prompts(
        self,
        model: HookedVLM,
        samples: Sequence[Sample],
        condition: Condition | str = Condition.IMAGE,
        **prompt_options: Any,
    ) -> PromptBatch:
        """Caption ``samples``, then the batch ``[input x n, text twin x n(, unsteered input x n)]``.

        An input is IMAGE (TEXT_ONLY when the sample has no image, passed through unchanged with a
        logged note); its twin is the CAPTION prompt (itself for text-only samples).
        ``prompt_options`` go to :meth:`PromptRow.from_sample` (``caption_template=``, ...).

        Raises:
            ValueError: no samples, or ``condition`` other than IMAGE (ShiftDC steers image inputs).
        """
        if Condition.parse(condition) is not Condition.IMAGE:
            raise ValueError(
                f"ShiftDC steers image inputs: condition must be 'image', got {Condition.parse(condition).value!r}."
            )
        if not samples:
            raise ValueError("ShiftDC needs at least one sample.")
        return self._prompts_of(model, self.caption(model, samples), **prompt_options)

    def _steered(self, s: Sample) -> Sample:
        """The sample as steered: its query in ``steer_template`` if set."""
        if self.steer_template is None:
            return s
        return dataclasses.replace(s, query=self.steer_template.replace("{query}", s.query))

    def _main_row(self, model: HookedVLM, s: Sample, **options: Any) -> PromptRow:
        """The steered input's row (IMAGE; TEXT_ONLY when the sample has no image). Needs no caption."""
        s = stripped(s) if self.prompt_format == "bare" else s
        condition = Condition.IMAGE if s.image is not None else Condition.TEXT_ONLY
        return PromptRow.from_sample(
            model, self._steered(s), condition, **{"caption_template": self.caption_template, **options}
        )

    def _prompts_of(
        self, model: HookedVLM, captioned: Sequence[Sample], **prompt_options: Any
    ) -> PromptBatch:
        """:meth:`prompts` of samples captioned already."""
        options = {"caption_template": self.caption_template, **prompt_options}
        main, twin, plain = [], [], []
        for s in captioned:
            main.append(self._main_row(model, s, **prompt_options))
            if self.prompt_format == "bare":
                s = stripped(s)
            if s.image is None:
                logger.info("ShiftDC: sample %r has no image; it is passed through unchanged.", s.id)
                twin.append(main[-1])
                plain.append(main[-1])
                continue
            twin.append(PromptRow.from_sample(model, s, Condition.CAPTION, **options))
            plain.append(PromptRow.from_sample(model, s, Condition.IMAGE, **options))
        blocks = [main, twin, main if self.steer_template is None else plain][: self.n_blocks]
        if self.prompt_format == "chat":
            return PromptBatch.from_rows(model, [row for block in blocks for row in block])
        with bare_prompts(model):  # the twins alone are tokenised bare
            twins = PromptBatch.from_rows(model, blocks[1])
        batches = [
            PromptBatch.from_rows(model, blocks[0]),
            twins,
            *(PromptBatch.from_rows(model, b) for b in blocks[2:]),
        ]
        return PromptBatch.concat(batches)

    # ------------------------------------------------------------------ the method
    @staticmethod
    def decompose(
        shift: Float[Tensor, "*#batch d_model"], direction: Float[Tensor, "*#batch d_model"]
    ) -> tuple[Float[Tensor, "*#batch d_model"], Float[Tensor, "*#batch d_model"]]:
        """``(safety, rest)`` components of a shift ``m`` along a direction ``s`` (:func:`vlminterp.directions.decompose`)."""
        return decompose(shift, direction)

    def _names(self, model: HookedVLM) -> list[str]:
        return [model.layer_hook(self.hook, layer) for layer in self.layers]

    def shifts(self, model: HookedVLM, batch: PromptBatch) -> Float[Tensor, "n layers d_model"]:
        """Unsteered modality shifts ``m^l = x^l(input) - x^l(twin)`` at the last prompt position (float32, CPU)."""
        n = twin_blocks(batch, self._twins(), "ShiftDC")
        self.direction.check_compatible(model, self.layers)
        inputs = range(2 * n, 3 * n) if self.steer_template is not None else range(n)
        rows = [*inputs, *range(n, 2 * n)]
        x = last_states(model, batch.select(rows), self.hook, self.layers, self.final_norm)
        return x[:n] - x[n:]

    def corrections(self, model: HookedVLM, batch: PromptBatch) -> Float[Tensor, "n layers d_model"]:
        """``-alpha (m^l . s^l / |s^l|^2) s^l`` per input row and steered layer from :meth:`shifts` (float32, CPU).

        What ``estimate="prefill"`` adds; zero for inputs without an image.
        """
        return self._corrections(self.shifts(model, batch), batch.conditions)

    def _corrections(
        self, shift: Float[Tensor, "n layers d_model"], conditions: Sequence[Condition]
    ) -> Float[Tensor, "n layers d_model"]:
        """``-alpha`` times the safety component of ``shift``, zero for rows without an image."""
        directions = self.direction.vectors[list(self.layers)].float()
        safety, _ = decompose(shift, directions)
        steered = torch.tensor([c.has_image for c in conditions[: safety.shape[0]]])
        return -self.alpha * safety * steered[:, None, None]

    def prepare(self, model: HookedVLM, batch: PromptBatch | None) -> PreparedRun:
        """Corrections from an unsteered pass (``"prefill"``) or per-step hooks, for ``batch`` (:meth:`prompts`)."""
        if batch is None:
            raise ValueError(
                "ShiftDC works per input: pass the samples (or ShiftDC.prompts(model, samples)), e.g. "
                "shiftdc.generate(model, samples) or shiftdc.applied(model, samples)."
            )
        n = twin_blocks(batch, self._twins(), "ShiftDC")
        self.direction.check_compatible(model, self.layers)
        names = self._names(model)
        if self.estimate == "prefill":
            correction = self.corrections(model, batch).to(model.device, model_dtype(model))
            hooks = [
                (name, partial(_fixed_hook, correction=correction[:, j])) for j, name in enumerate(names)
            ]
            return PreparedRun(batch.select(range(n)), hooks)
        steered = torch.tensor([c.has_image for c in batch.conditions[:n]])
        hooks = [
            (name, partial(_per_step_hook, n=n, direction=self.direction.vectors[layer].float(),
                           steered=steered, edited=self.estimate == "per_step_edited"))
            for name, layer in zip(names, self.layers, strict=True)
        ]  # fmt: skip
        return PreparedRun(batch, hooks, follow=twin_follow(batch, self.n_blocks), steered=tuple(range(n)))

    def generate(
        self, model: HookedVLM, inputs: Inputs, max_new_tokens: int = 32, **generate_kwargs: Any
    ) -> Generation:
        """Steered generation of the inputs (captioned first); with ``reuse_kv`` it pays only for what differs.

        With ``estimate="prefill"`` and ``reuse_kv=True`` (module docstring) the caption twins run
        a prompt pass stopped after the last steered layer, the inputs one unsteered prompt pass
        (no unembedding) whose KV cache for positions ``[:-1]`` the steered generation starts from,
        recomputing the last prompt token with the corrections. With ``caption_source="self"`` that
        pass runs first and the self-captioning generation starts from a copy of its cache for the
        tokens the caption prompt shares with the input (template and image). Otherwise, or with
        ``cache_names=`` or ``before_step=``, the one-batch path of :meth:`applied`. Both give the
        same tokens and logits (to float rounding; tested).
        """
        if (
            inputs is None
            or not self.reuse_kv
            or self.estimate != "prefill"
            or generate_kwargs.get("cache_names") is not None
            or "before_step" in generate_kwargs
            or not kv_reuse_supported(model)
        ):
            return super().generate(model, inputs, max_new_tokens, **generate_kwargs)
        self.direction.check_compatible(model, self.layers)
        names = self._names(model)
        held: KVPrefix | None = None
        if self._shares_caption_prompts(model, inputs):
            # The inputs' unsteered pass runs first; self-captioning starts from its template and image.
            main = self._inputs(model, inputs)
            x, held = self._measure(model, main, names)
            batch = self._prompts_of(model, self.caption(model, inputs, prefix=_CaptionPrefix(held, main)))
            n = twin_blocks(batch, self._twins(), "ShiftDC")
        else:
            batch = self._batch(model, inputs)
            n = twin_blocks(batch, self._twins(), "ShiftDC")
            main = batch.select(range(n))
            if self.steer_template is None:  # the measured inputs are the steered prompts: reuse their cache
                x, held = self._measure(model, main, names)
            else:
                x, _ = _last_states(model, batch.select(range(2 * n, 3 * n)), names, max(self.layers))
        correction = self._correction(model, batch, n, x, names)
        prefix = None if held is None else held.dropped(1)
        edit = _Corrections(correction, names, every_step=self.steps == "all")
        hooks = [*generate_kwargs.pop("fwd_hooks", ()), *((name, edit.hook) for name in names)]
        return model.generate(main, max_new_tokens, fwd_hooks=hooks, prefix=prefix, **generate_kwargs)

    def _inputs(self, model: HookedVLM, samples: Sequence[Sample]) -> PromptBatch:
        """The steered inputs' rows (no caption needed)."""
        return PromptBatch.from_rows(model, [self._main_row(model, s) for s in samples])

    @staticmethod
    def _measure(
        model: HookedVLM, main: PromptBatch, names: Sequence[str]
    ) -> tuple[Float[Tensor, "n layers d_model"], KVPrefix]:
        """The inputs' unsteered last-position states at ``names``, and that prompt pass's KV cache."""
        x, run = _last_states(model, main, names, model.cfg.n_layers - 1)
        return x, run.take_prefix(0)

    def _correction(
        self,
        model: HookedVLM,
        batch: PromptBatch,
        n: int,
        x: Float[Tensor, "n layers d_model"],
        names: Sequence[str],
    ) -> Float[Tensor, "n layers d_model"]:
        """The corrections of the inputs measured as ``x``, from their twins' pass (rows ``n:2n`` of ``batch``)."""
        twin, _ = _last_states(model, batch.select(range(n, 2 * n)), names, max(self.layers))
        if self.final_norm:
            x, twin = (final_normed(model, states, self.layers) for states in (x, twin))
        return self._corrections(x - twin, batch.conditions[:n]).to(model.device, model_dtype(model))

    # ------------------------------------------------------------------ chunks, captions overlapped
    def generate_chunks(
        self,
        model: HookedVLM,
        chunks: Iterable[Sequence[Sample]],
        condition: Condition | str = Condition.IMAGE,
        max_new_tokens: int = 32,
        **prompt_options: Any,
    ) -> Iterator[Generation]:
        """Steered generation of each chunk of samples, two chunks' decoding in every generation.

        Self-captioning makes a caption as long as a response before the response can start. With
        ``caption_source="self"``, KV reuse and no ``steer_template``, each generation decodes two
        chunks' rows together, each started from its own cached prefix: the first two chunks'
        captions, then chunk ``k``'s responses with chunk ``k + 2``'s captions (zero corrections
        on caption rows), and the last two chunks' responses. Decoding is bound by reading the
        weights more than by the rows, so a generation of two chunks costs less than two.
        Captions found in ``caption_cache`` are not made again; new ones are written to it after
        each generation. Chunks are yielded in order, each once its responses are done; they
        equal :meth:`generate` per chunk (tokens; tested). Otherwise (prompt options, other
        settings, a model without prefix sharing) each chunk is :meth:`generate`'s.

        Example:
            >>> from vlminterp import HookedVLM, Sample
            >>> from vlminterp.interventions import SafetyDirection, ShiftDC
            >>> from PIL import Image
            >>> model = HookedVLM.tiny("llava")
            >>> direction = SafetyDirection.fit(model, [Sample("s", "a cake")], [Sample("u", "a bomb")], progress=False)
            >>> image = Image.new("RGB", (32, 32))
            >>> chunks = [[Sample(f"{k}{i}", "what is this", image) for i in range(2)] for k in "abc"]
            >>> shiftdc = ShiftDC(direction, caption_max_new_tokens=3)
            >>> [len(g) for g in shiftdc.generate_chunks(model, chunks, max_new_tokens=2)]
            [2, 2, 2]
        """
        if prompt_options or Condition.parse(condition) is not Condition.IMAGE:
            yield from super().generate_chunks(model, chunks, condition, max_new_tokens, **prompt_options)
            return
        run = _Overlap(self, model, max_new_tokens)
        for index, chunk in enumerate(map(list, chunks)):
            if self._joins_captions(model, chunk):
                run.add(index, chunk)
            else:
                run.flush()
                run.done[index] = self.generate(model, chunk, max_new_tokens)
            yield from run.ready()
        run.flush()
        yield from run.ready()

    def _joins_captions(self, model: HookedVLM, chunk: Sequence[Sample]) -> bool:
        """Whether :meth:`generate_chunks` can decode ``chunk``'s captions with other rows."""
        return self._shares_caption_prompts(model, chunk) and self.reuse_kv and self.estimate == "prefill"

    def _shares_caption_prompts(self, model: HookedVLM, inputs: Inputs) -> bool:
        """Whether self-captioning can start from the inputs' cache (same template and image)."""
        return (
            self.caption_source == "self"
            and self.steer_template is None
            and not isinstance(inputs, PromptBatch)
            and isinstance(inputs, Sequence)
            and len(inputs) > 0
            and all(isinstance(s, Sample) for s in inputs)
            and len({s.id for s in inputs}) == len(inputs)
            and prefix_sharing_supported(model)
        )

    def to_dict(self) -> dict[str, Any]:
        source = self.caption_source if isinstance(self.caption_source, str) else "callable"
        return {
            **super().to_dict(),
            "method": "shiftdc",
            "layers": list(self.layers),
            "estimate": self.estimate,
            "caption_source": source,
            "caption_prompt": self.caption_prompt,
            "caption_max_new_tokens": self.caption_max_new_tokens,
            "alpha": self.alpha,
            "prompt_format": self.prompt_format,
            "final_norm": self.final_norm,
            "steer_template": self.steer_template,
            "caption_template": self.caption_template,
            "direction": self.direction.metadata(),
        }
