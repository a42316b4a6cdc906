"""Mistral 3 (Pixtral tower) against plain transformers, and its pitfalls.

The tiny checkpoint is built offline and loaded through ``HookedVLM.from_pretrained``; the reference
is ``Mistral3ForConditionalGeneration`` loaded from the same folder with eager attention. Images of
two aspect ratios (40 x 56 and 70 x 30) give 12 and 8 ``[IMG]`` tokens and ``pixel_values`` that a
batch zero-pads to a common height and width (the model crops them back with ``image_sizes``).
"""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest
import torch

from tests.conftest import hf_forward, noise_image
from vlminterp import Condition, HookedVLM, PromptBatch
from vlminterp.models.families.mistral import PixtralImageOnlyProcessor
from vlminterp.testing import tiny_vlm_dir

pytestmark = pytest.mark.reference

CONDITIONS = [Condition.IMAGE, Condition.TEXT_ONLY, Condition.BLANK]


@pytest.fixture(scope="module")
def model():
    return HookedVLM.tiny("mistral3")


@pytest.fixture(scope="module")
def hf_model(model):
    from transformers import Mistral3ForConditionalGeneration

    return Mistral3ForConditionalGeneration.from_pretrained(
        model.cfg.model_id, attn_implementation="eager"
    ).eval()


@pytest.fixture(scope="module")
def batch(model, noise_pair):
    return PromptBatch.paired(model, noise_pair, CONDITIONS)


def test_tiny_config_sizes():
    """Mistral 3's text sub-config defaults (head_dim 128, rope_theta 1e9) must not leak into the tiny model."""
    config = json.loads((tiny_vlm_dir("mistral3") / "config.json").read_text())
    text = config["text_config"]
    assert text["head_dim"] == text["hidden_size"] // text["num_attention_heads"] == 16
    assert text["sliding_window"] is None and config["spatial_merge_size"] == 2
    assert config["vision_config"]["patch_size"] == 8 and config["vision_config"]["image_size"] == 64


def test_image_tokens_follow_the_image_size(model, batch):
    """40 x 56 (w x h) -> 64 x 48 (h x w) -> 4 rows of 3; 70 x 30 -> 32 x 64 -> 2 rows of 4."""
    inputs = batch.image_inputs
    assert inputs["image_sizes"].tolist() == [[64, 48], [32, 64], [64, 48], [32, 64]]
    assert inputs["pixel_values"].shape == (4, 3, 64, 64)
    # PromptBatch zero-pads the narrower image on the right, as PixtralImageProcessor pads a batch.
    assert inputs["pixel_values"][0, :, :, 48:].abs().max() == 0
    assert inputs["pixel_values"][1, :, 32:, :].abs().max() == 0
    tokens = model.tokenizer.convert_tokens_to_ids(["[IMG]", "[IMG_BREAK]", "[IMG_END]"])
    for row, (n_img, n_break) in zip(batch.rows(Condition.IMAGE), [(12, 3), (8, 1)], strict=True):
        ids = batch.input_ids[row]
        assert [int((ids == t).sum()) for t in tokens] == [n_img, n_break, 1]


def test_role_masks(model, batch, noise_pair):
    """Image mask = ``[IMG]`` only (its count is the processor's); breaks and the end token are template."""
    m = batch.masks
    img, brk, end = model.tokenizer.convert_tokens_to_ids(["[IMG]", "[IMG_BREAK]", "[IMG_END]"])
    for i, cond in enumerate(batch.conditions):
        ids = batch.input_ids[i]
        assert torch.equal(m["image"][i], ids == img)
        sample = noise_pair[i % len(noise_pair)]
        if cond.has_image:  # a BLANK image has the sample image's size, hence its token count
            prompt = model.tokenizer.apply_chat_template(
                model.family_rules.messages(sample.query, True),
                chat_template=model.chat_template,
                tokenize=False,
            )
            proc = model.processor(text=[prompt], images=[[sample.image]], return_tensors="pt")
            assert int(m["image"][i].sum()) == int((proc["input_ids"] == img).sum()) > 0
        assert m["template"][i][(ids == brk) | (ids == end)].all()
        assert model.tokenizer.decode(ids[m["instruction"][i]]) == sample.query
        assert torch.equal(
            m["image"][i] | m["instruction"][i] | m["template"][i], batch.attention_mask[i].bool()
        )


