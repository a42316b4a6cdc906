"""CMRM: the sign rule, exactness of fitted vectors, sample-level twins, batching, and a transformers reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vlminterp import Condition, PromptBatch
from vlminterp.interventions import CMRM, SteeringVectors, SteeringVectorsMismatchError


def _last(model, batch, layers=None, fwd_hooks=()):
    """Last-position resid_post ``[layers, batch, d_model]``, float64."""
    names = model.hook_names("resid_post", layers)
    _, cache = model.run_with_cache(batch, names_filter=names, positions="last", fwd_hooks=fwd_hooks)
    return torch.stack([cache[n] for n in names]).double()


@pytest.fixture(scope="module")
def mean_vectors(tiny_model, samples):
    return CMRM.fit(tiny_model, samples, progress=False)


def test_fit_mean_equals_hand_computation(tiny_model, samples, mean_vectors):
    text = _last(tiny_model, PromptBatch.paired(tiny_model, samples, [Condition.TEXT_ONLY]))
    blank = _last(tiny_model, PromptBatch.paired(tiny_model, samples, [Condition.BLANK]))
    expected = (text - blank).mean(1)
    torch.testing.assert_close(mean_vectors.vectors.double(), expected, atol=1e-6, rtol=0)
    assert mean_vectors.method == "cmrm" and mean_vectors.meta["estimator"] == "mean"
    assert mean_vectors.anchor == "4 samples (benign: 2, harmful: 1, unlabelled: 1)"


def test_fit_pc1_equals_sklearn_with_sign_along_mean(tiny_model, samples, mean_vectors):
    from sklearn.decomposition import PCA

    pc1 = CMRM.fit(tiny_model, samples, estimator="pc1", progress=False)
    text = _last(tiny_model, PromptBatch.paired(tiny_model, samples, [Condition.TEXT_ONLY]))
    blank = _last(tiny_model, PromptBatch.paired(tiny_model, samples, [Condition.BLANK]))
    for layer in range(tiny_model.cfg.n_layers):
        reference = PCA(n_components=1).fit((text - blank)[layer].numpy()).components_[0]
        mine = pc1.vectors[layer].numpy()
        assert abs(abs(float(np.dot(mine, reference))) - 1) < 1e-5  # same axis, unit norm
        assert float(np.dot(mine, mean_vectors.vectors[layer].numpy())) > 0  # the fixed sign convention


@pytest.mark.parametrize("alpha", [1.0, -1.0])
@pytest.mark.parametrize("layer", [0, 1])
def test_dataset_sign_moves_blank_centroid_onto_text_centroid(
    tiny_model, samples, mean_vectors, alpha, layer
):
    """(b) alpha=1 at one layer: steered BLANK centroid == TEXT_ONLY centroid; (c) alpha=-1: the other way."""
    text = _last(tiny_model, PromptBatch.paired(tiny_model, samples, [Condition.TEXT_ONLY]), [layer])[0]
    blank_batch = PromptBatch.paired(tiny_model, samples, [Condition.BLANK])
    blank = _last(tiny_model, blank_batch, [layer])[0]
    hooks = CMRM(mean_vectors, alpha=alpha, layers=[layer]).prepared(tiny_model).fwd_hooks
    steered = _last(tiny_model, blank_batch, [layer], hooks)[0]
    gap = text.mean(0) - blank.mean(0)
    torch.testing.assert_close(steered.mean(0), blank.mean(0) + alpha * gap, atol=1e-5, rtol=0)
    distance = (text.mean(0) - steered.mean(0)).norm()
    if alpha == 1.0:
        assert distance < 1e-5
    else:
        torch.testing.assert_close(distance, 2 * gap.norm(), atol=1e-5, rtol=0)


@pytest.mark.parametrize("alpha", [1.0, -1.0])
def test_sample_level_sign_blank_input_lands_on_its_text_state(tiny_model, samples, alpha):
    """(a) sample-level alpha=1 at layer l on the BLANK input == that sample's TEXT_ONLY state."""
    sl = CMRM.sample_level(alpha=alpha, layers=[1])
    batch = sl.prompts(tiny_model, samples, condition=Condition.BLANK)
    n = len(samples)
    clean = _last(tiny_model, batch, [1])[0]
    with sl.applied(tiny_model, batch):
        steered = _last(tiny_model, batch, [1])[0]
    text, blank = clean[n : 2 * n], clean[2 * n :]
    torch.testing.assert_close(steered[:n], clean[:n] + alpha * (text - blank), atol=1e-5, rtol=0)
    if alpha == 1.0:
        torch.testing.assert_close(steered[:n], text, atol=1e-5, rtol=0)
    assert torch.equal(steered[n:], clean[n:]), "twin rows must never be steered"


