"""TransformerLens parity on a VLM: the cache methods, model helpers, hook names and gradients.

References are independent of the code under test: TransformerLens's own ``run_with_cache`` on the
same bridge (its own hooks and its own ``ActivationCache``), a plain ``transformer_lens.ActivationCache``
over the same tensors, the residual stream itself (decompositions must sum to it), and
``torch.autograd`` on a second, plain HF model loaded from the checkpoint.
"""

from __future__ import annotations

import gc
import weakref

import pytest
import torch
import transformer_lens

from vlminterp import Condition, HookedVLM, PromptBatch, Sample
from vlminterp.cache.activation_cache import ModelFreedError
from vlminterp.references import hf_decoder_layers, load_reference_model
from vlminterp.testing import tiny_families

ATOL = 1e-5


def close(actual, expected, atol=ATOL):
    torch.testing.assert_close(actual.detach(), expected.detach(), atol=atol, rtol=0)


@pytest.fixture(scope="module")
def organism():
    return HookedVLM.from_organism()


@pytest.fixture(scope="module", params=["llava", "organism"])
def model(request, tiny_model, organism):
    return tiny_model if request.param == "llava" else organism


@pytest.fixture(scope="module")
def text_caches(model):
    """(ours, TransformerLens's) caches of one text-only prompt on the same model."""
    batch = PromptBatch.paired(model, [Sample(id="t", query="how do i make a bomb")], [Condition.TEXT_ONLY])
    _, ours = model.run_with_cache(batch)
    _, theirs = model.bridge.run_with_cache(batch.input_ids.to(model.device))
    assert isinstance(theirs, transformer_lens.ActivationCache)
    return ours, theirs


def image_batch(model, samples):
    return PromptBatch.paired(model, samples[:2], [Condition.IMAGE, Condition.TEXT_ONLY])


# ---------------------------------------------------------------------- text-only parity with TL
@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"apply_ln": True},
        {"incl_mid": True, "apply_ln": True},
        {"layer": 1, "mlp_input": True, "apply_ln": True},
    ],
)
def test_accumulated_resid_equals_transformer_lens(text_caches, kwargs):
    ours, theirs = text_caches
    mine, labels = ours.accumulated_resid(return_labels=True, **kwargs)
    ref, ref_labels = theirs.accumulated_resid(return_labels=True, **kwargs)
    assert labels == ref_labels
    close(mine, ref)


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"mode": "attn"},
        {"mode": "mlp", "apply_ln": True},
        {"layer": 1, "mlp_input": True, "apply_ln": True},
    ],
)
def test_decompose_resid_equals_transformer_lens(text_caches, kwargs):
    ours, theirs = text_caches
    mine, labels = ours.decompose_resid(return_labels=True, **kwargs)
    ref, ref_labels = theirs.decompose_resid(return_labels=True, **kwargs)
    assert labels == ref_labels
    close(mine, ref)


@pytest.mark.parametrize("kwargs", [{}, {"apply_ln": True}, {"incl_remainder": True, "layer": 1}])
def test_stack_head_results_equals_transformer_lens(text_caches, kwargs):
    ours, theirs = text_caches
    mine, labels = ours.stack_head_results(return_labels=True, **kwargs)
    ref, ref_labels = theirs.stack_head_results(return_labels=True, **kwargs)
    assert labels == ref_labels
    close(mine, ref)


def test_logit_attrs_and_apply_ln_to_stack_equal_transformer_lens(model, text_caches):
    ours, theirs = text_caches
    stack = theirs.decompose_resid()
    token, other = 3, 7
    close(ours.logit_attrs(stack, token), theirs.logit_attrs(stack, token))
    close(ours.logit_attrs(stack, token, incorrect_tokens=other), theirs.logit_attrs(stack, token, other))
    last = stack[:, :, -1]
    close(ours.logit_attrs(last, token, pos_slice=-1), theirs.logit_attrs(last, token, pos_slice=-1))
    noise = torch.randn(3, *stack.shape[1:])
    for layer, mlp_input in [(None, False), (0, False), (1, True)]:
        close(
            ours.apply_ln_to_stack(noise, layer, mlp_input), theirs.apply_ln_to_stack(noise, layer, mlp_input)
        )


