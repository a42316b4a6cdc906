"""Idefics3 / SmolVLM specifics: non-contiguous image tokens, padded crops, SmolVLM's TL registration.

The family-agnostic checks (HF equality, batching, generate, interventions) run for both families in
``test_families.py``; these are the crop-layout and registration pitfalls.
"""

from __future__ import annotations

import pytest
import torch

from vlminterp import Condition, HookedVLM, PromptBatch
from vlminterp.models.families.idefics import register_smolvlm_adapter

pytestmark = pytest.mark.reference

SMOLVLM = "SmolVLMForConditionalGeneration"
#: 40 x 56 -> 2 x 2 crops + global view; 70 x 30 -> 1 x 2 crops + global view. 4 tokens per crop.
CROPS = {"a": 5, "b": 3}


@pytest.fixture(scope="module", params=["idefics3", "smolvlm"])
def model(request):
    return HookedVLM.tiny(request.param)


@pytest.fixture(scope="module")
def hf(model):
    import transformers

    cls = getattr(transformers, model.hf_model.config.architectures[0])
    return cls.from_pretrained(model.cfg.model_id, attn_implementation="eager").eval()


@pytest.fixture(scope="module")
def batch(model, noise_pair):
    return PromptBatch.paired(model, noise_pair, [Condition.IMAGE, Condition.TEXT_ONLY, Condition.BLANK])


def test_role_masks_over_non_contiguous_crops(model, batch, noise_pair):
    """4 <image> tokens per crop, one run per crop; crop markers are template; the query is located."""
    tok = model.tokenizer
    markers = tok.convert_tokens_to_ids(["<fake_token_around_image>", "<global-img>", "<row_1_col_1>"])
    for i, cond in enumerate(batch.conditions):
        sample = noise_pair[i % len(noise_pair)]
        image = batch.image_mask[i]
        crops = CROPS[sample.id] if cond.has_image else 0
        assert int(image.sum()) == 4 * crops
        starts = image & ~torch.nn.functional.pad(image, (1, 0))[:-1]
        assert int(starts.sum()) == crops, "each crop's image tokens form their own run"
        is_marker = torch.isin(batch.input_ids[i], torch.tensor(markers))
        assert bool(is_marker.any()) == cond.has_image and bool(batch.template_mask[i][is_marker].all())
        assert tok.decode(batch.input_ids[i][batch.instruction_mask[i]]) == sample.query


def test_crops_are_zero_padded_like_the_processor_pads_them(model, batch, noise_pair):
    """Our per-row padding of pixel_values / pixel_attention_mask equals the processor's own batch padding."""
    ours = batch.image_inputs
    assert ours["pixel_values"].shape[:2] == (4, 5) and ours["pixel_attention_mask"].shape[:2] == (4, 5)
    row_b = batch.rows(Condition.IMAGE)[1]
    assert ours["pixel_values"][row_b, CROPS["b"] :].abs().max() == 0
    assert ours["pixel_attention_mask"][row_b, CROPS["b"] :].abs().max() == 0
    prompts = [
        model.tokenizer.apply_chat_template(
            model.family_rules.messages(s.query, with_image=True),
            chat_template=model.chat_template,
            add_generation_prompt=True,
            tokenize=False,
        )
        for s in noise_pair
    ]
    ref = model.processor(
        text=prompts, images=[[s.image] for s in noise_pair], return_tensors="pt", padding=True
    )
    for key in ("pixel_values", "pixel_attention_mask"):
        assert torch.equal(ours[key][:2], ref[key].to(ours[key].dtype)), key


def test_padded_crops_change_nothing(model, batch):
    """The 3-crop row inside a batch padded to 5 crops equals that row alone (the model drops zero crops)."""
    row_b = batch.rows(Condition.IMAGE)[1]
    alone = batch.select([row_b])
    assert alone.image_inputs["pixel_values"].shape[1] == CROPS["b"]
    torch.testing.assert_close(model(batch)[row_b, -1], model(alone)[0, -1], atol=1e-4, rtol=0)


def test_smolvlm_is_registered_with_the_idefics3_adapter():
    from transformer_lens.factories import architecture_adapter_factory as factory
    from transformer_lens.model_bridge.supported_architectures import Idefics3ArchitectureAdapter

    register_smolvlm_adapter()  # idempotent
    assert factory.SUPPORTED_ARCHITECTURES[SMOLVLM] is Idefics3ArchitectureAdapter
    assert factory.ArchitectureAdapterFactory._adapters[SMOLVLM] is Idefics3ArchitectureAdapter


def test_smolvlm_boots_as_smolvlm_and_equals_transformers(model, hf, batch):
    """Both families: bridge == HF on the padded batch; SmolVLM boots its own class with its processor."""
    real = batch.attention_mask.bool()
    with torch.no_grad():
        ref = hf(input_ids=batch.input_ids, **batch.model_kwargs()).logits
    torch.testing.assert_close(model(batch)[real], ref[real], atol=1e-4, rtol=0)
    if model.family == "smolvlm":
        assert type(model.hf_model).__name__ == SMOLVLM
        assert type(model.bridge.adapter).__name__ == "Idefics3ArchitectureAdapter"
        assert type(model.processor).__name__ == "ImageOnlySmolVLMProcessor"


def test_smolvlm_needs_the_registration_for_the_bridge(monkeypatch):
    """TransformerLens 4.3 lacks SmolVLM: without our entry it would only get the fallback adapter."""
    from transformer_lens.factories import architecture_adapter_factory as factory

    from vlminterp.models.fallback import FallbackBridge
    from vlminterp.testing import tiny_vlm_dir

    monkeypatch.delitem(factory.SUPPORTED_ARCHITECTURES, SMOLVLM)
    monkeypatch.delitem(factory.ArchitectureAdapterFactory._adapters, SMOLVLM)
    model = HookedVLM.from_pretrained(tiny_vlm_dir("smolvlm"))
    assert isinstance(model.bridge, FallbackBridge)
    assert not any(n.startswith("vision_encoder.") for n in model.hook_dict)


def test_prompt_has_one_bos(model, batch):
    bos = model.tokenizer.bos_token_id
    assert ((batch.input_ids == bos) & batch.attention_mask.bool()).sum(-1).tolist() == [1] * len(batch)
