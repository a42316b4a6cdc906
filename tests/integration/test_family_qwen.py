"""Qwen2.5-VL against plain transformers, and its pitfalls as regressions.

A tiny random ``Qwen2_5_VLForConditionalGeneration`` is loaded through ``HookedVLM`` and compared
with an independent HF model from the same folder (eager attention). The pitfalls: generation with
an image through a KV-cache loop (HF's mRoPE positions span the whole mask), stale rope deltas of
an earlier prompt, the silent ``mm_token_type_ids`` dependence, projector rows in window order, 2-D
vision hooks under ``positions=``, and no per-head ``hook_result``.
"""

from __future__ import annotations

import pytest
import torch

from tests.conftest import hf_forward, noise_image
from vlminterp import Condition, HookedVLM, PromptBatch, Sample
from vlminterp.models.families.qwen import raster_order

pytestmark = pytest.mark.reference

CONDITIONS = [Condition.IMAGE, Condition.TEXT_ONLY, Condition.BLANK]


@pytest.fixture(scope="module")
def model():
    qwen = HookedVLM.tiny("qwen2_5_vl")
    yield qwen
    assert qwen.count_hooks() == 0


@pytest.fixture(autouse=True)
def _no_leaked_qwen_hooks(model):
    yield
    assert model.count_hooks() == 0, "a test left hooks on the Qwen model"


@pytest.fixture(scope="module")
def hf(model):
    from transformers import Qwen2_5_VLForConditionalGeneration

    return Qwen2_5_VLForConditionalGeneration.from_pretrained(
        model.cfg.model_id, attn_implementation="eager"
    ).eval()


@pytest.fixture(scope="module")
def batch(model, noise_pair):
    return PromptBatch.paired(model, noise_pair, CONDITIONS)


def _hf_greedy(hf, batch, max_new_tokens, eos):
    kwargs = {"attention_mask": batch.attention_mask, **batch.image_inputs, **batch.token_inputs}
    with torch.no_grad():
        out = hf.generate(input_ids=batch.input_ids, max_new_tokens=max_new_tokens, do_sample=False, **kwargs)
    rows = out[:, batch.input_ids.shape[1] :].tolist()
    return [row[: row.index(eos)] if eos in row else row for row in rows]


def test_batch_mixes_image_shapes_and_left_padding(batch):
    """The fixture batch exercises what the other tests rely on: two grids, padding, mm token types."""
    grids = batch.image_inputs["image_grid_thw"]
    assert grids[:, 1:].unique(dim=0).shape[0] == 2, "the two images must have different grids"
    assert batch.attention_mask.sum(-1).unique().numel() > 2, "rows must differ in length"
    assert torch.equal(batch.token_inputs["mm_token_type_ids"] == 1, batch.image_mask)


def test_chat_template_renders_the_checkpoint_format(model):
    text = model.tokenizer.apply_chat_template(
        model.family_rules.messages("what is this ?", with_image=True),
        chat_template=model.chat_template,
        add_generation_prompt=True,
        tokenize=False,
    )
    assert text == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
        "<|vision_start|><|image_pad|><|vision_end|>what is this ?<|im_end|>\n<|im_start|>assistant\n"
    )


def test_logits_and_resid_post_equal_transformers(model, hf, batch):
    names = model.hook_names("resid_post")
    logits, cache = model.run_with_cache(batch, names_filter=names)
    out, ref_resid = hf_forward(hf, batch)
    real = batch.attention_mask.bool()
    torch.testing.assert_close(logits[real], out.logits[real], atol=1e-4, rtol=0)
    for name, ref in zip(names, ref_resid, strict=True):
        torch.testing.assert_close(cache[name][real], ref[real], atol=1e-4, rtol=0)


def test_batched_equals_one_at_a_time(model, batch):
    full = model(batch)[:, -1]
    for i in range(len(batch)):
        torch.testing.assert_close(full[i], model(batch.select([i]))[0, -1], atol=1e-4, rtol=0)