def test_sample_level_vectors_come_from_unsteered_twins(tiny_model, samples):
    """With several layers, each layer's added vector is text - blank of the unsteered twins at that layer."""
    sl = CMRM.sample_level(alpha=0.7)
    batch = sl.prompts(tiny_model, samples)
    n = len(samples)
    names = tiny_model.hook_names("resid_post")
    records = {name: [] for name in names}
    rec = [(name, lambda x, hook, name=name: records[name].append(x[:, -1].clone())) for name in names]
    with tiny_model.hooks(rec), sl.applied(tiny_model, batch), tiny_model.hooks(rec):
        tiny_model.forward(batch)
    for name in names:
        before, after = records[name]
        expected = 0.7 * (before[n : 2 * n] - before[2 * n :])
        torch.testing.assert_close(after[:n] - before[:n], expected, atol=1e-6, rtol=0)


def test_alpha_zero_is_exact_noop(tiny_model, samples, mean_vectors):
    batch = PromptBatch.paired(tiny_model, samples, [Condition.IMAGE])
    clean = tiny_model.forward(batch)
    noop = CMRM(mean_vectors, alpha=0.0).prepared(tiny_model)
    assert torch.equal(tiny_model.run_with_hooks(batch, noop.fwd_hooks), clean)
    sl = CMRM.sample_level(alpha=0.0)
    triple = sl.prompts(tiny_model, samples)
    with sl.applied(tiny_model, triple):
        steered = tiny_model.forward(triple)
    assert torch.equal(steered, tiny_model.forward(triple))
    assert (
        sl.generate(tiny_model, samples, max_new_tokens=5).tokens
        == tiny_model.generate(batch, max_new_tokens=5).tokens
    )


@pytest.mark.parametrize("level", ["dataset", "sample"])
def test_batched_equals_one_at_a_time(tiny_model, samples, mean_vectors, level):
    sl = CMRM.sample_level(alpha=3.0, layers=[0, 1])
    if level == "sample":
        batch = sl.prompts(tiny_model, samples)
        with sl.applied(tiny_model, batch):
            together = _last(tiny_model, batch)[:, : len(samples)]
        alone = []
        for s in samples:
            one = sl.prompts(tiny_model, [s])
            with sl.applied(tiny_model, one):
                alone.append(_last(tiny_model, one)[:, :1])
        gen = sl.generate(tiny_model, samples, max_new_tokens=6).tokens
        gen_alone = [sl.generate(tiny_model, [s], max_new_tokens=6).tokens[0] for s in samples]
    else:
        hooks = CMRM(mean_vectors, alpha=3.0).prepared(tiny_model).fwd_hooks
        batch = PromptBatch.paired(tiny_model, samples, [Condition.IMAGE])
        together = _last(tiny_model, batch, fwd_hooks=hooks)
        alone = [_last(tiny_model, batch.select([i]), fwd_hooks=hooks) for i in range(len(samples))]
        with CMRM(mean_vectors, alpha=3.0).applied(tiny_model):
            gen = tiny_model.generate(batch, max_new_tokens=6).tokens
            gen_alone = [
                tiny_model.generate(batch.select([i]), max_new_tokens=6).tokens[0]
                for i in range(len(samples))
            ]
    torch.testing.assert_close(together, torch.cat(alone, dim=1), atol=1e-4, rtol=0)
    assert gen == gen_alone


