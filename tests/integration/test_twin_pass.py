"""Twin rows that pay only for what is read: sample-level CMRM's separate, truncated twin passes.

With ``steps="prefill"``, ``SampleCMRM.generate`` runs the TEXT_ONLY and BLANK twins as their own
prompt passes stopped after the last steered layer; it must equal the one-batch path (the 3x batch of ``applied`` generated with
``follow=``): tokens identical, the steered rows' logits at every step within 1e-5.
"""

from __future__ import annotations

import pytest
import torch

from vlminterp import Condition, PromptBatch
from vlminterp.interventions import CMRM
from vlminterp.models.stepping import CachedRun


def _logits_per_step(model, run_generation, rows):
    """The generation and the logits of its first ``rows`` rows at the last position, per step."""
    seen = []

    def keep(x, hook):
        seen.append((x.shape[0], x[:rows, -1].double().clone()))

    with model.hooks([("unembed.hook_out", keep)]):
        out = run_generation()
    return out, seen


@pytest.mark.parametrize(
    "options",
    [{}, {"layers": [0]}, {"layers": [1], "blank": "noise"}],
    ids=["all-layers", "layer0", "noise-blank"],
)
def test_twin_pass_equals_one_batch(tiny_model, samples, options):
    model, n = tiny_model, len(samples)
    sl = CMRM.sample_level(alpha=3.0, steps="prefill", **options)

    def one_batch():
        with sl.applied(model, samples) as run:
            return run.output(model.generate(run.batch, max_new_tokens=4, follow=run.follow))

    fast, fast_logits = _logits_per_step(model, lambda: sl.generate(model, samples, max_new_tokens=4), n)
    ref, ref_logits = _logits_per_step(model, one_batch, n)
    plain = model.generate(PromptBatch.paired(model, samples, [Condition.IMAGE]), max_new_tokens=4)
    assert ref.tokens != plain.tokens  # the steering acts, so a wrong shift would show
    assert fast.tokens == ref.tokens
    assert fast.texts == ref.texts and fast.batch.sample_ids == ref.batch.sample_ids
    # Only the steered rows are unembedded: the twins stop after the last steered layer.
    assert {rows for rows, _ in fast_logits} == {n} and {rows for rows, _ in ref_logits} == {3 * n}
    assert len(fast_logits) == len(ref_logits) == 4
    for (_, a), (_, b) in zip(fast_logits, ref_logits, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    assert model.count_hooks() == 0


def test_twins_run_only_up_to_the_last_steered_layer(tiny_model, samples):
    fired = []
    names = tiny_model.hook_names("resid_post")
    with tiny_model.hooks([(name, lambda x, hook: fired.append(hook.name)) for name in names]):
        CMRM.sample_level(alpha=1.0, layers=[0], steps="prefill").generate(
            tiny_model, samples, max_new_tokens=3
        )
    # Layer 0: the TEXT_ONLY prompt pass, the BLANK rows' shared prefix (once, one row) and their
    # rest, then the steered rows' 3 steps; layer 1: steered only.
    assert fired.count(names[0]) == 3 + 3 and fired.count(names[1]) == 3


def test_truncated_cached_run_equals_the_full_forward(tiny_model, samples):
    """A stopped run fed tokens holds the same layer-0 states as a plain forward of prompt + tokens."""
    batch = PromptBatch.paired(tiny_model, samples, [Condition.BLANK])
    name = tiny_model.layer_hook("resid_post", 0)
    states = []
    run = CachedRun(tiny_model, batch, stop_after_layer=0)
    fed = torch.tensor([[5, 9], [7, 7], [11, 3], [2, 8]])
    with tiny_model.hooks([(name, lambda x, hook: states.append(x[:, -1].clone()))]):
        assert run.step() is None
        for column in fed.T:
            run.step(column)
    _, cache = tiny_model.run_with_cache(batch.with_suffix(fed.tolist()), names_filter=name)
    full = cache[name]
    for i, state in enumerate(states):
        torch.testing.assert_close(state, full[:, full.shape[1] - 3 + i], atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="prompt already ran"):
        run.step()
    with pytest.raises(ValueError, match="run the prompt first"):
        CachedRun(tiny_model, batch).step(fed[:, 0])


def test_prompt_pass_unembeds_the_last_position_unless_unembed_is_cached(tiny_model, samples):
    batch = PromptBatch.paired(tiny_model, samples[:2], [Condition.TEXT_ONLY])
    seen = []
    with tiny_model.hooks([("unembed.hook_out", lambda x, hook: seen.append(x.shape[1]))]):
        tiny_model.generate(batch, max_new_tokens=2)
    assert seen == [1, 1]
    out = tiny_model.generate(batch, max_new_tokens=2, cache_names="unembed.hook_out")
    assert out.cache["unembed.hook_out"].shape[1] == batch.input_ids.shape[1] + 1
