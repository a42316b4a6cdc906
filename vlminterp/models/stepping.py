"""One batch fed through the model step by step with its own KV cache (the state of a generate loop).

:class:`CachedRun` is the loop state of :meth:`HookedVLM.generate` (mask, position ids, image
inputs at the first step, KV cache), so a second batch can run alongside the generated one with the
same rules: per-input interventions run their twin rows (TEXT_ONLY, BLANK, CAPTION) this way,
fed the steered rows' tokens through ``generate(before_step=...)``. With ``stop_after_layer`` the
forward stops once that layer's ``resid_post`` has fired: later layers, the final norm and the
unembedding of rows that are only read at earlier layers are never computed, and their KV cache
holds the layers that ran (all the next step needs). Like HF ``generate``, the prompt pass
unembeds only the last position (``logits_to_keep=1``) unless ``all_logits=True``. The KV cache is
:func:`~vlminterp.models.kv_buffer.fresh_cache`'s, whose full-attention layers grow in place.

Prefix reuse (what vLLM's prefix caching does, for the per-input defences): a :class:`KVPrefix`
holds the KV cache of each row's first tokens. A run started from one feeds at its prompt pass
only the tokens after the prefix, on top of that cache. :meth:`CachedRun.take_prefix` turns a run's
prompt pass into a prefix (dropping its last tokens, to be recomputed under an edit);
:mod:`vlminterp.models.kv_prefix` shares, copies and joins prefixes, and :func:`shared_prefix_run`
computes the leading tokens every row shares (the BLANK twins' template and blank image) once,
and with a :class:`PrefixCache` once per run of batches.

Example:
    >>> from vlminterp import HookedVLM, Sample, Condition, PromptBatch
    >>> model = HookedVLM.tiny("llava")
    >>> batch = PromptBatch.paired(model, [Sample(id="a", query="hi")], [Condition.TEXT_ONLY])
    >>> seen = []
    >>> run = CachedRun(model, batch, stop_after_layer=0)
    >>> with model.hooks([("blocks.0.hook_resid_post", lambda x, hook: seen.append(x.shape[1]))]):
    ...     run.step(), run.step(torch.tensor([5]))
    (None, None)
    >>> seen == [batch.input_ids.shape[1], 1], run.length == batch.input_ids.shape[1] + 1
    (True, True)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from vlminterp.models.compat import check_prefill_cache, kv_cache_keyword
from vlminterp.models.kv_buffer import fresh_cache
from vlminterp.models.kv_prefix import (
    KVPrefix,
    common_prefix_lengths,
    kv_reuse_supported,
    model_rope_deltas,
    set_model_rope_deltas,
    shared_prefix_length,
)

if TYPE_CHECKING:
    from vlminterp.models.hooked_vlm import HookedVLM
    from vlminterp.prompts import PromptBatch

__all__ = ["CachedRun", "PrefixCache", "StopForward", "run_until", "shared_prefix_run"]


class StopForward(Exception):
    """Raised by the stop hook of :func:`run_until` to end a truncated forward."""


def run_until(model: HookedVLM, stop: str, forward: Callable[[], Any], who: str) -> Tensor:
    """Run ``forward()`` until hook point ``stop`` fires, then end it; the activation ``stop`` saw.

    The stop hook is added after every hook already installed, so those on the same point fire
    first (truncated :class:`CachedRun` passes, ``run_with_cache(stop_at_layer=)``).

    Raises:
        RuntimeError: ``stop`` never fired, so the forward ran to the end (``who`` names the caller).
    """
    seen: list[Tensor] = []

    def end(activation: Tensor, hook: Any) -> None:
        seen.append(activation)
        raise StopForward(hook.name)

    try:
        with model.hooks([(stop, end)]):
            forward()
    except StopForward:
        if not seen:  # another truncated forward's stop, not ours
            raise
        return seen[0]
    raise RuntimeError(f"{who}: {stop} never fired; the forward was not truncated.")


class CachedRun:
    """``batch`` run through ``model`` one step at a time, the KV cache kept between steps.

    Args:
        model: The model (hooks installed on it fire on every step).
        batch: The prompts (left-padded).
        stop_after_layer: Stop each forward after this layer's ``resid_post`` (no logits then);
            None runs the whole model.
        all_logits: Unembed every prompt position at the prompt pass (for hooks on ``unembed``);
            default only the last, which is all the next token needs.
        prefix: The KV cache of each row's first real tokens (:class:`KVPrefix`, used up by this
            run): the prompt pass then feeds only the rest of each row, which must hold no image
            token. None: the whole prompt.

    Attributes:
        past: The KV cache after the last step (None before the first).
        length: Positions held so far (prompt plus fed tokens).
    """

    def __init__(
        self,
        model: HookedVLM,
        batch: PromptBatch,
        stop_after_layer: int | None = None,
        all_logits: bool = False,
        prefix: KVPrefix | None = None,
    ):
        device = model.device
        self.model = model
        self.past: Any = None
        self._prefix = prefix
        width = batch.input_ids.shape[1] if prefix is None else _fed_width(batch, prefix)
        self._prompt = batch.input_ids[:, -width:].to(device)
        mask = batch.attention_mask
        # Image tensors and per-token kwargs (token_type_ids, ...) describe the prompt: first step only.
        first = {**batch.token_inputs} if prefix is not None else {**batch.image_inputs, **batch.token_inputs}
        if prefix is not None:
            mask = torch.cat([prefix.mask.to(mask.device), _fed_mask(batch, prefix)[:, -width:]], dim=1)
            first = {k: v[:, -width:] for k, v in first.items()}
        self._mask = mask.to(device)
        self._first = {k: v.to(device) for k, v in first.items()}
        positions = batch.position_ids[:, -width:]
        self._positions = positions.to(device) if batch.explicit_position_ids else None
        self._stop = None if stop_after_layer is None else model.layer_hook("resid_post", stop_after_layer)
        self._last_logits = not all_logits and _keeps_logits(model)
        self._spent = False
        self._own_cache = kv_reuse_supported(model)
        self._cache_keyword = kv_cache_keyword(model.hf_model)

    @property
    def length(self) -> int:
        return int(self._mask.shape[1])

    def step(self, tokens: Int[Tensor, " batch"] | None = None) -> Float[Tensor, "batch pos d_vocab"] | None:
        """The prompt pass (``tokens=None``, first call) or one fed token per row; the step's logits.

        Returns:
            Logits ``[batch, pos, d_vocab]`` (``pos`` = 1, or the prompt length at the prompt pass with
            ``all_logits``); None when the run stops early.

        Raises:
            ValueError: the prompt pass is asked twice, or tokens are fed before it.
            KVCacheError: the prompt pass left the KV cache without the prompt.
        """
        kwargs: dict[str, Any] = {"use_cache": True}
        if self._spent:
            raise ValueError("CachedRun.step(): this run's cache was taken as a prefix (take_prefix).")
        if tokens is None:
            if self.past is not None:
                raise ValueError("CachedRun.step(): the prompt already ran; feed tokens now.")
            ids = self._prompt
            kwargs.update(self._first)
            if self._prefix is not None:
                kwargs[self._cache_keyword] = self._prefix.past
                set_model_rope_deltas(self.model, self._prefix.rope_deltas)
            elif self._stop is not None:  # a cache object of ours, filled in place by the layers that run
                kwargs[self._cache_keyword] = fresh_cache(self.model)
            elif self._own_cache:  # growing in place rather than by torch.cat (HF's DynamicLayer)
                kwargs[self._cache_keyword] = fresh_cache(self.model, keep_all=False)
            if self._stop is None and self._last_logits:
                kwargs["logits_to_keep"] = 1
        else:
            if self.past is None:
                raise ValueError("CachedRun.step(tokens): run the prompt first, step() with no tokens.")
            ids = tokens.to(self._prompt.device)[:, None]
            self._mask = torch.cat([self._mask, torch.ones_like(self._mask[:, :1])], dim=1)
            if self._positions is not None:
                self._positions = self._positions[:, -1:] + 1
            kwargs[self._cache_keyword] = self.past
        kwargs["attention_mask"] = self._mask
        if self._positions is not None:
            kwargs["position_ids"] = self._positions
        if self._stop is None:
            logits, past = self.model.bridge(ids, return_type="logits_and_cache", **kwargs)
        else:
            logits, past = None, kwargs[self._cache_keyword]
            run_until(
                self.model,
                self._stop,
                lambda: self.model.bridge(ids, return_type=None, **kwargs),
                "CachedRun",
            )
        if tokens is None:
            check_prefill_cache(past, self.length)
        self.past = past
        return logits

    def take_prefix(self, drop: int = 1) -> KVPrefix:
        """This run's cache after its prompt pass, less the last ``drop`` columns, as a :class:`KVPrefix`.

        The run is spent afterwards (its cache now belongs to the prefix). Runs with
        ``stop_after_layer`` keep every position of sliding-window layers, so they can drop any.

        Raises:
            ValueError: the prompt pass has not run, tokens were fed since, or ``drop`` is negative.
        """
        if self.past is None or self._spent:
            raise ValueError("CachedRun.take_prefix: run the prompt pass (step()) first, once.")
        held = self.length - (0 if self._prefix is None else self._prefix.length)
        if not 0 <= drop < self.length or (self._prompt.shape[1] != held):
            raise ValueError(
                f"CachedRun.take_prefix(drop={drop}): take it right after the prompt pass, with "
                f"0 <= drop < {self.length}."
            )
        self._spent = True
        return KVPrefix(self.past, self._mask, model_rope_deltas(self.model, self._mask)).dropped(drop)


def _fed_mask(batch: PromptBatch, prefix: KVPrefix) -> Int[Tensor, "batch pos"]:
    """Mask of each row's real tokens that the prefix does not hold (its first ``prefix`` real tokens)."""
    if len(prefix) != len(batch):
        raise ValueError(f"The prefix has {len(prefix)} rows; the batch has {len(batch)}.")
    mask = batch.attention_mask
    held = prefix.mask.sum(-1).to(mask.device)
    index = mask.cumsum(-1) - 1
    return (mask.bool() & (index >= held[:, None])).long()