def test_full_decomposition_stack_activation_and_short_names_equal_transformer_lens(model, text_caches):
    ours, theirs = text_caches
    mine, labels = ours.get_full_resid_decomposition(return_labels=True, apply_ln=True)
    ref, ref_labels = theirs.get_full_resid_decomposition(return_labels=True, apply_ln=True)
    assert labels == ref_labels
    close(mine, ref)
    close(ours.stack_activation("resid_post"), theirs.stack_activation("resid_post"))
    last = model.cfg.n_layers - 1
    assert torch.equal(ours["resid_post", -1], theirs[f"blocks.{last}.hook_resid_post"])
    assert torch.equal(ours["attn", 0], theirs["blocks.0.attn.hook_pattern"])
    assert torch.equal(ours["scale"], theirs["ln_final.hook_scale"])


def test_logit_lens_of_the_last_layer_is_the_models_logits(model):
    batch = PromptBatch.paired(model, [Sample(id="t", query="hello there")], [Condition.TEXT_ONLY])
    logits, cache = model.run_with_cache(batch)
    lens = model.unembed(model.ln_final(cache["resid_post", -1]))
    close(lens, logits, atol=1e-4)
    close(model.W_U, model.hf_model.get_output_embeddings().weight.T)
    close(model.W_E, model.hf_model.get_input_embeddings().weight)
    with pytest.raises(AttributeError, match="W_pos is only defined"):
        _ = model.W_pos  # rotary: no learned position embeddings


def test_token_helpers_and_roles_of_a_batch_row(tiny_model, samples):
    tok = tiny_model.tokenizer
    ids = tiny_model.to_tokens("what color is the car ?")
    assert ids[0].tolist() == tok("what color is the car ?")["input_ids"]
    assert tiny_model.to_string(ids[0]) == tok.decode(ids[0])
    batch = image_batch(tiny_model, samples)
    for row in range(len(batch)):
        tokens, roles = tiny_model.to_str_tokens(batch, row=row, return_roles=True)
        assert tokens == [tok.decode([t]) for t in batch.input_ids[row].tolist()]
        for role in ("image", "instruction", "template"):
            expected = batch.masks[role][row].nonzero().flatten().tolist()
            assert [i for i, r in enumerate(roles) if r == role] == expected
        assert roles.count("pad") == int((batch.attention_mask[row] == 0).sum())
    assert "image" in tiny_model.to_str_tokens(batch, row=0, return_roles=True)[1]
    with pytest.raises(ValueError, match="give the row to read"):
        tiny_model.to_str_tokens(batch)
    with pytest.raises(ValueError, match="PromptBatch input only"):
        tiny_model.to_str_tokens("hi", row=0)


# ---------------------------------------------------------------------- image prompts and positions
def test_decomposition_sums_to_the_residual_stream_on_image_prompts(model, samples):
    _, cache = model.run_with_cache(image_batch(model, samples))
    final = cache["resid_post", -1]
    close(cache.decompose_resid().sum(0), final, atol=1e-4)
    close(cache.get_full_resid_decomposition().sum(0), final, atol=1e-4)
    close(cache.stack_head_results(incl_remainder=True).sum(0), final, atol=1e-4)
    # TransformerLens's own cache over the same tensors takes "embed" = hook_embed, which on image
    # rows lacks the merged image features: its decomposition misses them (what this override fixes).
    plain = transformer_lens.ActivationCache(dict(cache.cache_dict), model.bridge)
    image_rows = torch.tensor([c == "image" for c in cache.meta["conditions"]])
    gap = (plain.decompose_resid().sum(0) - final).abs()
    assert gap[image_rows].max() > 1e-2 and gap[~image_rows].max() < 1e-4


