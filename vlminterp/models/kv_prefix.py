"""KV-cache prefixes: a cache of each row's first tokens, cut, shared, copied and joined.

What vLLM's prefix caching does, for the per-input defences: a :class:`KVPrefix` holds the KV
cache of each row's first real tokens, and a :class:`~vlminterp.models.stepping.CachedRun` started
from one feeds only the rest. :meth:`KVPrefix.dropped` cuts the last tokens (recomputed under an
edit), :meth:`KVPrefix.first` copies the first ones, :meth:`KVPrefix.expand` shares one row's prefix among many rows (the same blank image and
template in every BLANK twin, :func:`shared_prefix_length`), :meth:`KVPrefix.copy_rows` copies what
other prompts share with these rows (:func:`common_prefix_lengths`), and :meth:`KVPrefix.concat`
joins prefixes of different batches into one. Positions are counted over real tokens, so a row's
padding may sit between its prefix and the rest (not with sliding-window layers, whose window is
counted in columns: :func:`prefix_sharing_supported`).

Example:
    >>> from vlminterp import HookedVLM, Sample, Condition, PromptBatch
    >>> model = HookedVLM.tiny("llava")
    >>> samples = [Sample(id="a", query="hi"), Sample(id="b", query="how do i fly a kite")]
    >>> batch = PromptBatch.paired(model, samples, [Condition.BLANK])
    >>> 0 < shared_prefix_length(model, batch), kv_reuse_supported(model)
    (True, True)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Int
from torch import Tensor

if TYPE_CHECKING:
    from vlminterp.models.hooked_vlm import HookedVLM
    from vlminterp.prompts import PromptBatch

__all__ = [
    "KVPrefix",
    "common_prefix_lengths",
    "kv_reuse_supported",
    "prefix_sharing_supported",
    "shared_prefix_length",
]


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
        >>> from vlminterp.models.stepping import CachedRun
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

    def first(self, k: int) -> KVPrefix:
        """A new prefix of this one's first ``k`` columns (copied; this prefix is unchanged).

        Raises:
            ValueError: ``k`` is not in ``1..length``.
        """
        if not 0 < k <= self.length:
            raise ValueError(f"KVPrefix.first({k}): keep 1 to {self.length} columns.")
        layers = [None if kv is None else tuple(t[..., :k, :] for t in kv) for kv in _kv(self.past)]
        return KVPrefix(_cache(self.past, layers), self.mask[:, :k], self.rope_deltas)

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


def _rope_owner(model: HookedVLM) -> Any:
    """The HF module that keeps mRoPE ``rope_deltas`` between steps (Qwen-VL families), or None."""
    for module in (model.hf_model, getattr(model.hf_model, "model", None)):
        if module is not None and hasattr(module, "rope_deltas") and hasattr(module, "get_rope_index"):
            return module
    return None


def model_rope_deltas(model: HookedVLM, mask: Int[Tensor, "batch pos"]) -> Tensor | None:
    """The model's current ``rope_deltas`` for rows with ``mask``; rows of a text-only pass (HF
    counted their positions by column then) get their left padding as delta."""
    owner = _rope_owner(model)
    if owner is None:
        return None
    if owner.rope_deltas is None:
        return (mask == 0).long().cumprod(-1).sum(-1, keepdim=True)
    deltas = owner.rope_deltas
    return deltas.expand(mask.shape[0], -1) if deltas.shape[0] == 1 else deltas


def set_model_rope_deltas(model: HookedVLM, deltas: Tensor | None) -> None:
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
