"""Head ablation, directional ablation/addition and activation patching: the math, checked by hand."""

from __future__ import annotations

import pytest
import torch

from vlminterp import Condition, PromptBatch, Sample
from vlminterp.interventions import (
    ActivationPatch,
    DirectionAddition,
    DirectionalAblation,
    HeadAblation,
    SteeringVectors,
    SteeringVectorsMismatchError,
    mean_z,
)


@pytest.fixture(scope="module")
def image_batch(tiny_model, samples):
    return PromptBatch.paired(tiny_model, samples, [Condition.IMAGE])


def _cache(model, batch, names, intervention=None):
    """Logits and cache of ``batch``, unsteered or with ``intervention`` (its own run_with_cache)."""
    if intervention is None:
        return model.run_with_cache(batch, names_filter=names)
    return intervention.run_with_cache(model, batch, names_filter=names)


def _w_o(model, layer):
    """``W_O`` of ``layer`` as ``[d_model, n_heads * d_head]`` (HF ``o_proj.weight``)."""
    return model.bridge.blocks[layer].attn.o.original_component.weight.detach()


def test_zero_ablation_zeroes_one_head_and_removes_only_its_output(tiny_model, image_batch):
    layer, head, d_head = 1, 2, tiny_model.cfg.d_head
    names = [tiny_model.layer_hook("z", layer), tiny_model.layer_hook("attn_out", layer)]
    _, clean = _cache(tiny_model, image_batch, names)
    _, ablated = _cache(tiny_model, image_batch, names, HeadAblation([(layer - 2, head)]))  # -1: the last
    z_clean, z_abl = clean[names[0]], ablated[names[0]]
    assert bool((z_abl[:, :, head] == 0).all())
    others = [h for h in range(tiny_model.cfg.n_heads) if h != head]
    torch.testing.assert_close(z_abl[:, :, others], z_clean[:, :, others], rtol=0, atol=0)
    # attn_out is linear in z: ablating head h subtracts exactly z_h W_O^h.
    w_h = _w_o(tiny_model, layer)[:, head * d_head : (head + 1) * d_head]
    expected = clean[names[1]] - z_clean[:, :, head] @ w_h.T
    torch.testing.assert_close(ablated[names[1]], expected, rtol=1e-5, atol=1e-5)


def test_mean_ablating_every_head_equals_mean_attention_output(tiny_model, samples, image_batch):
    layer = 0
    ref = PromptBatch.paired(tiny_model, samples, [Condition.TEXT_ONLY, Condition.BLANK])
    out_name = tiny_model.layer_hook("attn_out", layer)
    _, ref_cache = _cache(tiny_model, ref, [out_name])
    w = ref.attention_mask.double()
    mean_out = (torch.einsum("bp,bpd->d", w, ref_cache[out_name].double()) / w.sum()).float()

    heads = [(layer, h) for h in range(tiny_model.cfg.n_heads)]
    ablation = HeadAblation(heads, mode="mean", mean_from=mean_z(tiny_model, ref, layers=[layer]))
    logits, cache = _cache(tiny_model, image_batch, [out_name], ablation)
    torch.testing.assert_close(cache[out_name], mean_out.expand_as(cache[out_name]), rtol=1e-5, atol=1e-5)

    def replace_by_mean(x, hook):
        return mean_out.to(x.dtype).expand_as(x).clone()

    reference = tiny_model.run_with_hooks(image_batch, [(out_name, replace_by_mean)])
    torch.testing.assert_close(logits, reference, rtol=1e-4, atol=1e-4)


def test_head_ablation_batched_equals_one_at_a_time(tiny_model, image_batch):
    ablation = HeadAblation([(0, 1), (1, 3)])
    hooks = ablation.prepared(tiny_model).fwd_hooks  # input-free: one set of hooks for any batch
    batched = tiny_model.run_with_hooks(image_batch, hooks)[:, -1]
    for i in range(len(image_batch)):
        single = tiny_model.run_with_hooks(image_batch.select([i]), hooks)[:, -1]
        torch.testing.assert_close(batched[i : i + 1], single, rtol=1e-4, atol=1e-4)


def test_head_ablation_in_generation_leaves_no_hooks(tiny_model, image_batch):
    with HeadAblation([(1, 0)], steps="all").applied(tiny_model):
        out = tiny_model.generate(image_batch, max_new_tokens=3)
    assert len(out) == len(image_batch)
    assert tiny_model.count_hooks() == 0


def test_directional_ablation_leaves_no_component_at_every_steered_layer(tiny_model, image_batch):
    torch.manual_seed(0)
    direction = torch.randn(tiny_model.cfg.n_layers, tiny_model.cfg.d_model)
    names = tiny_model.hook_names("resid_post")
    _, cache = _cache(tiny_model, image_batch, names, DirectionalAblation(direction))
    for layer, name in enumerate(names):
        unit = direction[layer] / direction[layer].norm()
        assert float((cache[name] @ unit).abs().max()) < 1e-5


