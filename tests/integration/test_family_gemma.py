"""Gemma 3 specifics: ``token_type_ids`` (bidirectional image attention), the zero projector, role masks.

The family-agnostic checks (HF equality, batching, generate, interventions) run for gemma3 in
``test_families.py``; these are the Gemma 3 pitfalls, each a test that fails if it comes back.
"""

from __future__ import annotations

import pytest
import torch

from tests.conftest import hf_forward
from vlminterp import Condition, HookedVLM, PromptBatch

pytestmark = pytest.mark.reference


@pytest.fixture(scope="module")
def gemma():
    return HookedVLM.tiny("gemma3")


@pytest.fixture(scope="module")
def hf_gemma(gemma):
    from transformers import Gemma3ForConditionalGeneration

    return Gemma3ForConditionalGeneration.from_pretrained(
        gemma.cfg.model_id, attn_implementation="eager"
    ).eval()


@pytest.fixture(scope="module")
def batch(gemma, noise_pair):
    return PromptBatch.paired(gemma, noise_pair, [Condition.IMAGE, Condition.TEXT_ONLY, Condition.BLANK])


def test_token_type_ids_mark_exactly_the_image_tokens(batch):
    assert torch.equal(batch.token_inputs["token_type_ids"].bool(), batch.image_mask)
    assert "token_type_ids" in batch.model_kwargs()


def test_logits_need_token_type_ids(gemma, hf_gemma, batch):
    """Without token_type_ids HF drops the bidirectional image attention: image rows differ; with them, equal."""
    real = batch.attention_mask.bool()
    ours = gemma(batch)
    torch.testing.assert_close(ours[real], hf_forward(hf_gemma, batch)[0].logits[real], atol=1e-4, rtol=0)
    without = hf_forward(hf_gemma, batch, token_type_ids=None)[0].logits
    image_rows = batch.rows(Condition.IMAGE) + batch.rows(Condition.BLANK)
    text_rows = batch.rows(Condition.TEXT_ONLY)
    assert (ours - without)[image_rows][real[image_rows]].abs().max() > 1e-2
    # Text-only rows have no image tokens, so the bidirectional mask changes nothing there.
    torch.testing.assert_close(
        ours[text_rows][real[text_rows]], without[text_rows][real[text_rows]], atol=1e-4, rtol=0
    )


def test_image_tokens_attend_to_each_other_both_ways(gemma, batch):
    """hook_pattern: an image token attends to later tokens of its image; text stays causal."""
    name = gemma.layer_hook("pattern", 0)
    row = batch.rows(Condition.IMAGE)[0]
    _, cache = gemma.run_with_cache(batch.select([row]), names_filter=name)
    pattern = cache[name][0]  # [head, query, key]
    image = batch.select([row]).image_mask[0].nonzero().flatten()
    later = torch.triu_indices(len(image), len(image), offset=1)
    assert (pattern[:, image[later[0]], image[later[1]]] > 0).all(), (
        "image tokens do not see later image tokens"
    )
    assert pattern.triu(diagonal=1)[:, image[-1] + 1 :].abs().max() == 0, "text tokens see the future"


def test_tiny_projector_is_not_zero_so_the_image_matters(gemma, batch):
    """HF initialises mm_input_projection_weight to zeros; the tiny builder must redraw it."""
    from transformers import Gemma3ForConditionalGeneration

    fresh = Gemma3ForConditionalGeneration(gemma.hf_model.config)
    assert fresh.model.multi_modal_projector.mm_input_projection_weight.abs().max() == 0, (
        "HF no longer zero-initialises the projector: drop the reinit in the tiny builder"
    )
    assert gemma.hf_model.model.multi_modal_projector.mm_input_projection_weight.abs().min() > 0
    last = gemma(batch)[:, -1]
    image, blank = batch.rows(Condition.IMAGE), batch.rows(Condition.BLANK)
    assert (last[image] - last[blank]).abs().amax(-1).min() > 1e-3, "IMAGE equals BLANK: zero projector"


def test_role_masks(gemma, batch, noise_pair):
    """4 soft tokens per image (the processor's image_seq_length); boi/eoi are template; query located."""
    tok = gemma.tokenizer
    for i, cond in enumerate(batch.conditions):
        ids = batch.input_ids[i]
        n_image = int(batch.image_mask[i].sum())
        assert n_image == (gemma.processor.image_seq_length if cond.has_image else 0)
        for marker in (tok.boi_token_id, tok.eoi_token_id):
            at = ids == marker
            assert int(at.sum()) == int(cond.has_image) and bool(batch.template_mask[i][at].all())
        query = tok.decode(ids[batch.instruction_mask[i]])
        assert query == noise_pair[i % len(noise_pair)].query


def test_tiny_decoder_has_a_full_attention_layer(gemma):
    """With Gemma 3's default pattern (every 6th layer full) a 2-layer model would be all sliding-window."""
    assert gemma.hf_model.config.text_config.layer_types == ["sliding_attention", "full_attention"]


def test_prompt_has_one_bos(gemma, batch):
    bos = gemma.tokenizer.bos_token_id
    assert ((batch.input_ids == bos) & batch.attention_mask.bool()).sum(-1).tolist() == [1] * len(batch)
