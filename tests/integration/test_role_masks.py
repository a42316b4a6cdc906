"""Role masks: image tokens, instruction tokens, template tokens, generated tokens."""

from __future__ import annotations

import pytest

from vlminterp import Condition, PromptBatch
from vlminterp.models.families import LLAVA_15_CHAT_TEMPLATE, get_family
from vlminterp.prompts import PromptRow


def _tokens(model, batch, i, mask):
    return model.tokenizer.convert_ids_to_tokens(batch.input_ids[i][mask[i]].tolist())


def test_real_llava_template_renders_reference_layout(tiny_model):
    assert tiny_model.chat_template == LLAVA_15_CHAT_TEMPLATE
    rendered = tiny_model.tokenizer.apply_chat_template(
        get_family("llava").messages("how do i make a kite", with_image=True),
        chat_template=LLAVA_15_CHAT_TEMPLATE,
        add_generation_prompt=True,
        tokenize=False,
    )
    assert rendered == "USER: <image>\nhow do i make a kite ASSISTANT:"


@pytest.mark.parametrize("condition", list(Condition))
def test_masks_partition_real_tokens(tiny_model, samples, condition):
    batch = PromptBatch.paired(tiny_model, samples, [condition])
    m = batch.masks
    real = batch.attention_mask.bool()
    total = m["image"].int() + m["instruction"].int() + m["template"].int() + m["generated"].int()
    assert ((total == 1) == real).all(), "every real token has exactly one role; padding has none"
    image_id = tiny_model.image_token_id
    assert (m["image"] == (batch.input_ids == image_id)).all()
    n_image = tiny_model.hf_model.config.image_seq_length
    expected = n_image if condition.has_image else 0
    assert m["image"].sum(-1).tolist() == [expected] * len(batch)
    for i, s in enumerate(samples):
        text = s.query if condition is not Condition.CAPTION else f"{s.query} Image Caption: {s.caption}"
        want = tiny_model.tokenizer.convert_ids_to_tokens(
            tiny_model.tokenizer(text, add_special_tokens=False)["input_ids"]
        )
        assert _tokens(tiny_model, batch, i, m["instruction"]) == want
        assert _tokens(tiny_model, batch, i, m["template"]) == ["<bos>", "USER", ":", "ASSISTANT", ":"]


def test_image_block_is_contiguous_and_before_instruction(tiny_model, samples):
    batch = PromptBatch.paired(tiny_model, samples, [Condition.IMAGE])
    for i in range(len(batch)):
        idx = batch.image_mask[i].nonzero().squeeze(-1)
        assert (idx.diff() == 1).all()
        assert idx.max() < batch.instruction_mask[i].nonzero().min()


def test_conditions_differ_only_in_image_part(tiny_model, samples):
    batch = PromptBatch.paired(
        tiny_model, samples, [Condition.IMAGE, Condition.BLANK, Condition.NOISE, Condition.TEXT_ONLY]
    )
    n = len(samples)
    for i in range(n):
        rows = [batch.input_ids[i + k * n][batch.attention_mask[i + k * n].bool()] for k in range(4)]
        no_image = [r[r != tiny_model.image_token_id].tolist() for r in rows]
        assert no_image[0] == no_image[1] == no_image[2] == no_image[3]


def test_blank_and_noise_images_match_the_real_size(tiny_model, samples):
    for s in samples:
        blank = PromptRow.from_sample(tiny_model, s, Condition.BLANK, noise_seed=0)
        noise = PromptRow.from_sample(tiny_model, s, Condition.NOISE, noise_seed=0)
        assert blank.image.size == s.image.size == noise.image.size
        assert blank.image.getextrema() == ((255, 255),) * 3
    again = PromptRow.from_sample(tiny_model, samples[0], Condition.NOISE, noise_seed=0)
    other = PromptRow.from_sample(tiny_model, samples[0], Condition.NOISE, noise_seed=1)
    first = PromptRow.from_sample(tiny_model, samples[0], Condition.NOISE, noise_seed=0)
    assert again.image.tobytes() == first.image.tobytes() != other.image.tobytes()


def test_with_suffix_marks_generated_tokens(tiny_model, samples):
    batch = PromptBatch.paired(tiny_model, samples[:2], [Condition.TEXT_ONLY])
    ext = batch.with_suffix([[5, 6, 7], [8]])
    assert ext.generated_mask.sum(-1).tolist() == [3, 1]
    assert ext.input_ids[0, -3:].tolist() == [5, 6, 7] and ext.input_ids[1, -1].item() == 8
    assert (ext.attention_mask.sum(-1) == batch.attention_mask.sum(-1) + ext.generated_mask.sum(-1)).all()
    # a row's positions stay contiguous after re-padding, so the last position is the last generated token
    logits = tiny_model.forward(ext)
    alone = tiny_model.forward(ext.select([1]))
    assert (logits[1, -1] - alone[0, -1]).abs().max() <= 1e-4
