"""ActivationStore.collect's fast paths give the same results, bit for bit, as the paths without them:
prompts prefetched in a background thread, half-precision vector storage (float64 statistics of the
float32 activations), forwards that stop after the last collected layer and fill no KV cache
(against the whole bridge forward with HF's cache, and plain transformers), on TransformerLens and
fallback bridges; and ``hooks()`` reads the bridge's hook map once."""

from __future__ import annotations

import threading

import pytest
import torch
from PIL import Image

import vlminterp.cache.collection as collection_mod
from tests.conftest import hf_forward
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


# ---------------------------------------------------------------------- forwards that stop early, no KV cache
def calls_per_module(model):
    """Counts of forward calls (entered) of block 1, the final norm and the unembedding (plain torch hooks)."""
    bridge = model.bridge
    modules = {"block1": bridge.blocks[1], "ln_final": bridge.ln_final, "unembed": bridge.unembed}
    counts = dict.fromkeys(modules, 0)
    handles = [
        m.register_forward_pre_hook(lambda *_, k=k: counts.__setitem__(k, counts[k] + 1))
        for k, m in modules.items()
    ]
    return counts, handles


def full_forward_vectors(model, batch, kind="resid_post"):
    """The path without the fast paths, written out: the whole bridge forward with HF's KV cache filled
    (``use_cache=True``), the hook kind cached at every layer, last position ([rows, layers, d])."""
    seen = {}
    hooks = [
        (name, lambda x, hook: seen.__setitem__(hook.name, x[:, -1].clone()))
        for name in model.hook_names(kind)
    ]
    kwargs = {k: v.to(model.device) for k, v in batch.model_kwargs().items()}
    with torch.no_grad(), model.hooks(hooks):
        logits, past = model.bridge(batch.input_ids, return_type="logits_and_cache", use_cache=True, **kwargs)
    assert past is not None and logits.shape[1] == batch.input_ids.shape[1]  # the slow path really ran
    return torch.stack([seen[n].reshape(len(batch), -1) for n in model.hook_names(kind)], dim=1)


@pytest.mark.parametrize("layers", [[0], [1], [1, 0]])
def test_collect_stops_after_its_last_layer_and_equals_the_full_forward(
    tiny_model, samples, tmp_path, layers
):
    counts, handles = calls_per_module(tiny_model)
    try:
        store = ActivationStore.collect(
            tiny_model, samples, CONDS, hooks=("resid_post", "attn_out"), layers=layers, batch_size=len(samples),
            out_dir=tmp_path, keep="both", progress=False, noise_seed=3,
        )  # fmt: skip
    finally:
        for h in handles:
            h.remove()
    ran_block1 = max(layers) == 1
    assert counts == {"block1": len(CONDS) * ran_block1, "ln_final": 0, "unembed": 0}
    for cond in CONDS:  # one forward per condition over every sample: the same batch as below
        batch = PromptBatch.paired(tiny_model, samples, [cond], noise_seed=3)
        for kind in ("resid_post", "attn_out"):
            ref = full_forward_vectors(tiny_model, batch, kind)
            for layer in layers:
                assert torch.equal(store.vectors(cond, layer, hook=kind), ref[:, layer]), (cond, kind, layer)
            rows = [i for i, s in enumerate(samples) if s.label == "harmful"]
            mean = ref[rows][:, layers].double().mean(0)
            torch.testing.assert_close(store.mean(cond, "harmful", hook=kind), mean, rtol=1e-12, atol=1e-12)


def test_collect_equals_plain_transformers(tiny_model, samples):
    """An independent reference: a plain HF llava from the same folder, every decoder layer's output."""
    from transformers import LlavaForConditionalGeneration

    hf = LlavaForConditionalGeneration.from_pretrained(
        tiny_model.cfg.model_id, attn_implementation="eager"
    ).eval()
    store = ActivationStore.collect(tiny_model, samples, ["image"], batch_size=len(samples), progress=False)
    batch = PromptBatch.paired(tiny_model, samples, [Condition.IMAGE])
    _, states = hf_forward(hf, batch)
    expected = torch.stack([s[:, -1] for s in states], dim=1).double().mean(0)
    torch.testing.assert_close(store.mean("image"), expected, rtol=1e-5, atol=1e-5)