def test_logits_and_resid_post_equal_transformers(model, hf_model, batch):
    names = model.hook_names("resid_post")
    logits, cache = model.run_with_cache(batch, names_filter=names)
    ref, ref_resid = hf_forward(hf_model, batch)
    ref_logits = ref.logits
    real = batch.attention_mask.bool()
    torch.testing.assert_close(logits[real], ref_logits[real], atol=1e-4, rtol=0)
    for name, ref in zip(names, ref_resid, strict=True):
        torch.testing.assert_close(cache[name][real], ref[real], atol=1e-4, rtol=0)


def test_batched_equals_one_at_a_time(model, batch):
    """The padded pixel_values of a mixed-size batch give each row's own logits (cropped by image_sizes)."""
    assert batch.select([1]).image_inputs["pixel_values"].shape == (1, 3, 32, 64)  # unpadded when alone
    full = model(batch)[:, -1]
    for i in range(len(batch)):
        torch.testing.assert_close(full[i], model(batch.select([i]))[0, -1], atol=1e-4, rtol=0)


def test_image_content_reaches_the_logits(model, batch):
    last = model(batch)[:, -1]
    image, text, blank = (batch.rows(c) for c in CONDITIONS)
    assert (last[image] - last[text]).abs().amax(-1).min() > 1e-4
    assert (last[image] - last[blank]).abs().amax(-1).min() > 1e-4


def test_generate_equals_transformers_greedy(model, hf_model, batch):
    gen = model.generate(batch, max_new_tokens=5)
    kwargs = {"attention_mask": batch.attention_mask, **batch.image_inputs}
    with torch.no_grad():
        ref = hf_model.generate(input_ids=batch.input_ids, max_new_tokens=5, do_sample=False, **kwargs)
    eos = model.tokenizer.eos_token_id
    for row, tokens in zip(ref[:, batch.input_ids.shape[1] :].tolist(), gen.tokens, strict=True):
        assert tokens == (row[: row.index(eos)] if eos in row else row)


def test_missing_image_sizes_raises(model, hf_model, batch):
    """Pitfall 6: the model cannot crop padded pixel_values without image_sizes, so it refuses to run."""
    assert "image_sizes" in batch.model_kwargs()
    assert "image_sizes" in model.family_rules.image_kwargs
    with pytest.raises(TypeError):  # transformers: "'NoneType' object is not iterable"
        hf_forward(hf_model, batch, image_sizes=None)
    with pytest.raises(TypeError):
        model.bridge(batch.input_ids, **{k: v for k, v in batch.model_kwargs().items() if k != "image_sizes"})
    assert model.count_hooks() == 0