def test_position_selected_caches_match_the_full_cache_sliced(model, samples):
    batch = image_batch(model, samples)
    _, full = model.run_with_cache(batch)
    _, last = model.run_with_cache(batch, positions="last")
    _, some = model.run_with_cache(batch, positions=torch.tensor([-3, -1]))
    for method, kwargs in [
        ("decompose_resid", {"apply_ln": True}),
        ("accumulated_resid", {"apply_ln": True, "incl_mid": True}),
        ("stack_head_results", {"apply_ln": True}),
    ]:
        ref = getattr(full, method)(pos_slice=-1, **kwargs)
        close(getattr(last, method)(**kwargs), ref)
        close(getattr(some, method)(pos_slice=-1, **kwargs), ref)
    assert not any(name.startswith("vision") for name in last)  # no prompt positions there


def test_methods_say_when_positions_were_not_kept(tiny_model, samples):
    batch = image_batch(tiny_model, samples)
    _, last = tiny_model.run_with_cache(batch, tiny_model.hook_names("resid_post"), positions="last")
    with pytest.raises(ValueError, match="positions='last'.*no pos axis"):
        last.accumulated_resid(pos_slice=-1)
    _, mean = tiny_model.run_with_cache(batch, positions="mean_text")
    mean.decompose_resid()  # linear: a mean decomposes
    with pytest.raises(ValueError, match="mean_text.*no layer-norm scale"):
        mean.decompose_resid(apply_ln=True)


def test_the_cache_does_not_keep_the_model_alive(samples):
    model = HookedVLM.tiny("llava")
    _, cache = model.run_with_cache(image_batch(model, samples), positions="last")
    bridge = weakref.ref(model.bridge)
    del model
    gc.collect()
    assert bridge() is None
    assert cache.decompose_resid().shape[0] == 5  # needs no weights
    with pytest.raises(ModelFreedError, match="was freed"):
        cache.stack_head_results()


# ---------------------------------------------------------------------- every family, hook names
@pytest.mark.parametrize("family", tiny_families())
def test_run_with_cache_without_a_filter_and_registered_hook_names(family, samples):
    model = HookedVLM.tiny(family)
    batch = image_batch(model, samples)
    _, cache = model.run_with_cache(batch)
    assert model.count_hooks() == 0
    assert set(model.hook_names("resid_post")) <= set(cache)
    close(cache.decompose_resid().sum(0), cache["resid_post", -1], atol=1e-4)
    seen: dict[str, str] = {}
    names = [n for n in cache if not n.endswith("_grad")]

    def record(x, hook, registered):
        seen[registered] = hook.name

    hooks = [(n, lambda x, hook, n=n: record(x, hook, n)) for n in names]
    with model.hooks(hooks):
        model(batch)
    assert model.count_hooks() == 0
    assert seen == {n: n for n in names}


def test_set_use_attn_result_exposes_head_results(samples):
    model = HookedVLM.tiny("llava")
    batch = image_batch(model, samples)
    _, before = model.run_with_cache(batch)
    assert "blocks.0.attn.hook_result" not in before
    model.set_use_attn_result(True)
    _, after = model.run_with_cache(batch)
    assert after["result", 0].shape[-2:] == (model.cfg.n_heads, model.cfg.d_model)
    close(after.stack_head_results(), before.stack_head_results(), atol=1e-5)
    model.set_use_split_qkv_input(True)
    _, split = model.run_with_cache(batch, "blocks.0.hook_q_input")
    assert split["blocks.0.hook_q_input"].shape[:2] == batch.input_ids.shape


# ---------------------------------------------------------------------- gradients
def metric(logits):
    return logits[:, -1].log_softmax(-1)[:, 3].sum()


def hf_gradients(model, batch, layers):
    """d metric / d (decoder layer output) on a plain HF model, with torch.autograd alone."""
    hf = load_reference_model(model)
    outputs = {}
    handles = [
        hf_decoder_layers(hf)[k].register_forward_hook(
            lambda m, i, o, k=k: outputs.__setitem__(k, o[0] if isinstance(o, tuple) else o)
        )
        for k in layers
    ]
    try:
        kwargs = {k: v.to(model.device) for k, v in batch.model_kwargs().items()}
        logits = hf(input_ids=batch.input_ids.to(model.device), **kwargs).logits
    finally:
        for h in handles:
            h.remove()
    return dict(zip(layers, torch.autograd.grad(metric(logits), [outputs[k] for k in layers]), strict=True))


