"""vlminterp.models.norm_shortcut: normalisation bridges skip the observation-only arithmetic when no
hook watches hook_scale / hook_normalized, with results bit-identical to TransformerLens's own path,
and take TransformerLens's path (hooks fire, edits propagate) as soon as one does."""

from __future__ import annotations

import pytest
import torch
from transformer_lens.model_bridge.generalized_components.normalization import NormalizationBridge

from vlminterp import Condition, HookedVLM, PromptBatch, Sample


@pytest.fixture(scope="module")
def model():
    return HookedVLM.tiny("llava")


def norms(model):
    return [m for m in model.bridge.modules() if isinstance(m, NormalizationBridge)]


def test_every_norm_has_the_shortcut_and_matches_the_library_bit_for_bit(model):
    decoder = [
        n for n, m in model.bridge.named_modules() if isinstance(m, NormalizationBridge) and "vision" not in n
    ]
    assert len(decoder) == 2 * model.cfg.n_layers + 1  # ln1, ln2 per block and ln_final
    torch.manual_seed(0)
    for norm in norms(model):
        assert "_hf_autograd_forward_with_hooks" in vars(norm)
        d = norm.original_component.weight.shape[0]
        x = torch.randn(2, 3, d)
        library = type(norm)._hf_autograd_forward_with_hooks(norm, x)
        assert torch.equal(norm._hf_autograd_forward_with_hooks(x), library)


def test_unobserved_norms_do_not_run_the_observation_math(model, monkeypatch):
    calls = []
    original = NormalizationBridge._hf_autograd_forward_with_hooks
    monkeypatch.setattr(
        NormalizationBridge,
        "_hf_autograd_forward_with_hooks",
        lambda self, x: calls.append(1) or original(self, x),
    )
    batch = PromptBatch.paired(model, [Sample(id="a", query="what is this ?")], [Condition.TEXT_ONLY])
    model.forward(batch)
    assert calls == []
    _, cache = model.run_with_cache(batch, names_filter="ln_final.hook_scale")
    assert len(calls) == 1 and cache["ln_final.hook_scale"].shape[:2] == batch.input_ids.shape


def test_an_edit_of_hook_normalized_still_propagates(model):
    batch = PromptBatch.paired(model, [Sample(id="a", query="what is this ?")], [Condition.TEXT_ONLY])
    clean = model.forward(batch)
    with pytest.warns(UserWarning):  # TransformerLens warns that the edited path is not HF's numerics
        zeroed = model.run_with_hooks(
            batch, [("ln_final.hook_normalized", lambda x, hook: torch.zeros_like(x))]
        )
    # the unembedding has no bias: zero normalised input gives zero logits (the weight scales zero)
    assert clean.abs().max() > 0 and torch.equal(zeroed, torch.zeros_like(zeroed))
