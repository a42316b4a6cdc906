"""The KV cache vlminterp's runs create: full-attention layers that grow in place.

HF's ``DynamicLayer`` appends each step's keys and values with ``torch.cat``, copying the whole
cache at every decode step: at batch 4 and a 300-token prompt that is a copy of every layer's
cache per generated token, a memory-bound cost that grows with the context. A
:class:`GrowingLayer` keeps its keys and values as views of a buffer with spare room (a quarter of
the length, at least 64 columns) and writes each step's columns into it, copying only when the
room runs out, as a ``list`` or a C++ ``vector`` grows. Keys and values are the same numbers in the
same layout as ``DynamicLayer``'s, so attention computes the same result (tested bit for bit).

Cropping (``KVPrefix.dropped``) cuts the views; the next step writes over the cut columns. Any
other replacement of ``keys``/``values`` (``batch_select_indices``, a prefix joined from other
caches) is taken up as is and copied into a new buffer at the next step. Sliding-window layers are
HF's own.

Example:
    >>> import torch
    >>> from vlminterp import HookedVLM
    >>> model = HookedVLM.tiny("llava")
    >>> cache = fresh_cache(model)
    >>> layer = cache.layers[0]
    >>> k = torch.ones(2, 4, 3, 8)
    >>> _ = layer.update(k, k)
    >>> keys, _ = layer.update(k[:, :, :1], k[:, :, :1])
    >>> type(layer).__name__, tuple(keys.shape), layer.capacity
    ('GrowingLayer', (2, 4, 4, 8), 67)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from jaxtyping import Float
from torch import Tensor
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

if TYPE_CHECKING:
    from vlminterp.models.hooked_vlm import HookedVLM

__all__ = ["GrowingLayer", "fresh_cache"]

#: Spare columns allocated beyond the length needed: this share of it, and at least ``MIN_ROOM``.
ROOM_SHARE = 0.25
MIN_ROOM = 64


class GrowingLayer(DynamicLayer):
    """A ``DynamicLayer`` whose keys and values are views of buffers with spare columns.

    Attributes:
        capacity: Columns the buffers hold (0 before the first update).
    """

    def lazy_initialization(self, key_states: Tensor, value_states: Tensor) -> None:
        super().lazy_initialization(key_states, value_states)
        self._buffers: tuple[Tensor, Tensor] | None = None

    @property
    def capacity(self) -> int:
        buffers = getattr(self, "_buffers", None)
        return 0 if buffers is None else int(buffers[0].shape[-2])

    def update(
        self,
        key_states: Float[Tensor, "batch kv_heads pos d_head"],
        value_states: Float[Tensor, "batch kv_heads _pos d_head"],
        *args: Any,
        **kwargs: Any,
    ) -> tuple[Float[Tensor, "batch kv_heads all d_head"], Float[Tensor, "batch kv_heads _all d_head"]]:
        """Append ``pos`` columns; return every cached column (views of the buffers).

        Keys and values of different lengths (a model's bug, e.g. misbuilt position ids) go to
        ``DynamicLayer``'s concatenation, so that they fail downstream as they do in HF.
        """
        if value_states.shape[-2] != key_states.shape[-2]:
            return super().update(key_states, value_states, *args, **kwargs)
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        held = self.get_seq_length()
        need = held + key_states.shape[-2]
        if not self._in_buffers(key_states, need):
            room = max(int(need * ROOM_SHARE), MIN_ROOM)
            buffers = tuple(
                new.new_empty((*new.shape[:-2], need + room, new.shape[-1]))
                for new in (key_states, value_states)
            )
            if held:
                buffers[0][..., :held, :] = self.keys
                buffers[1][..., :held, :] = self.values
            self._buffers = buffers
        keys, values = self._buffers
        keys[..., held:need, :] = key_states
        values[..., held:need, :] = value_states
        self.keys, self.values = keys[..., :need, :], values[..., :need, :]
        return self.keys, self.values

    def _in_buffers(self, key_states: Tensor, need: int) -> bool:
        """Whether ``keys``/``values`` are still the buffers' leading columns and ``need`` columns fit."""
        if self._buffers is None or need > self.capacity:
            return False
        keys, values = self._buffers
        held = self.get_seq_length()
        if held == 0:
            return keys.shape[:2] == key_states.shape[:2] and keys.dtype == key_states.dtype
        return all(
            view.data_ptr() == buffer.data_ptr()
            and view.stride() == buffer.stride()
            and view.shape[:-2] == buffer.shape[:-2]
            for view, buffer in ((self.keys, keys), (self.values, values))
        )


def fresh_cache(model: HookedVLM, keep_all: bool = True) -> DynamicCache:
    """An empty HF cache for the language model, its full-attention layers :class:`GrowingLayer`.

    Args:
        model: The model whose language model the cache is for.
        keep_all: Sliding-window layers keep every position (so the cache can be cropped and its
            prefix reused, :mod:`vlminterp.models.kv_prefix`); False keeps HF's window.
    """
    cache = DynamicCache(config=model.hf_model.config.get_text_config(decoder=True))
    cache.layers = [GrowingLayer() if type(layer) is DynamicLayer else layer for layer in cache.layers]
    if keep_all:
        cache.activate_past_recording()
    return cache