def test_directional_ablation_at_one_layer_is_the_projection(tiny_model, image_batch):
    torch.manual_seed(1)
    r = torch.randn(tiny_model.cfg.d_model)
    name = tiny_model.layer_hook("resid_post", 0)
    _, clean = _cache(tiny_model, image_batch, [name])
    _, steered = _cache(tiny_model, image_batch, [name], DirectionalAblation(r, layers=0, hook="resid_post"))
    unit = r / r.norm()
    x = clean[name]
    torch.testing.assert_close(steered[name], x - (x @ unit)[..., None] * unit, rtol=1e-5, atol=1e-5)


def test_direction_addition_adds_alpha_r_at_every_position(tiny_model, image_batch):
    torch.manual_seed(2)
    r = torch.randn(tiny_model.cfg.d_model)
    name = tiny_model.layer_hook("resid_post", 1)
    _, clean = _cache(tiny_model, image_batch, [name])
    _, steered = _cache(
        tiny_model, image_batch, [name], DirectionAddition(r, alpha=-0.7, layers=1, hook="resid_post")
    )
    torch.testing.assert_close(
        steered[name] - clean[name], (-0.7 * r).expand_as(clean[name]), rtol=1e-5, atol=1e-5
    )
    _, last = _cache(tiny_model, image_batch, [name], DirectionAddition(r, 2.0, [1], "resid_post", "last"))
    torch.testing.assert_close(last[name][:, :-1], clean[name][:, :-1], rtol=0, atol=0)
    first = tiny_model.layer_hook("resid_post", 0)  # layers="all" acts at layer 0 too (its input is clean)
    _, clean = _cache(tiny_model, image_batch, [first])
    _, every = _cache(
        tiny_model, image_batch, [first], DirectionAddition(r, alpha=-0.7, layers="all", hook="resid_post")
    )
    torch.testing.assert_close(
        every[first] - clean[first], (-0.7 * r).expand_as(clean[first]), rtol=1e-5, atol=1e-5
    )


def test_patching_resid_pre_layer0_reproduces_the_source_run(tiny_model, samples):
    # BLANK images of the same size give the same token layout as IMAGE, so every position lines up.
    image = PromptBatch.paired(tiny_model, samples, [Condition.IMAGE])
    blank = PromptBatch.paired(tiny_model, samples, [Condition.BLANK])
    assert torch.equal(image.attention_mask, blank.attention_mask)
    name = tiny_model.layer_hook("resid_pre", 0)
    for source_batch in (image, blank):
        source_logits, cache = _cache(tiny_model, source_batch, [name])
        patched, _ = ActivationPatch(cache, hook="resid_pre", layers=0).run_with_cache(tiny_model, image, [])
        torch.testing.assert_close(patched, source_logits, rtol=0, atol=0)


def test_patching_text_only_last_layer_gives_text_only_next_token_logits(tiny_model, samples):
    image = PromptBatch.paired(tiny_model, samples, [Condition.IMAGE])
    text = PromptBatch.paired(tiny_model, samples, [Condition.TEXT_ONLY])
    name = tiny_model.layer_hook("resid_post", tiny_model.cfg.n_layers - 1)
    text_logits, cache = _cache(tiny_model, text, [name])
    patch = ActivationPatch(cache, layers=-1, positions=[-1])
    patched, _ = patch.run_with_cache(tiny_model, image, [])
    torch.testing.assert_close(patched[:, -1], text_logits[:, -1], rtol=0, atol=0)
    assert not torch.allclose(patched[:, -2], text_logits[:, -2])  # only the last position was patched
    # A cache captured at the last position alone patches the same way.
    _, last_cache = tiny_model.run_with_cache(text, names_filter=[name], positions="last")
    with ActivationPatch(last_cache, layers=-1, positions="last").applied(tiny_model):
        again = tiny_model.forward(image)
    torch.testing.assert_close(again, patched, rtol=0, atol=0)


def test_patching_one_head_changes_only_that_head(tiny_model, samples):
    image = PromptBatch.paired(tiny_model, samples, [Condition.IMAGE])
    text = PromptBatch.paired(tiny_model, samples, [Condition.TEXT_ONLY])
    name = tiny_model.layer_hook("z", 1)
    _, source = _cache(tiny_model, text, [name])
    _, clean = _cache(tiny_model, image, [name])
    _, patched = _cache(
        tiny_model, image, [name], ActivationPatch(source, "z", 1, positions="last", heads=[3])
    )
    z = patched[name]
    torch.testing.assert_close(z[:, -1, 3], source[name][:, -1, 3], rtol=0, atol=0)
    torch.testing.assert_close(z[:, -1, :3], clean[name][:, -1, :3], rtol=0, atol=0)
    torch.testing.assert_close(z[:, :-1], clean[name][:, :-1], rtol=0, atol=0)