def test_backward_hooks_and_incl_bwd_equal_torch_autograd_on_the_hf_model(model, samples):
    batch = image_batch(model, samples)
    layers = list(range(model.cfg.n_layers))
    ref = hf_gradients(model, batch, layers)
    names = model.hook_names("resid_post")
    got: dict[str, torch.Tensor] = {}
    model.run_with_hooks(
        batch, bwd_hooks=[(n, lambda g, hook: got.__setitem__(hook.name, g)) for n in names], metric=metric
    )
    _, cache = model.run_with_cache(batch, names, incl_bwd=True, metric=metric)
    real = batch.attention_mask.bool()
    for layer, name in zip(layers, names, strict=True):
        close(got[name][real], ref[layer][real])
        close(cache[name + "_grad"][real], ref[layer][real])
    assert model.count_hooks() == 0
    assert all(p.grad is None for p in model.hf_model.parameters())  # the weights are not touched


def test_backward_hooks_see_their_registered_name(tiny_model, samples):
    seen = []
    tiny_model.run_with_hooks(
        image_batch(tiny_model, samples),
        bwd_hooks=[("blocks.1.hook_resid_pre", lambda g, hook: seen.append(hook.name))],
        metric=metric,
    )
    assert seen == ["blocks.1.hook_resid_pre"]


def boom(*_, **__):
    raise RuntimeError("boom")


@pytest.mark.parametrize(
    "call, error",
    [
        (lambda m, b: m.run_with_hooks(b, [("blocks.0.hook_resid_post", boom)]), RuntimeError),
        (
            lambda m, b: m.run_with_hooks(b, bwd_hooks=[("blocks.0.hook_resid_post", boom)], metric=metric),
            RuntimeError,
        ),
        (lambda m, b: m.run_with_cache(b, incl_bwd=True, metric=boom), RuntimeError),
        (lambda m, b: m.run_with_cache(b, incl_bwd=True, metric=lambda logits: logits), ValueError),
        (lambda m, b: m.run_with_cache(b, incl_bwd=True), ValueError),
        (lambda m, b: m.run_with_hooks(b, bwd_hooks=[("blocks.0.hook_resid_post", boom)]), ValueError),
        (lambda m, b: m.run_with_cache(b, "blocks.0.attn.hook_result"), ValueError),
    ],
)
def test_no_hook_outlives_a_call_that_raised(tiny_model, samples, call, error):
    with pytest.raises(error):
        call(tiny_model, image_batch(tiny_model, samples))
    assert tiny_model.count_hooks() == 0


def test_the_fallback_adapter_caches_unfiltered_and_refuses_backward_hooks(samples):
    from vlminterp.testing import tiny_remote_vlm_dir

    model = HookedVLM.from_pretrained(tiny_remote_vlm_dir(), trust_remote_code=True)
    batch = image_batch(model, samples)
    _, cache = model.run_with_cache(batch)
    assert set(model.hook_names("resid_post")) <= set(cache)
    with pytest.raises(NotImplementedError, match="forward hooks only"):
        model.run_with_cache(batch, model.hook_names("resid_post"), incl_bwd=True, metric=metric)
    assert model.count_hooks() == 0


def test_an_interventions_cache_of_its_output_rows_keeps_the_tl_methods(tiny_model, samples):
    from vlminterp.interventions import CMRM

    fix = CMRM.sample_level(alpha=0.5)  # twin rows: the cache is cut to the output rows
    _, cache = fix.run_with_cache(tiny_model, samples[:2], positions="last")
    assert len(cache.meta["conditions"]) == 2
    heads = cache.stack_head_results(incl_remainder=True)
    close(heads.sum(0), cache["resid_post", -1], atol=1e-4)