def _fed_width(batch: PromptBatch, prefix: KVPrefix) -> int:
    """Columns of the prompt pass after ``prefix`` (the longest rest of a row), validated."""
    fed = _fed_mask(batch, prefix)
    counts = fed.sum(-1)
    if bool((counts == 0).any()):
        rows = (counts == 0).nonzero().flatten().tolist()
        raise ValueError(
            f"The prefix holds the whole prompt of rows {rows}; leave at least one token to feed."
        )
    width = int(counts.max())
    if bool((fed[:, -width:].bool() & batch.image_mask[:, -width:]).any()):
        raise ValueError("A KVPrefix must hold every image token of its rows; the rest fed holds some.")
    return width


class PrefixCache:
    """The shared head of the last batch of a run, kept for the next batches (one entry).

    :func:`shared_prefix_run` given a cache looks in it first: when the kept head's first ``k`` real
    tokens, its images among them, are the first ``k`` that every row of the new batch shares, the
    rows start from those ``k`` columns (copied) and feed the rest; otherwise it computes the new
    batch's head and keeps that one. The BLANK twins of a run (the same template and blank image in
    every batch) so pay for their head once per run, not once per batch: vLLM's prefix caching.

    Keep a cache for one run of one model whose weights and hooks do not change meanwhile (e.g. one
    :meth:`~vlminterp.interventions.base.Intervention.generate_chunks` call): the key is the
    tokens, images and stopping layer, not the weights.

    Attributes:
        hits: Batches that started from the kept head.

    Example:
        >>> from vlminterp import HookedVLM, Sample, Condition, PromptBatch
        >>> model = HookedVLM.tiny("llava")
        >>> cache = PrefixCache()
        >>> for queries in (["hi", "how do i fly"], ["what is it", "why"]):
        ...     batch = PromptBatch.paired(model, [Sample(id=q, query=q) for q in queries], [Condition.BLANK])
        ...     shared_prefix_run(model, batch, stop_after_layer=0, cache=cache).step()
        >>> cache.hits
        1
    """

    def __init__(self) -> None:
        self._kept: tuple[HookedVLM, PromptBatch, int | None, KVPrefix] | None = None
        self.hits = 0

    def lookup(
        self, model: HookedVLM, batch: PromptBatch, length: int, stop_after_layer: int | None
    ) -> KVPrefix | None:
        """The kept head's first columns that ``batch``'s rows share, up to ``length``, for one row."""
        if self._kept is None:
            return None
        owner, head, stop, prefix = self._kept
        if owner is not model or stop != stop_after_layer:
            return None
        k = min(int(common_prefix_lengths(head, batch.select([0]))[0]), length)
        if k == 0:
            return None
        self.hits += 1
        return prefix.first(k)

    def keep(
        self, model: HookedVLM, head: PromptBatch, stop_after_layer: int | None, prefix: KVPrefix
    ) -> None:
        """Keep ``head`` (one row) and the one-row ``prefix`` of all its columns, in place of the last."""
        self._kept = (model, head, stop_after_layer, prefix)


