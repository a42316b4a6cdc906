"""Runs that start at the ablated layer (models/partial.py) equal the full forward, on several families.

References: the bridge's full forward with the same hooks, and a separately loaded plain HF model
whose head is zeroed by a torch pre-hook on ``o_proj`` (nothing of vlminterp touches it).
"""

from __future__ import annotations

import logging

import pytest
import torch

from vlminterp import Condition, HookedVLM, PromptBatch
from vlminterp.interventions import CMRM, ActivationPatch, HeadAblation
from vlminterp.models import partial
from vlminterp.models.partial import LayerStarts, start_layer
from vlminterp.references import hf_decoder_layers, load_reference_model
from vlminterp.sweeps import GapClosed, KLToUnsteered, RefusalScore, sweep
from vlminterp.sweeps.batching import stacked_hooks

# llama (llava), mRoPE [3, batch, pos] (qwen2.5-vl), sliding window + per-layer-type masks (gemma3).
FAMILIES = ["llava", "qwen2_5_vl", "gemma3"]


@pytest.fixture(scope="module", params=FAMILIES)
def model(request):
    return HookedVLM.tiny(request.param, n_layers=4)


@pytest.fixture(scope="module")
def organism():
    return HookedVLM.from_organism()


def _batch(model, samples):
    return PromptBatch.paired(model, samples, [Condition.IMAGE])


def _full(model, batch, hooks, capture=()):
    logits, cache = model.run_with_cache(batch, names_filter=list(capture), positions="last", fwd_hooks=hooks)
    return logits[:, -1], cache


def _hooks(model, layer, head=0):
    return HeadAblation([(layer, head)]).prepared(model).fwd_hooks


def _check_every_layer(model, batch):
    capture = [model.layer_hook("resid_post", 1), "ln_final.hook_normalized"]
    logits, _, starts = LayerStarts.record(model, batch, capture)
    assert starts.problem is None
    for layer in range(model.cfg.n_layers):
        hooks = _hooks(model, layer, head=layer % model.cfg.n_heads)
        expected, cache = _full(model, batch, hooks, capture)
        got, captured = starts.run(start_layer(model, [n for n, _ in hooks]), 1, hooks, capture)
        assert not torch.allclose(expected, logits[:, -1], atol=1e-4)  # the ablation changes the output
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
        for name in capture:
            torch.testing.assert_close(captured[name].cpu(), cache[name], rtol=0, atol=1e-5)


def test_run_from_the_ablated_layer_equals_the_full_forward(model, samples):
    batch = _batch(model, samples)
    assert model.cfg.n_layers == 4
    window = getattr(model.hf_model.config.get_text_config(), "sliding_window", None)
    assert model.family != "gemma3" or batch.input_ids.shape[1] > window  # the sliding window cuts in
    _check_every_layer(model, batch)


@pytest.mark.slow
@pytest.mark.reference
@pytest.mark.parametrize("family", ["mistral3", "llava_onevision", "idefics3"])
def test_run_from_the_ablated_layer_equals_the_full_forward_on_the_other_text_models(family, samples):
    model = HookedVLM.tiny(family)  # MistralModel, Qwen2Model, LlamaModel inside Idefics3
    _check_every_layer(model, _batch(model, samples))


def test_run_from_the_ablated_layer_equals_the_full_forward_on_the_organism(organism, samples):
    _check_every_layer(organism, _batch(organism, samples))


def test_stacked_points_equal_one_at_a_time(model, samples):
    batch = _batch(model, samples)
    _, _, starts = LayerStarts.record(model, batch, [])
    n = len(batch)
    points = [_hooks(model, 2, 1), [], _hooks(model, 3, 0)]
    got, _ = starts.run(2, 3, stacked_hooks(model, points, [n] * 3))
    for i, hooks in enumerate(points):
        alone, _ = starts.run(3 if i == 2 else 2, 1, hooks)
        torch.testing.assert_close(got[i * n : (i + 1) * n], alone, rtol=0, atol=1e-5)
        torch.testing.assert_close(got[i * n : (i + 1) * n], _full(model, batch, hooks)[0], rtol=0, atol=1e-5)


def test_head_zeroed_with_plain_torch_on_a_separate_hf_model_gives_the_same_logits(model, samples):
    batch = _batch(model, samples)
    _, _, starts = LayerStarts.record(model, batch, [])
    hf = load_reference_model(model)
    layer, head, d_head = 2, 1, model.cfg.d_head

    def zero_head(module, args):
        x = args[0].clone()
        x[..., head * d_head : (head + 1) * d_head] = 0
        return (x, *args[1:])

    handle = hf_decoder_layers(hf)[layer].self_attn.o_proj.register_forward_pre_hook(zero_head)
    try:
        with torch.no_grad():
            device = next(hf.parameters()).device
            kwargs = {k: v.to(device) for k, v in batch.model_kwargs().items()}
            expected = hf(input_ids=batch.input_ids.to(device), **kwargs).logits[:, -1]
    finally:
        handle.remove()
    got, _ = starts.run(layer, 1, _hooks(model, layer, head))
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