def test_a_raising_hook_leaves_no_hooks(tiny_model, samples, no_shape_checks):
    image = PromptBatch.paired(tiny_model, samples, [Condition.IMAGE])
    one = PromptBatch.paired(tiny_model, samples[:1], [Condition.TEXT_ONLY])
    name = tiny_model.layer_hook("resid_post", 0)
    _, cache = _cache(tiny_model, one, [name])
    patch = ActivationPatch(cache, layers=0, positions="last")
    with pytest.raises(ValueError, match="same rows"), patch.applied(tiny_model):
        tiny_model.forward(image)
    assert tiny_model.count_hooks() == 0
    with pytest.raises(ValueError, match="equal length"):
        ActivationPatch(cache, layers=0).run_with_cache(tiny_model, image.select([0]), [name])
    assert tiny_model.count_hooks() == 0


def test_bad_arguments_raise_naming_the_fix(tiny_model, image_batch):
    with pytest.raises(ValueError, match="out of range for 4 heads"):
        HeadAblation([(0, 9)]).prepared(tiny_model)
    with pytest.raises(ValueError, match="out of range for a 2-layer"):
        HeadAblation([(5, 0)]).prepared(tiny_model)
    with pytest.raises(ValueError, match="name a head twice"):
        HeadAblation([(1, 0), (-1, 0)]).prepared(tiny_model)
    with pytest.raises(ValueError, match="needs mean_from"):
        HeadAblation([(0, 0)], mode="mean")
    with pytest.raises(ValueError, match="Choose from"):
        HeadAblation([(0, 0)], mode="median")
    with pytest.raises(ValueError, match=r"must be \[n_layers=2"):
        HeadAblation([(0, 0)], mode="mean", mean_from=torch.zeros(3, 4)).prepared(tiny_model)
    means = torch.zeros(2, 4, 16)
    means[1, 2, 5] = float("nan")
    with pytest.raises(ValueError, match=r"mean_from is not finite \(NaN or inf\) at heads \[\(1, 2\)\]"):
        HeadAblation([(0, 2), (1, 2)], mode="mean", mean_from=means).prepared(tiny_model)
    with pytest.raises(ValueError, match="the direction is zero, so it has no unit vector"):
        DirectionalAblation(torch.zeros(64))
    with pytest.raises(ValueError, match=r"zero at layers \[0\]"):
        DirectionalAblation(torch.stack([torch.zeros(64), torch.ones(64)]))
    with pytest.raises(ValueError, match=r"d_model=64"):
        DirectionAddition(torch.ones(10), layers=[0]).prepared(tiny_model)
    with pytest.raises(ValueError, match="3 rows"):
        DirectionAddition(torch.ones(3, 64), layers=[0]).prepared(tiny_model)
    with pytest.raises(ValueError, match="alpha=inf"):
        DirectionAddition(torch.ones(64), alpha=float("inf"))
    with pytest.raises(ValueError, match="not finite"):
        DirectionalAblation(torch.full((64,), float("nan")))
    fitted = SteeringVectors.from_model(tiny_model, torch.ones(2, 64), layers=(1,))
    with pytest.raises(SteeringVectorsMismatchError, match="not fitted"):
        DirectionalAblation(fitted)
    name = tiny_model.layer_hook("resid_post", 0)
    _, cache = _cache(tiny_model, image_batch, [name])
    with pytest.raises(ValueError, match="not in the source cache"):
        ActivationPatch(cache, layers=1).prepared(tiny_model)
    with pytest.raises(ValueError, match="must be negative"):
        ActivationPatch(cache, layers=0, positions=[3])
    assert tiny_model.count_hooks() == 0


def test_to_dict_is_json_ready(tiny_model):
    import json

    for intervention in (
        HeadAblation([(1, 2), (0, 1)]),
        DirectionalAblation(torch.ones(64), layers=[1]),
        DirectionAddition(torch.ones(64), alpha=0.5, layers=[0, 1]),
    ):
        json.dumps(intervention.to_dict())
    assert HeadAblation([(1, 2), (0, 1)]).to_dict()["heads"] == [[0, 1], [1, 2]]
    sample = Sample(id="x", query="hi")
    batch = PromptBatch.paired(tiny_model, [sample], [Condition.TEXT_ONLY])
    _, cache = _cache(tiny_model, batch, [tiny_model.layer_hook("resid_post", 0)])
    assert ActivationPatch(cache, layers=0, positions=[-2, -1]).to_dict()["positions"] == [-2, -1]