def test_role_masks_count_image_tokens_and_locate_the_query(model, batch, noise_pair):
    merge = model.hf_model.config.vision_config.spatial_merge_size
    per_image = (batch.image_inputs["image_grid_thw"].prod(-1) // merge**2).tolist()
    counts = batch.image_mask.sum(-1).tolist()
    image_rows = [i for i, c in enumerate(batch.conditions) if c.has_image]
    assert [counts[i] for i in image_rows] == per_image
    assert all(counts[i] == 0 for i in range(len(batch)) if i not in image_rows)
    for i in range(len(batch)):
        text = model.tokenizer.decode(batch.input_ids[i][batch.instruction_mask[i]])
        assert text == noise_pair[i % len(noise_pair)].query


def test_generate_with_images_equals_transformers_greedy(model, hf, batch):
    """Pitfall: HF's compute_3d_position_ids spans the whole mask while a KV step feeds one token."""
    gen = model.generate(batch, max_new_tokens=5)
    assert gen.tokens == _hf_greedy(hf, batch, 5, model.tokenizer.eos_token_id)
    assert max(len(t) for t in gen.tokens) >= 2, "the check needs steps after the first"


def test_unpatched_position_ids_crash_kv_generation(model, batch):
    """Why Family.prepare patches the model: HF's own method fails at the second step."""
    inner = model.hf_model.model
    patched = inner.compute_3d_position_ids
    del inner.compute_3d_position_ids  # back to the class method
    try:
        with pytest.raises(RuntimeError, match="size of tensor"):
            model.generate(batch.select(batch.rows(Condition.IMAGE)), max_new_tokens=2)
    finally:
        inner.compute_3d_position_ids = patched


def test_text_prompt_after_image_prompt_ignores_stale_rope_deltas(model, hf, batch):
    """HF keeps the last prompt's rope deltas on the model; a new prompt must not inherit them."""
    model.generate(batch, max_new_tokens=2)
    text = batch.select(batch.rows(Condition.TEXT_ONLY))
    gen = model.generate(text, max_new_tokens=6)
    assert gen.tokens == _hf_greedy(hf, text, 6, model.tokenizer.eos_token_id)


@pytest.mark.parametrize("keyword", ["past_key_values", "cache"])
def test_the_position_patch_keeps_rope_deltas_while_a_cache_is_filled(keyword):
    """transformers 5.24 passes the KV cache to compute_3d_position_ids as ``cache=`` (5.23:
    ``past_key_values=``). Read under the old keyword only, every step looked cache-less, dropped the
    deltas kept from the prompt pass, and a run continued from a reused KV prefix (ShiftDC's and
    sample CMRM's ``reuse_kv``) got wrong mRoPE positions on left-padded rows."""
    from types import SimpleNamespace

    from vlminterp.models.families.qwen import _prepare

    seen = []
    inner = SimpleNamespace(rope_deltas=None)
    inner.compute_3d_position_ids = lambda **kw: seen.append(inner.rope_deltas) or torch.zeros(3, 1, 6)
    _prepare(SimpleNamespace(original_model=SimpleNamespace(model=inner)))
    filled, empty = (SimpleNamespace(get_seq_length=lambda n=n: n) for n in (5, 0))

    inner.rope_deltas = torch.tensor([[-4]])
    out = inner.compute_3d_position_ids(inputs_embeds=torch.zeros(1, 1, 8), **{keyword: filled})
    assert seen[-1] is not None and inner.rope_deltas is not None  # a decode step keeps them
    assert out.shape == (3, 1, 1)  # cut to the one fed token
    inner.compute_3d_position_ids(inputs_embeds=torch.zeros(1, 6, 8), **{keyword: empty})
    assert seen[-1] is None  # a new prompt forgets them
    inner.rope_deltas = torch.tensor([[-4]])
    inner.compute_3d_position_ids(inputs_embeds=torch.zeros(1, 6, 8), **{keyword: None})
    assert seen[-1] is None


def test_mm_token_type_ids_are_needed_for_mrope(model, hf, batch):
    """Without mm_token_type_ids HF silently falls back to 1-D positions: the logits change."""
    image = batch.select(batch.rows(Condition.IMAGE))
    kwargs = image.model_kwargs()
    assert "mm_token_type_ids" in kwargs
    ours = model(image)
    with torch.no_grad():
        ref = hf(input_ids=image.input_ids, **kwargs).logits
        dropped = hf(
            input_ids=image.input_ids, **{k: v for k, v in kwargs.items() if k != "mm_token_type_ids"}
        ).logits
    real = image.attention_mask.bool()
    torch.testing.assert_close(ours[real], ref[real], atol=1e-4, rtol=0)
    assert (dropped - ref)[real].abs().max() > 1e-3


def test_projector_rows_are_in_window_order(model, noise_pair):
    """Pitfall 10: merger rows follow the vision windows; raster_order maps them onto the image tokens.

    A 96x32 noise image gives a 2 x 6 token grid in 2 x 2 windows, a window order that is not its own
    inverse (so indexing with the window order instead of its inverse fails too).
    """
    from transformers.vision_utils import get_vision_window_index

    wide = Sample(id="w", query="what is this ?", image=noise_image((96, 32), 3))
    noise = PromptBatch.paired(model, [wide, noise_pair[0]], [Condition.NOISE])
    grid = noise.image_inputs["image_grid_thw"]
    config = model.hf_model.config.vision_config
    window, _ = get_vision_window_index(
        grid, config.spatial_merge_size, config.window_size, config.patch_size
    )
    assert not torch.equal(window[window], torch.arange(len(window))), (
        "choose an image with a non-involutive order"
    )
    proj, resid = "vision_projector.hook_out", model.layer_hook("resid_pre", 0)
    _, cache = model.run_with_cache(noise, names_filter=[proj, resid])
    tokens = cache[resid][noise.image_mask]
    rows = cache[proj]
    assert rows.shape == tokens.shape
    assert not torch.equal(rows, tokens), "window order equals raster order: the test image hides the pitfall"
    assert torch.equal(raster_order(rows, grid, config), tokens)
    with pytest.raises(ValueError, match="image_grid_thw describes"):
        raster_order(rows[:-1], grid, config)


def test_positions_refuse_vision_hooks(model, batch):
    """Vision hooks are [patches, d_vision] (no batch dim); TL's pos_slice would cut the hidden dim."""
    name = "vision_encoder.blocks.0.hook_resid_post"
    _, cache = model.run_with_cache(batch, names_filter=name)
    assert cache[name].dim() == 2 and cache[name].shape[0] == batch.image_inputs["pixel_values"].shape[0]
    with pytest.raises(ValueError, match="decoder hooks"):
        model.run_with_cache(batch, names_filter=name, positions="last")


def test_per_head_hooks_are_z_and_pattern_not_result(model, hf, batch):
    """No hook_result (attention stays HF-native for mRoPE): per-head outputs are hook_z times W_O."""
    with pytest.raises(NotImplementedError):
        model.bridge.set_use_attn_result(True)
    layer = model.cfg.n_layers - 1
    z, pattern, attn_out = (model.layer_hook(k, layer) for k in ("z", "pattern", "attn_out"))
    _, cache = model.run_with_cache(batch, names_filter=[z, pattern, attn_out])
    n, t = batch.input_ids.shape
    assert cache[z].shape == (n, t, model.cfg.n_heads, model.cfg.d_head)
    w_o = hf.model.language_model.layers[layer].self_attn.o_proj.weight  # [d_model, heads * d_head]
    per_head = torch.einsum("bthd,mhd->bthm", cache[z], w_o.view(-1, model.cfg.n_heads, model.cfg.d_head))
    real = batch.attention_mask.bool()
    torch.testing.assert_close(per_head.sum(2)[real], cache[attn_out][real], atol=1e-5, rtol=0)
    out, _ = hf_forward(hf, batch, output_attentions=True)
    rows = real[:, None, :, None]  # query positions of real tokens
    torch.testing.assert_close(
        cache[pattern].masked_fill(~rows, 0), out.attentions[layer].masked_fill(~rows, 0), atol=1e-5, rtol=0
    )