def test_sweep_from_layers_equals_the_full_forward_sweep_and_skips_lower_layers(tiny_model, samples):
    metrics = [RefusalScore(), KLToUnsteered(), GapClosed(layer=0)]
    grid = {"layer": [1], "head": [0, 1, 2]}

    def layer0_runs(from_layers):
        calls = []
        handle = tiny_model.bridge.blocks[0].register_forward_hook(lambda *a: calls.append(1))
        try:
            rows = sweep(tiny_model, samples, lambda layer, head: HeadAblation([(layer, head)]), grid, metrics,
                         progress=False, max_rows=8, from_layers=from_layers)  # fmt: skip
        finally:
            handle.remove()
        return rows, len(calls)

    fast, fast_calls = layer0_runs(True)
    full, full_calls = layer0_runs(False)
    assert fast_calls == 2  # the clean run and GapClosed's TEXT_ONLY targets; no grid point ran layer 0
    assert full_calls == 4  # ... and the two forwards of the 3 points (2 stacked + 1) from the embeddings
    assert [r["value"] for r in fast] == pytest.approx([r["value"] for r in full], abs=1e-5)


def test_cmrm_from_layer_sweep_equals_the_full_forward(tiny_model, samples):
    vectors = CMRM.fit(tiny_model, samples, progress=False)
    grid = {"alpha": [0.5, 1.0], "layer": [0, 1]}

    def make(alpha, layer):
        return CMRM(vectors, alpha=alpha, layers=range(layer, tiny_model.cfg.n_layers))

    fast = sweep(tiny_model, samples, make, grid, [RefusalScore(), KLToUnsteered()], progress=False)
    full = sweep(tiny_model, samples, make, grid, [RefusalScore(), KLToUnsteered()], progress=False,
                 from_layers=False)  # fmt: skip
    assert [r["value"] for r in fast] == pytest.approx([r["value"] for r in full], abs=1e-5)


def test_patching_text_only_activations_from_layers_equals_the_full_forward(tiny_model, samples):
    text = PromptBatch.paired(tiny_model, samples, [Condition.TEXT_ONLY])
    names = tiny_model.hook_names("resid_post") + tiny_model.hook_names("z")
    _, cache = tiny_model.run_with_cache(text, names_filter=names, positions="last")

    def patch(layer, head):
        heads = None if head is None else [head]
        kind = "resid_post" if head is None else "z"
        return ActivationPatch(cache, hook=kind, layers=layer, positions="last", heads=heads)

    grid = {"layer": [0, 1], "head": [None, 1]}
    fast = sweep(tiny_model, samples, patch, grid, [RefusalScore(), KLToUnsteered()], progress=False)
    full = sweep(tiny_model, samples, patch, grid, [RefusalScore(), KLToUnsteered()], progress=False,
                 from_layers=False)  # fmt: skip
    assert [r["value"] for r in fast] == pytest.approx([r["value"] for r in full], abs=1e-5)


def test_a_model_not_verified_runs_the_full_forward_and_says_so(tiny_model, samples, monkeypatch, caplog):
    monkeypatch.setattr(partial, "EXACT_TEXT_MODELS", frozenset())
    grid = {"layer": [1], "head": [0]}
    with caplog.at_level(logging.INFO, logger="vlminterp.sweeps.batching"):
        rows = sweep(tiny_model, samples, lambda layer, head: HeadAblation([(layer, head)]), grid,
                     RefusalScore(), progress=False)  # fmt: skip
    assert "runs the full forward" in caplog.text and "LlamaModel" in caplog.text
    batch = _batch(tiny_model, samples)
    steered = _full(tiny_model, batch, _hooks(tiny_model, 1, 0))[0].double()
    sorry, sure = tiny_model.tokenizer.convert_tokens_to_ids(["sorry", "sure"])
    harmful = [i for i, s in enumerate(samples) if s.label == "harmful"]
    assert rows[0]["value"] == pytest.approx(
        float((steered[harmful, sorry] - steered[harmful, sure]).mean()), abs=1e-5
    )
    _, _, starts = LayerStarts.record(tiny_model, batch, [])
    with pytest.raises(ValueError, match="cannot start at a layer"):
        starts.run(1)


def test_hooks_below_the_start_or_before_the_blocks_are_refused(tiny_model, samples):
    _, _, starts = LayerStarts.record(tiny_model, _batch(tiny_model, samples), [])
    with pytest.raises(ValueError, match="below layer 1"):
        starts.run(1, 1, _hooks(tiny_model, 0))
    assert start_layer(tiny_model, ["hook_embed"]) is None
    assert start_layer(tiny_model, ["unembed.hook_out"]) is None
    assert start_layer(tiny_model, ["ln_final.hook_normalized"]) == tiny_model.cfg.n_layers - 1


def test_a_remote_code_checkpoint_sweeps_with_the_full_forward_and_says_so(samples, caplog):
    from vlminterp.testing import tiny_remote_vlm_dir

    remote = HookedVLM.from_pretrained(tiny_remote_vlm_dir(), trust_remote_code=True)
    assert "no language model whose layers are the bridge's blocks" in partial.unsupported(remote)
    grid = {"layer": [1], "head": [0]}
    with caplog.at_level(logging.INFO, logger="vlminterp.sweeps.batching"):
        rows = sweep(remote, samples, lambda layer, head: HeadAblation([(layer, head)]), grid, KLToUnsteered(),
                     progress=False)  # fmt: skip
    assert "runs the full forward" in caplog.text
    batch = _batch(remote, samples)
    clean, steered = _full(remote, batch, [])[0].double(), _full(remote, batch, _hooks(remote, 1))[0].double()
    benign = [i for i, s in enumerate(samples) if s.label == "benign"]
    p, q = clean[benign].log_softmax(-1), steered[benign].log_softmax(-1)
    assert rows[0]["value"] == pytest.approx(float((p.exp() * (p - q)).sum(-1).mean()), abs=1e-6)
