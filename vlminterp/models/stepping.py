"""One batch fed through the model step by step with its own KV cache (the state of a generate loop).

:class:`CachedRun` is the loop state of :meth:`HookedVLM.generate` (mask, position ids, image
inputs at the first step, KV cache), so a second batch can run alongside the generated one with the
same rules: per-input interventions run their twin rows (TEXT_ONLY, BLANK, CAPTION) this way,
fed the steered rows' tokens through ``generate(before_step=...)``. With ``stop_after_layer`` the
forward stops once that layer's ``resid_post`` has fired: later layers, the final norm and the
unembedding of rows that are only read at earlier layers are never computed, and their KV cache
holds the layers that ran (all the next step needs). Like HF ``generate``, the prompt pass
unembeds only the last position (``logits_to_keep=1``) unless ``all_logits=True``.

Prefix reuse (what vLLM's prefix caching does, for the per-input defences): a :class:`KVPrefix`
holds the KV cache of each row's first tokens. A run started from one feeds at its prompt pass
only the tokens after the prefix, on top of that cache. :meth:`CachedRun.take_prefix` turns a run's
prompt pass into a prefix (dropping its last tokens, to be recomputed under an edit),
:meth:`KVPrefix.expand` shares one row's prefix among many rows (the same blank image and template
in every BLANK twin), and :meth:`KVPrefix.concat` joins prefixes of different batches into one
batch (then generated as one). Positions are counted over real tokens, so a row's padding may sit
between its prefix and the rest.

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
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from vlminterp.models.compat import check_prefill_cache

if TYPE_CHECKING:
    from vlminterp.models.hooked_vlm import HookedVLM
    from vlminterp.prompts import PromptBatch

__all__ = [
    "CachedRun",
    "KVPrefix",
    "StopForward",
    "kv_reuse_supported",
    "shared_prefix_length",
    "shared_prefix_run",
]


class StopForward(Exception):
    """Raised by the stop hook of a truncated :class:`CachedRun` to end its forward early."""


def _stop(activation: Tensor, hook: Any) -> None:
    raise StopForward(hook.name)


@dataclasses.dataclass
class KVPrefix:
    """The KV cache of the first real tokens of each row: where a :class:`CachedRun` may start.

    A prefix is used once: the run that starts from it extends ``past`` in place.

    Attributes:
        past: The HF cache (``[rows, kv_heads, length, d_head]`` per layer that ran).
        mask: ``[rows, length]`` attention mask of the cached columns (padding may sit anywhere).
        rope_deltas: ``[rows, 1]`` offsets of mRoPE positions that HF keeps on the model between
            steps (Qwen-VL families); None for models without them.

    Example:
        >>> from vlminterp import HookedVLM, Sample, Condition, PromptBatch
        >>> model = HookedVLM.tiny("llava")
        >>> batch = PromptBatch.paired(model, [Sample(id="a", query="hi")], [Condition.TEXT_ONLY])
        >>> run = CachedRun(model, batch, stop_after_layer=model.cfg.n_layers - 1)
        >>> run.step()
        >>> prefix = run.take_prefix(1)
        >>> prefix.length == batch.input_ids.shape[1] - 1, len(prefix.expand(3))
        (True, 3)
    """

    past: Any
    mask: Int[Tensor, "batch length"]
    rope_deltas: Int[Tensor, "batch 1"] | None = None

    @property
    def length(self) -> int:
        """Cached columns."""
        return int(self.mask.shape[1])

    def __len__(self) -> int:
        return int(self.mask.shape[0])

    def expand(self, n: int) -> KVPrefix:
        """A prefix of ``n`` rows, each a copy of this one-row prefix."""
        if len(self) != 1:
            raise ValueError(f"KVPrefix.expand shares a one-row prefix; this one has {len(self)} rows.")
        layers = [None if kv is None else tuple(t.expand(n, -1, -1, -1) for t in kv) for kv in _kv(self.past)]
        deltas = None if self.rope_deltas is None else self.rope_deltas.expand(n, -1)
        return KVPrefix(_cache(self.past, layers), self.mask.expand(n, -1), deltas)

    def dropped(self, drop: int) -> KVPrefix:
        """This prefix less its last ``drop`` columns (the cache is cut in place: use the result only).

        The last columns must be real tokens of every row (a left-padded prompt pass), and the
        cache must keep every position of sliding-window layers (the runs' caches do).
        """
        if drop == 0:
            return self
        if not 0 < drop < self.length or not bool(self.mask[:, -drop:].bool().all()):
            raise ValueError(
                f"KVPrefix.dropped({drop}): the last {drop} of {self.length} columns must be real tokens."
            )
        self.past.crop(-drop)
        return KVPrefix(self.past, self.mask[:, :-drop], self.rope_deltas)

    def copy_rows(self, rows: Sequence[int], held: Int[Tensor, " rows"]) -> KVPrefix:
        """A new prefix of ``rows`` (copied), row ``j`` holding only its first ``held[j]`` real tokens.

        The other columns stay in the cache, masked, so the padding may sit inside a row.
        """
        index = torch.tensor(list(rows), dtype=torch.long)
        layers = [
            None if kv is None else tuple(t.index_select(0, index.to(t.device)) for t in kv)
            for kv in _kv(self.past)
        ]
        mask = self.mask[index]
        real = mask.cumsum(-1) - 1
        mask = (mask.bool() & (real < held.to(mask.device)[:, None])).long()
        deltas = None if self.rope_deltas is None else self.rope_deltas[index.to(self.rope_deltas.device)]
        return KVPrefix(_cache(self.past, layers), mask, deltas)

    @classmethod
    def concat(cls, parts: Sequence[KVPrefix]) -> KVPrefix:
        """One prefix of the rows of ``parts`` in order, each left-padded (masked zeros) to the longest."""
        if not parts:
            raise ValueError("KVPrefix.concat needs at least one prefix.")
        length = max(p.length for p in parts)
        kvs = [_kv(p.past) for p in parts]
        if len({len(kv) for kv in kvs}) != 1:
            raise ValueError("KVPrefix.concat: the prefixes hold different numbers of layers.")
        layers = []
        for per_part in zip(*kvs, strict=True):
            if any(kv is None for kv in per_part):
                if not all(kv is None for kv in per_part):
                    raise ValueError("KVPrefix.concat: a layer ran in some prefixes and not in others.")
                layers.append(None)
                continue
            layers.append(tuple(torch.cat([_left_pad(kv[i], length, -2) for kv in per_part]) for i in (0, 1)))
        mask = torch.cat([_left_pad(p.mask, length, -1) for p in parts])
        deltas = [p.rope_deltas for p in parts]
        if any(d is None for d in deltas) and not all(d is None for d in deltas):
            raise ValueError("KVPrefix.concat: some prefixes have mRoPE deltas and others do not.")
        rope = None if deltas[0] is None else torch.cat(deltas)
        return cls(_cache(parts[0].past, layers), mask, rope)


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
                kwargs["past_key_values"] = self._prefix.past
                _set_rope_deltas(self.model, self._prefix.rope_deltas)
            elif self._stop is not None:  # a cache object of ours, filled in place by the layers that run
                kwargs["past_key_values"] = _fresh_cache(self.model)
            if self._stop is None and self._last_logits:
                kwargs["logits_to_keep"] = 1
        else:
            if self.past is None:
                raise ValueError("CachedRun.step(tokens): run the prompt first, step() with no tokens.")
            ids = tokens.to(self._prompt.device)[:, None]
            self._mask = torch.cat([self._mask, torch.ones_like(self._mask[:, :1])], dim=1)
            if self._positions is not None:
                self._positions = self._positions[:, -1:] + 1
            kwargs["past_key_values"] = self.past
        kwargs["attention_mask"] = self._mask
        if self._positions is not None:
            kwargs["position_ids"] = self._positions
        if self._stop is None:
            logits, past = self.model.bridge(ids, return_type="logits_and_cache", **kwargs)
        else:
            logits, past = None, kwargs["past_key_values"]
            try:
                with self.model.hooks([(self._stop, _stop)]):
                    self.model.bridge(ids, return_type=None, **kwargs)
            except StopForward:
                pass
            else:
                raise RuntimeError(f"CachedRun: {self._stop} never fired; the forward was not truncated.")
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
        return KVPrefix(self.past, self._mask, _rope_deltas(self.model, self._mask)).dropped(drop)


def _fresh_cache(model: HookedVLM) -> Any:
    """An empty HF cache for the language model, keeping every position (so it can be cropped)."""
    from transformers import DynamicCache

    cache = DynamicCache(config=model.hf_model.config.get_text_config(decoder=True))
    cache.activate_past_recording()  # sliding-window layers keep all positions, not the last window
    return cache


def _kv(cache: Any) -> list[tuple[Tensor, Tensor] | None]:
    """Keys and values per layer of an HF ``DynamicCache`` (None for layers that did not run)."""
    if not hasattr(cache, "layers"):
        raise TypeError(
            f"KV reuse needs a transformers Cache with layers; got {type(cache).__name__}. Pass "
            "reuse_kv=False for this model."
        )
    return [(layer.keys, layer.values) if layer.is_initialized else None for layer in cache.layers]


def _cache(like: Any, layers: list[tuple[Tensor, Tensor] | None]) -> Any:
    """A new cache of ``like``'s type and layer kinds holding ``layers`` (recording every position)."""
    cache = type(like)()
    cache.layers = [type(layer)(**_layer_options(layer)) for layer in like.layers]
    cache.activate_past_recording()
    for i, kv in enumerate(layers):
        if kv is not None:
            cache.layers[i].update(*kv)
    return cache


def _layer_options(layer: Any) -> dict[str, Any]:
    window = getattr(layer, "sliding_window", None)
    return {} if window is None else {"sliding_window": int(window)}


def _left_pad(x: Tensor, length: int, dim: int) -> Tensor:
    """``x`` zero-padded on the left of ``dim`` to ``length``."""
    missing = length - x.shape[dim]
    if missing == 0:
        return x
    shape = list(x.shape)
    shape[dim] = missing
    return torch.cat([x.new_zeros(shape), x], dim=dim)


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


def _rope_owner(model: HookedVLM) -> Any:
    """The HF module that keeps mRoPE ``rope_deltas`` between steps (Qwen-VL families), or None."""
    for module in (model.hf_model, getattr(model.hf_model, "model", None)):
        if module is not None and hasattr(module, "rope_deltas") and hasattr(module, "get_rope_index"):
            return module
    return None


def _rope_deltas(model: HookedVLM, mask: Int[Tensor, "batch pos"]) -> Tensor | None:
    """The model's current ``rope_deltas`` for rows with ``mask``; rows of a text-only pass (HF
    counted their positions by column then) get their left padding as delta."""
    owner = _rope_owner(model)
    if owner is None:
        return None
    if owner.rope_deltas is None:
        return (mask == 0).long().cumprod(-1).sum(-1, keepdim=True)
    deltas = owner.rope_deltas
    return deltas.expand(mask.shape[0], -1) if deltas.shape[0] == 1 else deltas


def _set_rope_deltas(model: HookedVLM, deltas: Tensor | None) -> None:
    owner = _rope_owner(model)
    if owner is not None and deltas is not None:
        owner.rope_deltas = deltas.to(model.device)


def shared_prefix_length(model: HookedVLM, batch: PromptBatch) -> int:
    """How many leading real tokens every row of ``batch`` shares, images included (0: no sharing).

    Shared means the same tokens, per-token inputs and image tensors, and every image token inside
    them, with at least one token of every row left over. 0 when the model has sliding-window
    layers (a shared prefix puts a row's padding between its prefix and the rest, which moves
    where a window of columns begins) or a cache without layers.

    Example:
        >>> from vlminterp import HookedVLM, Sample, Condition, PromptBatch
        >>> model = HookedVLM.tiny("llava")
        >>> samples = [Sample(id="a", query="hi"), Sample(id="b", query="how do i fly a kite")]
        >>> batch = PromptBatch.paired(model, samples, [Condition.BLANK])
        >>> int(batch.image_mask[0].sum()) < shared_prefix_length(model, batch) < int(batch.attention_mask.sum(-1).min())
        True
    """
    if len(batch) < 2 or not prefix_sharing_supported(model):
        return 0
    n = len(batch)
    length = int(common_prefix_lengths(batch.select([0] * (n - 1)), batch.select(range(1, n))).min())
    return length if length < int(batch.attention_mask[0].sum()) else 0


def common_prefix_lengths(held: PromptBatch, fed: PromptBatch) -> Int[Tensor, " batch"]:
    """Per row, how many leading real tokens row ``i`` of ``held`` and of ``fed`` share (0: none usable).

    Shared means the same tokens, per-token inputs and image tensors. A length is usable when it
    holds every image token of the row and leaves ``fed``'s row at least one token; else 0.

    Example:
        >>> from vlminterp import HookedVLM, Sample, Condition, PromptBatch
        >>> model = HookedVLM.tiny("llava")
        >>> a = PromptBatch.paired(model, [Sample(id="a", query="hi there")], [Condition.BLANK])
        >>> b = PromptBatch.paired(model, [Sample(id="a", query="hi you")], [Condition.BLANK])
        >>> int(common_prefix_lengths(a, b)[0]) > int(a.image_mask.sum())
        True
    """
    if len(held) != len(fed):
        raise ValueError(f"common_prefix_lengths: {len(held)} held rows against {len(fed)} fed rows.")
    out = torch.zeros(len(fed), dtype=torch.long)
    for i in range(len(fed)):
        a, b = held.row_images[i], fed.row_images[i]
        if (a is None) != (b is None) or (
            a is not None and (a.keys() != b.keys() or any(not torch.equal(a[k], b[k]) for k in a))
        ):
            continue
        rows = [_real_tokens(batch, i) for batch in (held, fed)]
        shortest = min(r.shape[1] for r in rows)
        length = int((rows[0][:, :shortest] == rows[1][:, :shortest]).all(0).long().cumprod(0).sum())
        image = held.image_mask[i, held.input_ids.shape[1] - rows[0].shape[1] :]
        last_image = int(image.nonzero().max()) + 1 if bool(image.any()) else 0
        if last_image <= length < rows[1].shape[1]:
            out[i] = length
    return out


def _real_tokens(batch: PromptBatch, i: int) -> Int[Tensor, "kinds pos"]:
    """Row ``i``'s real token ids, and its per-token inputs under them."""
    n = int(batch.attention_mask[i].sum())
    return torch.stack([batch.input_ids[i, -n:], *(v[i, -n:] for v in batch.token_inputs.values())])


def prefix_sharing_supported(model: HookedVLM) -> bool:
    """Whether rows may share or copy parts of KV caches: :func:`kv_reuse_supported` and no sliding window.

    A shared prefix puts a row's padding between its prefix and the rest, which moves where a
    window of columns begins, so models with sliding-window layers share nothing.
    """
    return kv_reuse_supported(model) and not _has_sliding_window(model)


def shared_prefix_run(model: HookedVLM, batch: PromptBatch, stop_after_layer: int | None = None) -> CachedRun:
    """A :class:`CachedRun` of ``batch`` whose shared leading tokens (:func:`shared_prefix_length`)
    are computed once, for one row, before it starts: call its ``step()`` next.

    Without a shared prefix it is a plain ``CachedRun(model, batch, stop_after_layer)``.

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
    one = batch.select([0])
    head = dataclasses.replace(
        one,
        input_ids=one.input_ids[:, :length],
        attention_mask=one.attention_mask[:, :length],
        masks={k: m[:, :length] for k, m in one.masks.items()},
        token_inputs={k: v[:, :length] for k, v in one.token_inputs.items()},
    )
    run = CachedRun(model, head, stop_after_layer)
    run.step()
    return CachedRun(model, batch, stop_after_layer, prefix=run.take_prefix(0).expand(len(batch)))


def _has_sliding_window(model: HookedVLM) -> bool:
    config = model.hf_model.config.get_text_config(decoder=True)
    if getattr(config, "sliding_window", None) is None:
        return False
    types = getattr(config, "layer_types", None)
    return types is None or any(t in ("sliding_attention", "chunked_attention") for t in types)


def kv_reuse_supported(model: HookedVLM) -> bool:
    """Whether ``model``'s KV cache can be cropped, shared and joined (:class:`KVPrefix`).

    False for remote-code checkpoints behind the fallback adapter (their caches may be legacy tuples).

    Example:
        >>> from vlminterp import HookedVLM
        >>> kv_reuse_supported(HookedVLM.tiny("llava"))
        True
    """
    from vlminterp.models.fallback import FallbackBridge

    return not isinstance(model.bridge, FallbackBridge)


def _keeps_logits(model: HookedVLM) -> bool:
    """Whether the HF model takes ``logits_to_keep`` (remote-code checkpoints may not)."""
    import inspect

    return "logits_to_keep" in inspect.signature(model.hf_model.forward).parameters
