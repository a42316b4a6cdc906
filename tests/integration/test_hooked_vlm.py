"""HookedVLM against plain transformers: logits, residual stream, batching, generation, positions."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import hf_forward
from vlminterp import Condition, PromptBatch


@pytest.fixture(scope="module")
def hf_reference(tiny_model):
    """An independent HF model loaded from the same directory (eager attention)."""
    from transformers import LlavaForConditionalGeneration

    return LlavaForConditionalGeneration.from_pretrained(
        tiny_model.cfg.model_id, attn_implementation="eager"
    ).eval()


@pytest.mark.parametrize("condition", [Condition.IMAGE, Condition.BLANK, Condition.TEXT_ONLY])
def test_logits_and_resid_post_equal_transformers(tiny_model, hf_reference, samples, condition):
    batch = PromptBatch.paired(tiny_model, samples, [condition])
    logits, cache = tiny_model.run_with_cache(batch, names_filter=tiny_model.hook_names("resid_post"))
    ref, ref_resid = hf_forward(hf_reference, batch)
    ref_logits = ref.logits
    real = batch.attention_mask.bool()
    assert (logits - ref_logits)[real].abs().max() <= 1e-5
    for layer in range(tiny_model.cfg.n_layers):
        assert (cache["resid_post", layer] - ref_resid[layer])[real].abs().max() <= 1e-5


def test_hidden_states_match_output_hidden_states(tiny_model, hf_reference, samples):
    """Intermediate resid_post equals HF's output_hidden_states[l + 1] (the last one is post-norm in HF)."""
    batch = PromptBatch.paired(tiny_model, samples, [Condition.IMAGE])
    _, cache = tiny_model.run_with_cache(
        batch, names_filter=tiny_model.hook_names("resid_post"), positions="last"
    )
    with torch.no_grad():
        out = hf_reference(input_ids=batch.input_ids, output_hidden_states=True, **batch.model_kwargs())
    for layer in range(tiny_model.cfg.n_layers - 1):
        assert (cache["resid_post", layer] - out.hidden_states[layer + 1][:, -1]).abs().max() <= 1e-5


def test_left_padded_batch_equals_one_at_a_time(tiny_model, samples):
    conds = [Condition.IMAGE, Condition.BLANK, Condition.CAPTION, Condition.TEXT_ONLY]
    batch = PromptBatch.paired(tiny_model, samples, conds)
    assert batch.attention_mask.sum(-1).unique().numel() > 1, "the batch must mix prompt lengths"
    names = tiny_model.hook_names("resid_post")
    logits, cache = tiny_model.run_with_cache(batch, names_filter=names, positions="last")
    for i in range(len(batch)):
        single = batch.select([i])
        assert single.attention_mask.all(), "a single row carries no padding"
        one_logits, one_cache = tiny_model.run_with_cache(single, names_filter=names, positions="last")
        assert (logits[i, -1] - one_logits[0, -1]).abs().max() <= 1e-4
        for name in names:
            assert (cache[name][i] - one_cache[name][0]).abs().max() <= 1e-4


def test_generate_equals_transformers_greedy(tiny_model, hf_reference, samples):
    batch = PromptBatch.paired(tiny_model, samples, [Condition.IMAGE, Condition.TEXT_ONLY])
    gen = tiny_model.generate(batch, max_new_tokens=6)
    with torch.no_grad():
        ref = hf_reference.generate(
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            **batch.image_inputs,
            max_new_tokens=6,
            do_sample=False,
        )
    eos = tiny_model.tokenizer.eos_token_id
    for row, tokens in zip(ref[:, batch.input_ids.shape[1] :].tolist(), gen.tokens, strict=True):
        expected = row[: row.index(eos)] if eos in row else row
        assert tokens == expected
    assert gen.texts == [
        t.strip() for t in tiny_model.tokenizer.batch_decode(gen.tokens, skip_special_tokens=True)
    ]


def test_generate_follow_feeds_leader_tokens(tiny_model, samples):
    """Twin rows that follow a leader carry exactly the leader's tokens; free rows are unaffected."""
    batch = PromptBatch.paired(tiny_model, samples[:2], [Condition.IMAGE, Condition.TEXT_ONLY])
    free = tiny_model.generate(batch, max_new_tokens=5)
    tied = tiny_model.generate(batch, max_new_tokens=5, follow=[None, None, 0, 1])
    assert tied.tokens[:2] == free.tokens[:2]
    assert tied.tokens[2:] == tied.tokens[:2]
    with pytest.raises(ValueError, match="follows row"):
        tiny_model.generate(batch, max_new_tokens=2, follow=[None, 0, 1, None])
    with pytest.raises(ValueError, match="one entry per row"):
        tiny_model.generate(batch, max_new_tokens=2, follow=[None])


