"""``generate(cache_names=...)``: per-step activations equal one plain-transformers forward of prompt + tokens.

The reference is an independently loaded HF model run once, without a KV cache, on each row alone
(unpadded): the prompt followed by the tokens that generation fed back. Row ``i`` of the generation
cache, left-padded in a mixed IMAGE / TEXT_ONLY batch, must match it position by position.
"""

from __future__ import annotations

import pytest
import torch

from vlminterp import Condition, HookedVLM, PromptBatch
from vlminterp.references import hf_forward, load_reference_model

pytestmark = pytest.mark.reference

STEPS = 4


@pytest.fixture(scope="module", params=["llava", "gemma3", "organism"])
def pair(request):
    model = HookedVLM.from_organism() if request.param == "organism" else HookedVLM.tiny(request.param)
    return model, load_reference_model(model)


def test_step_cache_equals_a_full_forward_of_prompt_and_fed_tokens(pair, samples):
    model, hf = pair
    conditions = [Condition.IMAGE, Condition.TEXT_ONLY]
    batch = PromptBatch.paired(model, samples[:2], conditions)
    layers = [0, model.cfg.n_layers - 1]
    names = [model.layer_hook("resid_post", layer) for layer in layers]
    out = model.generate(batch, max_new_tokens=STEPS, cache_names=names)
    assert model.count_hooks() == 0
    width = batch.input_ids.shape[1] + max(len(t) for t in out.tokens) - 1
    assert all(out.cache[name].shape[:2] == (len(batch), width) for name in names)
    compared = 0
    for i, (sample_id, condition) in enumerate(zip(batch.sample_ids, batch.conditions, strict=True)):
        if len(out.tokens[i]) < max(len(t) for t in out.tokens):
            continue  # the row stopped at EOS and was fed filler afterwards
        sample = next(s for s in samples if s.id == sample_id)
        alone = PromptBatch.paired(model, [sample], [condition]).with_suffix([out.tokens[i][:-1]])
        _, states = hf_forward(hf, alone)
        n = alone.input_ids.shape[1]
        for name, layer in zip(names, layers, strict=True):
            # HF's decoder-layer output is resid_post (the last layer's is taken before the final norm).
            torch.testing.assert_close(out.cache[name][i, -n:], states[layer][0], atol=1e-4, rtol=1e-4)
        compared += 1
    assert compared >= 2, "too many rows stopped at EOS to compare"


def test_attention_patterns_are_refused_with_the_alternative(tiny_model, samples):
    batch = PromptBatch.paired(tiny_model, samples[:1], [Condition.TEXT_ONLY])
    with pytest.raises(ValueError, match="with_suffix"):
        tiny_model.generate(batch, max_new_tokens=2, cache_names="blocks.0.attn.hook_pattern")
    assert tiny_model.count_hooks() == 0


def test_tiny_loads_in_half_precision(samples):
    model = HookedVLM.tiny("llava", dtype=torch.float16)
    assert model.hf_model.dtype == torch.float16
    batch = PromptBatch.paired(model, samples[:1], [Condition.TEXT_ONLY])
    assert model(batch).dtype == torch.float16