def test_forwards_fill_no_kv_cache_and_give_the_same_logits(tiny_model, samples):
    """forward / run_with_cache pass use_cache=False to HF; the logits equal a forward that fills the cache."""
    batch = PromptBatch.paired(tiny_model, samples, [Condition.IMAGE, Condition.TEXT_ONLY])
    flags = []
    handle = tiny_model.hf_model.register_forward_pre_hook(
        lambda module, args, kwargs: flags.append(kwargs.get("use_cache")), with_kwargs=True
    )
    try:
        logits = tiny_model(batch)
        cached_logits, cache = tiny_model.run_with_cache(
            batch, names_filter=tiny_model.hook_names("resid_post")
        )
    finally:
        handle.remove()
    assert flags == [False, False]
    kwargs = batch.model_kwargs()
    with torch.no_grad():
        ref, past = tiny_model.bridge(
            batch.input_ids, return_type="logits_and_cache", use_cache=True, **kwargs
        )
    assert past is not None
    assert torch.equal(logits, ref) and torch.equal(cached_logits, ref)


def test_run_with_cache_stop_at_layer(tiny_model, samples):
    """TransformerLens's stop_at_layer: blocks 0..k-1 run, the residual after block k-1 comes back."""
    batch = PromptBatch.paired(tiny_model, samples, [Condition.IMAGE])
    _, full = tiny_model.run_with_cache(batch, names_filter=tiny_model.hook_names("resid_post"))
    counts, handles = calls_per_module(tiny_model)
    try:
        resid, cache = tiny_model.run_with_cache(batch, stop_at_layer=1)  # every hook that fires
    finally:
        for h in handles:
            h.remove()
    assert counts == {"block1": 0, "ln_final": 0, "unembed": 0}
    assert torch.equal(resid, full["blocks.0.hook_resid_post"])
    assert torch.equal(cache["blocks.0.hook_resid_post"], resid)
    assert "blocks.0.hook_resid_pre" in cache and not any(
        k.startswith(("blocks.1.", "ln_final")) for k in cache
    )
    resid2, _ = tiny_model.run_with_cache(batch, "blocks.1.hook_resid_post", stop_at_layer=2)
    assert torch.equal(resid2, full["blocks.1.hook_resid_post"])


def test_run_with_cache_stop_at_layer_errors(tiny_model, samples, no_shape_checks):
    batch = PromptBatch.paired(tiny_model, samples[:1], [Condition.TEXT_ONLY])
    with pytest.raises(ValueError, match=r"ends the forward before \['blocks.1.hook_resid_post'\]"):
        tiny_model.run_with_cache(batch, tiny_model.hook_names("resid_post"), stop_at_layer=1)
    with pytest.raises(ValueError, match=r"before \['ln_final.hook_normalized'\]"):
        tiny_model.run_with_cache(batch, "ln_final.hook_normalized", stop_at_layer=2)
    for bad in (0, 3, True, 1.0):
        with pytest.raises(ValueError, match=r"stop_at_layer must be an int in 1..2"):
            tiny_model.run_with_cache(batch, stop_at_layer=bad)
    with pytest.raises(ValueError, match="drop stop_at_layer"):
        tiny_model.run_with_cache(batch, incl_bwd=True, metric=lambda x: x.sum(), stop_at_layer=1)


def test_collect_stops_early_on_a_fallback_bridge(samples, tmp_path):
    """A remote-code checkpoint (no TransformerLens adapter) stops at the same hook: equal vectors."""
    from vlminterp import HookedVLM
    from vlminterp.testing import tiny_remote_vlm_dir

    remote = HookedVLM.from_pretrained(tiny_remote_vlm_dir(), trust_remote_code=True)
    entered = []
    layers = remote.hf_model.get_submodule(remote.bridge.cfg.layers_path)  # a plain torch hook on layer 1
    handle = layers[1].register_forward_pre_hook(lambda *_: entered.append(1))
    try:
        store = ActivationStore.collect(
            remote, samples, ["image"], layers=[0], batch_size=len(samples), out_dir=tmp_path, keep="vectors",
            progress=False,
        )  # fmt: skip
        assert entered == []
        batch = PromptBatch.paired(remote, samples, [Condition.IMAGE])
        _, full = remote.run_with_cache(batch, names_filter=remote.hook_names("resid_post"), positions="last")
        assert entered == [1]
    finally:
        handle.remove()
    assert torch.equal(store.vectors("image", 0), full["blocks.0.hook_resid_post"])
    assert remote.count_hooks() == 0


def test_hooks_read_the_bridge_hook_dict_once(tiny_model, monkeypatch):
    """TransformerBridge.hook_dict rebuilds its alias map on every access: one read per hooks() call."""
    bridge_type = type(tiny_model.bridge)
    reads = []
    prop = bridge_type.hook_dict
    monkeypatch.setattr(bridge_type, "hook_dict", property(lambda self: reads.append(1) or prop.fget(self)))
    names = tiny_model.hook_names("resid_post") + tiny_model.hook_names("attn_out")
    with tiny_model.hooks([(n, lambda x, hook: None) for n in names]):
        pass
    assert len(reads) == 1