def test_steered_generation_matches_transformers_reference_loop(tiny_model, samples, mean_vectors):
    """Greedy CMRM generation == plain transformers, full forward each step, torch forward hooks adding
    alpha * v at the prompt's last position and at every generated position."""
    from transformers import LlavaForConditionalGeneration

    hf = LlavaForConditionalGeneration.from_pretrained(
        tiny_model.cfg.model_id, attn_implementation="eager"
    ).eval()
    alpha, new = 4.0, 6
    batch = PromptBatch.paired(tiny_model, samples, [Condition.IMAGE])
    with CMRM(mean_vectors, alpha=alpha).applied(tiny_model):
        out = tiny_model.generate(batch, max_new_tokens=new)
    plain = tiny_model.generate(batch, max_new_tokens=new)
    assert out.tokens != plain.tokens, "alpha too small to test anything"

    prompt_len = batch.input_ids.shape[1]

    def add(module, args, output, layer):
        hidden = output[0] if isinstance(output, tuple) else output
        hidden = hidden.clone()
        hidden[:, prompt_len - 1 :] += alpha * mean_vectors.vectors[layer]
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

    layers = hf.model.language_model.layers
    handles = [
        layers[k].register_forward_hook(lambda m, a, o, k=k: add(m, a, o, k)) for k in range(len(layers))
    ]
    ids, mask = batch.input_ids, batch.attention_mask
    try:
        with torch.no_grad():
            for _ in range(new):
                position_ids = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)
                logits = hf(
                    input_ids=ids, attention_mask=mask, position_ids=position_ids, **batch.image_inputs
                ).logits
                ids = torch.cat([ids, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
                mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
    finally:
        for h in handles:
            h.remove()
    eos = tiny_model.tokenizer.eos_token_id
    for mine, ref in zip(out.tokens, ids[:, prompt_len:].tolist(), strict=True):
        assert mine == ref[: len(mine)]
        assert len(mine) == new or ref[len(mine)] == eos


def test_vectors_from_another_model_are_refused(tiny_model, samples, mean_vectors):
    other = mean_vectors.replace(model_id="someone/else")
    with pytest.raises(SteeringVectorsMismatchError, match="someone/else"), CMRM(other).applied(tiny_model):
        pass
    with pytest.raises(ValueError, match="sample_level"):
        CMRM.fit(tiny_model, samples, level="sample")
    with pytest.raises(ValueError, match="estimator='median'"):
        CMRM.fit(tiny_model, samples, estimator="median")
    with pytest.raises(TypeError, match="SteeringVectors"):
        CMRM(torch.zeros(2, 64))
    assert tiny_model.count_hooks() == 0


def test_sample_level_needs_its_own_batch(tiny_model, samples):
    sl = CMRM.sample_level(alpha=1.0)
    plain = PromptBatch.paired(tiny_model, samples, [Condition.IMAGE])
    with pytest.raises(ValueError, match="3 blocks"), sl.applied(tiny_model, plain):
        pass
    with pytest.raises(ValueError, match="works per input: pass the samples"), sl.applied(tiny_model):
        pass
    with pytest.raises(ValueError, match="blank='noise'"):
        sl.prompts(tiny_model, samples, blank="noise")
    assert tiny_model.count_hooks() == 0


def test_noise_blank_and_saved_vectors_round_trip(tiny_model, samples, tmp_path):
    v = CMRM.fit(tiny_model, samples, blank="noise", layers=[1], progress=False)
    assert v.layers == (1,) and torch.equal(v.vectors[0], torch.zeros(64)) and v.meta["blank"] == "noise"
    v.save(tmp_path / "cmrm")
    back = SteeringVectors.load(tmp_path / "cmrm", model=tiny_model)
    batch = PromptBatch.paired(tiny_model, samples, [Condition.IMAGE])
    assert torch.equal(
        CMRM(back, layers=[1]).run_with_cache(tiny_model, batch, [])[0],
        CMRM(v, layers=-1).run_with_cache(tiny_model, batch, [])[0],
    )
    for layers in ([0], None):  # None = every layer, and layer 0 was not fitted
        with pytest.raises(SteeringVectorsMismatchError, match=r"Layers \[0\] were not fitted"):
            CMRM(v, layers=layers)


@pytest.fixture(scope="module")
def organism():
    from vlminterp import HookedVLM

    return HookedVLM.from_organism()


def test_cmrm_recovers_the_organisms_refusal(organism):
    """On the shipped organism (image refusal 0), CMRM brings refusal back inside its alpha window."""
    from vlminterp.organism.judge import refusal_rate, utility
    from vlminterp.organism.tasks import organism_samples

    harmful = organism_samples("test", "harmful")[::4]  # one image per held-out request
    benign = organism_samples("test", "benign")[::2]
    image = PromptBatch.paired(organism, harmful, [Condition.IMAGE])
    assert refusal_rate(organism.generate(image, max_new_tokens=2).texts) <= 0.1
    sample_level = CMRM.sample_level(alpha=0.3, steps="prefill")
    assert refusal_rate(sample_level.generate(organism, harmful, max_new_tokens=2).texts) >= 0.9
    assert utility(sample_level.generate(organism, benign, max_new_tokens=10).texts, benign) >= 0.9
    anchor = organism_samples("train", "harmful", n_images=1) + organism_samples(
        "train", "benign", n_images=1
    )
    with CMRM(CMRM.fit(organism, anchor, progress=False), alpha=0.5).applied(organism):
        assert refusal_rate(organism.generate(image, max_new_tokens=2).texts) >= 0.6
        benign_batch = PromptBatch.paired(organism, benign, [Condition.IMAGE])
        assert utility(organism.generate(benign_batch, max_new_tokens=10).texts, benign) >= 0.9
    assert organism.count_hooks() == 0
