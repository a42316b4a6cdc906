"""GrowingLayer against HF's DynamicLayer: the same keys and values after every operation a run makes."""

from __future__ import annotations

import pytest
import torch
from transformers.cache_utils import DynamicLayer

from vlminterp.models.kv_buffer import MIN_ROOM, GrowingLayer, fresh_cache


def _kv(batch: int, pos: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 2, pos, 4, generator=g), torch.randn(batch, 2, pos, 4, generator=g)


def _same(a: DynamicLayer, b: DynamicLayer) -> None:
    assert torch.equal(a.keys, b.keys) and torch.equal(a.values, b.values)


def test_appends_equal_dynamic_layer_across_regrowth():
    """A prompt, then single columns past the first capacity: every returned tensor equals HF's."""
    ours, ref = GrowingLayer(), DynamicLayer()
    for step, pos in enumerate([5] + [1] * (MIN_ROOM + 10) + [3]):
        k, v = _kv(3, pos, step)
        got, want = ours.update(k, v), ref.update(k, v)
        assert all(torch.equal(x, y) for x, y in zip(got, want, strict=True)), step
    assert ours.capacity > ours.get_seq_length() == ref.get_seq_length()


def test_writes_in_place_until_full():
    """Within capacity no new buffer is made (the point of the layer: no copy per step)."""
    layer = GrowingLayer()
    layer.update(*_kv(2, 7, 0))
    buffer = layer.keys.data_ptr()
    for step in range(MIN_ROOM):
        layer.update(*_kv(2, 1, step + 1))
        assert layer.keys.data_ptr() == buffer
    layer.update(*_kv(2, 1, 99))
    assert layer.keys.data_ptr() != buffer


def test_crop_then_update_overwrites_the_cut_columns():
    ours, ref = GrowingLayer(), DynamicLayer()
    for layer in (ours, ref):
        layer.update(*_kv(2, 6, 0))
        layer.crop(-2)
        layer.update(*_kv(2, 1, 1))
    _same(ours, ref)
    assert ours.get_seq_length() == 5


@pytest.mark.parametrize(
    "change",
    [
        lambda layer: layer.batch_select_indices(torch.tensor([1, 0])),
        lambda layer: layer.batch_repeat_interleave(2),
        # a leading-rows view: same storage and strides, fewer rows than the buffer
        lambda layer: setattr(layer, "keys", layer.keys[:1]) or setattr(layer, "values", layer.values[:1]),
    ],
    ids=["select", "repeat", "row-view"],
)
def test_replaced_keys_are_taken_up(change):
    """keys/values replaced from outside (batch ops, joined prefixes) are copied into a new buffer."""
    ours, ref = GrowingLayer(), DynamicLayer()
    for layer in (ours, ref):
        layer.update(*_kv(2, 4, 0))
        change(layer)
        layer.update(*_kv(layer.keys.shape[0], 1, 1))
    _same(ours, ref)


def test_generate_uses_growing_layers(tiny_model, monkeypatch):
    """HookedVLM.generate's cache is ours (a regression to HF's torch.cat layers would go unseen:
    the results are the same, only slower)."""
    from vlminterp import Condition, PromptBatch, Sample

    assert all(type(layer) is GrowingLayer for layer in fresh_cache(tiny_model).layers)
    calls = []
    update = GrowingLayer.update
    monkeypatch.setattr(
        GrowingLayer, "update", lambda self, *a, **k: calls.append(1) or update(self, *a, **k)
    )
    batch = PromptBatch.paired(tiny_model, [Sample(id="a", query="hi")], [Condition.TEXT_ONLY])
    tiny_model.generate(batch, max_new_tokens=3)
    assert len(calls) == 3 * tiny_model.cfg.n_layers


def test_keys_and_values_of_different_lengths_behave_as_in_hf():
    """A model bug that makes them differ must not be hidden by a broadcast write (HF's cat keeps both)."""
    ours, ref = GrowingLayer(), DynamicLayer()
    for layer in (ours, ref):
        layer.update(*_kv(2, 4, 0))
        k, v = _kv(2, 3, 1)
        layer.update(k, v[:, :, :1])
    _same(ours, ref)
    assert ours.keys.shape[-2] == 7 and ours.values.shape[-2] == 5