def test_generate_hooks_fire_on_prompt_then_one_token(tiny_model, samples):
    batch = PromptBatch.paired(tiny_model, samples[:2], [Condition.IMAGE])
    seen: list[int] = []
    hook = (tiny_model.layer_hook("resid_post", 0), lambda x, hook: seen.append(x.shape[1]))
    tiny_model.generate(batch, max_new_tokens=3, fwd_hooks=[hook])
    assert seen[0] == batch.input_ids.shape[1]
    assert all(s == 1 for s in seen[1:]) and len(seen) >= 2


def test_positions_last_holds_batch_by_d_model(tiny_model, samples):
    batch = PromptBatch.paired(tiny_model, samples, [Condition.IMAGE, Condition.TEXT_ONLY])
    _, cache = tiny_model.run_with_cache(
        batch, names_filter=tiny_model.hook_names("resid_post"), positions="last"
    )
    for name in tiny_model.hook_names("resid_post"):
        assert cache[name].shape == (len(batch), tiny_model.cfg.d_model)
    assert cache.stack("resid_post").shape == (tiny_model.cfg.n_layers, len(batch), tiny_model.cfg.d_model)


@pytest.mark.parametrize("positions", ["last_instruction", "mean_text", -3, "tensor1d", "tensor2d"])
def test_position_selection_equals_full_cache(tiny_model, samples, positions):
    batch = PromptBatch.paired(tiny_model, samples, [Condition.IMAGE, Condition.CAPTION])
    names = [tiny_model.layer_hook("resid_post", 1), tiny_model.layer_hook("z", 0)]
    _, full = tiny_model.run_with_cache(batch, names_filter=names)
    n, t = batch.input_ids.shape
    if positions == "tensor1d":
        positions = torch.tensor([-1, -2])
    elif positions == "tensor2d":
        positions = torch.stack([torch.arange(n) % t, torch.full((n,), t - 1)], dim=1)
    _, sel = tiny_model.run_with_cache(batch, names_filter=names, positions=positions)
    for name in names:
        x = full[name]
        if positions == "last_instruction":
            idx = [int(torch.nonzero(batch.instruction_mask[i])[-1]) for i in range(n)]
            expected = x[torch.arange(n), idx]
        elif positions == "mean_text":
            w = (batch.attention_mask.bool() & ~batch.image_mask).float()
            w = w / w.sum(-1, keepdim=True)
            expected = torch.einsum("bt,bt...->b...", w, x)
        elif isinstance(positions, int) or positions.dim() == 1:
            expected = x[:, positions]
        else:
            expected = torch.stack([x[i, positions[i]] for i in range(n)])
        assert sel[name].shape == expected.shape
        assert torch.allclose(sel[name], expected, atol=1e-6)


def test_pattern_positions_select_query_axis(tiny_model, samples):
    batch = PromptBatch.paired(tiny_model, samples[:2], [Condition.IMAGE])
    name = tiny_model.layer_hook("pattern", 0)
    _, full = tiny_model.run_with_cache(batch, names_filter=name)
    _, last = tiny_model.run_with_cache(batch, names_filter=name, positions="last")
    assert torch.equal(last[name], full[name][:, :, -1])


def test_positions_on_vision_hook_raise(tiny_model, samples):
    batch = PromptBatch.paired(tiny_model, samples[:1], [Condition.IMAGE])
    with pytest.raises(ValueError, match="decoder hooks"):
        tiny_model.run_with_cache(batch, names_filter="vision_encoder.hook_out", positions="last")
    assert tiny_model.count_hooks() == 0


def test_hook_editing_residual_changes_only_later_positions(tiny_model, samples):
    batch = PromptBatch.paired(tiny_model, samples[:2], [Condition.IMAGE])
    clean = tiny_model.forward(batch)

    def add_last(x, hook):
        y = x.clone()
        y[:, -1] += 10.0
        return y

    steered = tiny_model.run_with_hooks(batch, fwd_hooks=[(tiny_model.layer_hook("resid_post", 0), add_last)])
    assert torch.equal(steered[:, :-1], clean[:, :-1])
    assert (steered[:, -1] - clean[:, -1]).abs().max() > 1e-3