def shared_prefix_run(
    model: HookedVLM,
    batch: PromptBatch,
    stop_after_layer: int | None = None,
    cache: PrefixCache | None = None,
) -> CachedRun:
    """A :class:`CachedRun` of ``batch`` whose shared leading tokens (:func:`shared_prefix_length`)
    are computed once, for one row, before it starts: call its ``step()`` next.

    Without a shared prefix it is a plain ``CachedRun(model, batch, stop_after_layer)``. With a
    ``cache``, a head an earlier batch computed is reused (:class:`PrefixCache`), and this batch's
    head is kept when it is computed.

    Example:
        >>> from vlminterp import HookedVLM, Sample, Condition, PromptBatch
        >>> model = HookedVLM.tiny("llava")
        >>> samples = [Sample(id="a", query="hi"), Sample(id="b", query="how do i fly a kite")]
        >>> batch = PromptBatch.paired(model, samples, [Condition.BLANK])
        >>> run = shared_prefix_run(model, batch, stop_after_layer=0)
        >>> run.step(), run.length == batch.input_ids.shape[1]
        (None, True)
    """
    length = shared_prefix_length(model, batch)
    if length == 0:
        return CachedRun(model, batch, stop_after_layer)
    kept = None if cache is None else cache.lookup(model, batch, length, stop_after_layer)
    if kept is not None:
        return CachedRun(model, batch, stop_after_layer, prefix=kept.expand(len(batch)))
    one = batch.select([0])
    head = dataclasses.replace(
        one,
        input_ids=one.input_ids[:, :length],
        attention_mask=one.attention_mask[:, :length],
        masks={k: m[:, :length] for k, m in one.masks.items()},
        token_inputs={k: v[:, :length] for k, v in one.token_inputs.items()},
    )
    run = CachedRun(model, head, stop_after_layer)
    with torch.no_grad():  # built before generation's no_grad block (the twins' runs are made up front)
        run.step()
    prefix = run.take_prefix(0)
    if cache is not None:
        cache.keep(model, head, stop_after_layer, prefix)
    return CachedRun(model, batch, stop_after_layer, prefix=prefix.expand(len(batch)))


def _keeps_logits(model: HookedVLM) -> bool:
    """Whether the HF model takes ``logits_to_keep`` (remote-code checkpoints may not)."""
    import inspect

    return "logits_to_keep" in inspect.signature(model.hf_model.forward).parameters
