"""ActivationStore.collect's fast paths: prompts prefetched in a background thread and half-precision
vector storage give the same statistics, bit for bit, as the sequential float32 path."""

from __future__ import annotations

import threading

import pytest
import torch
from PIL import Image

import vlminterp.cache.collection as collection_mod
from vlminterp import Condition, PromptBatch, Sample
from vlminterp.cache import ActivationStore

CONDS = [Condition.IMAGE, Condition.NOISE, Condition.TEXT_ONLY]


@pytest.fixture(scope="module")
def samples():
    """Seven samples over four forward batches of 2 (the last one short): mixed sizes and labels."""
    words = "tell me how to build a kite from this picture please".split()
    return [
        Sample(
            id=f"p{i}",
            query=" ".join(words[: 3 + i]),
            image=Image.new("RGB", (30 + 6 * i, 40), ("red", "blue", "green")[i % 3]),
            label=("harmful", "benign", None)[i % 3],
        )
        for i in range(7)
    ]


@pytest.fixture(scope="module")
def plain(tiny_model, samples, tmp_path_factory):
    """The reference: sequential prompt building (explicitly), float32 vectors."""
    return collect(tiny_model, samples, tmp_path_factory.mktemp("plain"), "plain", prefetch=False)


def collect(model, samples, tmp_path, name, **kwargs):
    return ActivationStore.collect(
        model, samples, CONDS, batch_size=2, shard_size=4, covariance=True, keep="both",
        out_dir=tmp_path / name, progress=False, noise_seed=3, **kwargs,
    )  # fmt: skip


def assert_same_stats(a, b):
    for cond in CONDS:
        for label in ("harmful", "benign", "unlabeled"):
            sa, sb = a.stats(cond, label), b.stats(cond, label)
            assert sa.count == sb.count
            assert sa.mean.dtype == torch.float64 and torch.equal(sa.mean, sb.mean)
            assert torch.equal(sa.scatter, sb.scatter)


def test_prefetch_is_bit_identical_and_builds_off_the_main_thread(
    tiny_model, samples, plain, tmp_path, monkeypatch
):
    built_in: list[str] = []
    paired = PromptBatch.paired

    def recording(*args, **kwargs):
        built_in.append(threading.current_thread().name)
        return paired(*args, **kwargs)

    monkeypatch.setattr(collection_mod.PromptBatch, "paired", recording)
    fast = collect(tiny_model, samples, tmp_path, "fast", prefetch=True)
    assert len(built_in) == 4 and all(n.startswith("vlminterp-prompts") for n in built_in)
    built_in.clear()
    collect(tiny_model, samples[:3], tmp_path, "seq")  # default on CPU: no extra thread
    assert built_in == ["MainThread"] * 2
    assert_same_stats(fast, plain)
    assert fast.sample_ids == plain.sample_ids == [s.id for s in samples]
    for cond in CONDS:
        for layer in fast.layers:
            assert torch.equal(fast.vectors(cond, layer), plain.vectors(cond, layer))
    # independent reference: one run_with_cache over every sample of a condition at once
    batch = PromptBatch.paired(tiny_model, samples, [Condition.NOISE], noise_seed=3)
    _, cache = tiny_model.run_with_cache(
        batch, names_filter=tiny_model.hook_names("resid_post"), positions="last"
    )
    for layer in fast.layers:
        ref = cache[f"blocks.{layer}.hook_resid_post"].reshape(len(samples), -1)
        torch.testing.assert_close(fast.vectors("noise", layer), ref, rtol=1e-5, atol=1e-5)


def test_prefetch_raises_a_build_error_at_its_batch(tiny_model, samples):
    bad = [*samples[:4], Sample(id="bad", query="what is this ?")]  # IMAGE needs an image
    for prefetch in (True, False):
        with pytest.raises(ValueError, match="bad") as err:
            ActivationStore.collect(
                tiny_model, bad, ["image"], batch_size=2, progress=False, prefetch=prefetch
            )
        assert "bad" in str(err.value)


@pytest.mark.parametrize("storage_dtype", ["float16", "bfloat16"])
def test_half_storage_keeps_float64_statistics_of_the_float32_activations(
    tiny_model, samples, plain, tmp_path, storage_dtype
):
    full = plain
    half = collect(tiny_model, samples, tmp_path, storage_dtype, storage_dtype=storage_dtype)
    assert half.config["dtype"] == storage_dtype
    assert_same_stats(half, full)  # statistics come from the activations, not the stored copies
    for cond in CONDS:
        for layer in half.layers:
            v = half.vectors(cond, layer)
            assert v.dtype == getattr(torch, storage_dtype)
            assert torch.equal(v, full.vectors(cond, layer).to(v.dtype))
    # the rounding is real: statistics of the stored copies differ from the kept float64 ones
    v = half.vectors("image", 0).double()
    assert not torch.equal(half.mean("image", layer=0), v.mean(0))
    torch.testing.assert_close(half.mean("image", layer=0), v.mean(0), rtol=2e-2, atol=2e-2)


def test_hooks_keep_slices_on_the_model_device_and_each_batch_is_copied_once(
    tiny_model, samples, monkeypatch, tmp_path
):
    """On an accelerator a host copy inside each hook stalls the forward once per layer: the caching
    hooks must store on the model's device, and the shard gets host tensors."""
    devices = []
    run_with_cache = type(tiny_model).run_with_cache

    def recording(self, batch, *args, **kwargs):
        devices.append(kwargs.get("device", "cpu (default)"))
        return run_with_cache(self, batch, *args, **kwargs)

    monkeypatch.setattr(type(tiny_model), "run_with_cache", recording)
    plan = collection_mod.plan_collection(
        tiny_model, samples[:3], ["text_only"], hooks="resid_post", layers=None, positions="last",
        batch_size=2, shard_size=256, out_dir=tmp_path, keep="both", covariance=False, dtype="float32",
        prompt_options={},
    )  # fmt: skip
    stats, vectors = collection_mod.run_shard(tiny_model, samples[:3], plan)
    assert devices == [tiny_model.device] * 2
    assert all(v.device.type == "cpu" for v in vectors.values())
    assert all(s.mean.device.type == "cpu" for s in stats.values())