def test_vision_tower_is_one_opaque_hook(model, hf_model, batch):
    """Only vision_encoder.hook_in/hook_out exist; hook_out is Pixtral's last hidden state of all patches.

    Projector row r lands on the r-th ``[IMG]`` position (raster order), read at blocks.0.hook_resid_pre.
    """
    vision = sorted(n for n in model.hook_dict if n.startswith("vision_encoder."))
    assert vision == ["vision_encoder.hook_in", "vision_encoder.hook_out"]
    names = ["vision_encoder.hook_out", "vision_projector.hook_out", "blocks.0.hook_resid_pre"]
    _, cache = model.run_with_cache(batch, names_filter=names)
    inputs = batch.image_inputs
    with torch.no_grad():
        ref = hf_model.model.vision_tower(inputs["pixel_values"], image_sizes=inputs["image_sizes"])
    n_patches = int((inputs["image_sizes"] // 8).prod(-1).sum())
    assert cache["vision_encoder.hook_out"].shape == (1, n_patches, 32)
    torch.testing.assert_close(cache["vision_encoder.hook_out"], ref.last_hidden_state, atol=1e-5, rtol=0)
    projected = cache["vision_projector.hook_out"]
    assert projected.shape == (int(batch.image_mask.sum()), model.cfg.d_model)
    torch.testing.assert_close(cache["blocks.0.hook_resid_pre"][batch.image_mask], projected, atol=0, rtol=0)


def test_boot_never_starts_pip(monkeypatch):
    """PixtralProcessor needs torchvision, so TransformerLens' boot reaches its `pip install torchvision`
    fallback; HookedVLM disables it: the fallback runs, and no subprocess is started."""
    import transformer_lens.model_bridge.sources.transformers.helpers as tl_helpers
    from transformers import AutoProcessor

    source = tiny_vlm_dir("mistral3")
    with pytest.raises(ImportError, match="Torchvision"):
        AutoProcessor.from_pretrained(source)
    started, fallback_calls = [], []
    original = tl_helpers._ensure_torchvision

    def spy():
        fallback_calls.append(1)
        return original()

    for name in ("check_call", "check_output", "run", "Popen", "call"):
        monkeypatch.setattr(subprocess, name, lambda *a, **k: started.append(a))
    monkeypatch.setattr(tl_helpers, "_ensure_torchvision", spy)
    loaded = HookedVLM.from_pretrained(source)
    assert fallback_calls, "the boot no longer reaches TransformerLens' install fallback; update this test"
    assert started == []
    assert isinstance(loaded.processor, PixtralImageOnlyProcessor)


def test_processor_round_trip_and_hub_layout(model, tmp_path):
    """save/from_pretrained round-trips; a hub-style folder (separate preprocessor_config.json holding the
    tower's patch size and the torchvision image-processor name) loads through the same class and
    encodes identically."""
    proc = model.processor
    assert json.loads((tiny_vlm_dir("mistral3") / "processor_config.json").read_text())[
        "processor_class"
    ] == ("PixtralProcessor")
    hub = tmp_path / "hub"
    shutil.copytree(model.cfg.model_id, hub)
    saved = json.loads((hub / "processor_config.json").read_text())
    image_cfg = saved.pop("image_processor")
    image_cfg.update(image_processor_type="PixtralImageProcessorFast", processor_class="PixtralProcessor")
    image_cfg["patch_size"] = (
        8  # hub configs store the tower's patch; the processor reads in patch x merge cells
    )
    (hub / "preprocessor_config.json").write_text(json.dumps(image_cfg))
    (hub / "processor_config.json").write_text(json.dumps(saved))
    image = noise_image((40, 56), 1)
    text = ["<s>[INST][IMG]what is this ?[/INST]"]
    expected = proc(text=text, images=[[image]], return_tensors="pt")
    for folder in (tmp_path / "again", hub):
        if folder.name == "again":
            proc.save_pretrained(folder)
        loaded = PixtralImageOnlyProcessor.from_pretrained(folder)
        assert (loaded.patch_size, loaded.spatial_merge_size, loaded.chat_template) == (
            8,
            2,
            proc.chat_template,
        )
        got = loaded(text=text, images=[[image]], return_tensors="pt")
        assert sorted(got) == ["attention_mask", "image_sizes", "input_ids", "pixel_values"]
        for key in got:
            assert torch.equal(got[key], expected[key]), key
    no_image = proc(text=["<s>[INST]hi[/INST]"], images=None, return_tensors="pt")
    assert sorted(no_image) == ["attention_mask", "input_ids"]


def test_prompt_has_one_bos(model, batch):
    bos = model.tokenizer.bos_token_id
    for i in range(len(batch)):
        ids = batch.input_ids[i][batch.attention_mask[i].bool()]
        assert int((ids == bos).sum()) == 1
