"""ActivationCache without a model: lookups, mapping behaviour and the errors that name the fix."""

from __future__ import annotations

from collections.abc import Mapping
from types import SimpleNamespace

import pytest
import torch
import transformer_lens

from vlminterp.cache import ActivationCache
from vlminterp.cache.activation_cache import ModelFreedError


class FakeModel:
    """What the model-free methods read: the config (held weakly by the cache, like a bridge)."""

    cfg = SimpleNamespace(n_layers=2, attn_only=False, normalization_type=None)


MODEL = FakeModel()


def make(positions=None, with_pos=True, model=MODEL):
    shape = (2, 5, 4) if with_pos else (2, 4)
    data = {
        f"blocks.{layer}.{kind}": torch.randn(shape)
        for layer in range(2)
        for kind in ("hook_resid_pre", "hook_resid_post", "hook_attn_out", "hook_mlp_out")
    }
    data["blocks.0.attn.hook_pattern"] = torch.rand(2, 3, 5, 5)
    data["hook_embed"] = data["blocks.0.hook_resid_pre"]
    return ActivationCache(data, positions=positions, meta={"conditions": ["text_only"] * 2}, model=model)


def test_is_a_transformer_lens_cache_and_a_read_only_mapping():
    cache = make()
    assert isinstance(cache, transformer_lens.ActivationCache) and isinstance(cache, Mapping)
    assert "blocks.0.hook_resid_post" in cache and cache.get("nope") is None
    assert len(cache) == len(list(cache)) == 10


def test_short_names_and_tuples_as_in_transformer_lens():
    cache = make()
    assert cache["resid_post", 1] is cache.cache_dict["blocks.1.hook_resid_post"]
    assert cache["attn", 0] is cache.cache_dict["blocks.0.attn.hook_pattern"]
    assert cache["embed"] is cache.cache_dict["hook_embed"]
    assert cache["resid_post", -1] is cache.cache_dict["blocks.1.hook_resid_post"]
    assert cache[("embed",)] is cache.cache_dict["hook_embed"]
    assert cache.stack("resid_post").shape == (2, 2, 5, 4)


def test_missing_names_and_model_needs_raise_saying_what_to_do():
    with pytest.raises(KeyError, match="blocks.0.hook_resid_mid.*close to it"):
        make()["resid_mid", 0]
    with pytest.raises(ModelFreedError, match="'cfg'.*without a model"):
        make(model=None)["resid_post", -1]
    with pytest.raises(ModelFreedError, match="without a model: pass model="):
        make(model=None).stack_head_results()


def test_position_checks_come_before_any_model_access():
    with pytest.raises(ValueError, match="positions='last'.*no pos axis"):
        make("last", with_pos=False).decompose_resid(layer=1, pos_slice=-1)
    with pytest.raises(ValueError, match="mean_text"):
        make("mean_text", with_pos=False).apply_ln_to_stack(torch.zeros(1, 2, 4), 0)
    cache = make("last", with_pos=False)
    stack = cache.decompose_resid()
    torch.testing.assert_close(
        stack.sum(0),
        cache["resid_pre", 0]
        + sum(cache[kind, layer] for layer in range(2) for kind in ("attn_out", "mlp_out")),
    )


def test_image_rows_need_the_decoder_input_for_embed():
    cache = make()
    data = dict(cache.cache_dict)
    del data["blocks.0.hook_resid_pre"]
    image = ActivationCache(data, meta={"conditions": ["image", "text_only"]}, model=MODEL)
    with pytest.raises(KeyError, match="blocks.0.hook_resid_pre.*image features"):
        image.decompose_resid(layer=1)
    text = ActivationCache(data, meta={"conditions": ["text_only", "caption"]}, model=MODEL)
    assert text.decompose_resid(layer=1).shape == (3, 2, 5, 4)


def test_batch_slicing_and_removing_the_batch_dim_keep_the_rows_metadata():
    cache = make()
    one = cache.apply_slice_to_batch_dim([1])
    assert isinstance(one, ActivationCache) and one.meta["conditions"] == ["text_only"]
    assert torch.equal(one["resid_post", 0][0], cache["resid_post", 0][1])
    assert one.remove_batch_dim()["resid_post", 0].shape == (5, 4)
