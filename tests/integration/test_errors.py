"""Bad input raises a specific error that names the problem."""

from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import shape_checks_off
from vlminterp import Condition, HookedVLM, PromptBatch, Sample
from vlminterp.models.hooked_vlm import ProcessorLoadError
from vlminterp.prompts import PromptRow


def test_unknown_hook_name_lists_close_names(tiny_model):
    with pytest.raises(ValueError) as err:
        tiny_model.resolve_names("blocks.1.hook_resid_postt")
    assert "blocks.1.hook_resid_post" in str(err.value)
    with pytest.raises(ValueError, match="out of range"):
        tiny_model.layer_hook("resid_post", tiny_model.cfg.n_layers)


def test_image_given_to_text_only_row():
    with pytest.raises(ValueError, match="image was given to Condition.TEXT_ONLY"):
        PromptRow("s", Condition.TEXT_ONLY, "hi", image=Image.new("RGB", (8, 8)))
    with pytest.raises(ValueError, match="Condition.IMAGE needs an image"):
        PromptRow("s", Condition.IMAGE, "hi", image=None)


def test_missing_image_for_image_condition(tiny_model, tmp_path):
    with pytest.raises(ValueError, match="Sample 'x' has no image"):
        PromptBatch.paired(tiny_model, [Sample(id="x", query="hi")], [Condition.IMAGE])
    missing = tmp_path / "nope.jpg"
    with pytest.raises(FileNotFoundError, match="nope.jpg"):
        PromptBatch.paired(tiny_model, [Sample(id="y", query="hi", image=missing)], [Condition.IMAGE])
    with pytest.raises(ValueError, match="has no caption"):
        PromptBatch.paired(tiny_model, [Sample(id="z", query="hi")], [Condition.CAPTION])


def test_unreadable_image_files_name_the_sample_and_path(tiny_model, tmp_path):
    from vlminterp.prompts import ImageLoadError

    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"this is not a PNG")
    good = tmp_path / "good.png"
    Image.new("RGB", (32, 24), "red").save(good)
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(good.read_bytes()[:60])  # header intact, pixel data cut
    for sample_id, path in (("c1", corrupt), ("t1", truncated)):
        with pytest.raises(ImageLoadError) as err:
            PromptBatch.paired(tiny_model, [Sample(id=sample_id, query="hi", image=path)], [Condition.IMAGE])
        assert f"Sample {sample_id!r}" in str(err.value) and str(path) in str(err.value)
        assert err.value.sample_id == sample_id and err.value.path == path


def test_image_arrays_are_images_and_other_types_are_refused(tiny_model):
    pixels = np.random.default_rng(0).integers(0, 256, size=(24, 32, 3), dtype=np.uint8)
    from_array = PromptBatch.paired(tiny_model, [Sample(id="a", query="hi", image=pixels)], [Condition.IMAGE])
    from_pil = PromptBatch.paired(
        tiny_model, [Sample(id="a", query="hi", image=Image.fromarray(pixels))], [Condition.IMAGE]
    )
    assert torch.equal(from_array.input_ids, from_pil.input_ids)
    assert torch.equal(from_array.model_kwargs()["pixel_values"], from_pil.model_kwargs()["pixel_values"])
    with shape_checks_off(), pytest.raises(TypeError, match=r"Sample 'f'.*uint8.*float64"):
        Sample(id="f", query="hi", image=pixels / 255.0)
    with shape_checks_off(), pytest.raises(TypeError, match=r"Sample 'l'.*got list"):
        Sample(id="l", query="hi", image=[[0, 1]])


def test_bad_condition_and_label():
    with pytest.raises(ValueError, match="Unknown condition 'texty'"):
        Condition.parse("texty")
    with pytest.raises(ValueError, match="label must be"):
        Sample(id="a", query="q", label="unsafe")


def test_family_mismatch_and_unsupported_family(tiny_model, tmp_path):
    from vlminterp.models.families import Family, register_family

    register_family(Family(name="test_other", model_types=("not_llava",), chat_template="x"))
    with pytest.raises(ValueError, match="does not match checkpoint"):
        HookedVLM.from_pretrained(tiny_model.cfg.model_id, family="test_other")
    with pytest.raises(ValueError, match="Unknown VLM family 'nope'"):
        HookedVLM.from_pretrained(tiny_model.cfg.model_id, family="nope")
    other = tmp_path / "m"
    shutil.copytree(tiny_model.cfg.model_id, other)
    cfg = json.loads((other / "config.json").read_text())
    cfg["model_type"] = "llama"
    (other / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="Unsupported VLM family: config.model_type='llama'"):
        HookedVLM.from_pretrained(other)


def test_broken_processor_raises_without_installing(tiny_model, tmp_path, monkeypatch):
    """A processor that fails to load gives our error, and no subprocess (pip) is ever started."""
    import transformer_lens.model_bridge.sources.transformers.helpers as tl_helpers

    started = []
    monkeypatch.setattr(subprocess, "check_call", lambda *a, **k: started.append(a))
    monkeypatch.setattr(subprocess, "Popen", lambda *a, **k: started.append(a))
    broken = tmp_path / "broken"
    shutil.copytree(tiny_model.cfg.model_id, broken)
    (broken / "processor_config.json").write_text("{not json")
    with pytest.raises(ProcessorLoadError, match="never installs packages"):
        HookedVLM.from_pretrained(broken)
    # TransformerLens' own fallback path is disabled too: it only checks the import.
    assert tl_helpers._ensure_torchvision() is False
    assert started == []


def test_positions_errors(tiny_model, samples):
    batch = PromptBatch.paired(tiny_model, samples[:1], [Condition.TEXT_ONLY])
    name = tiny_model.layer_hook("resid_post", 0)
    with pytest.raises(ValueError, match="Unknown positions 'first'"):
        tiny_model.run_with_cache(batch, names_filter=name, positions="first")
    import torch

    with pytest.raises(ValueError, match="outside"):
        tiny_model.run_with_cache(batch, names_filter=name, positions=torch.tensor([999]))
    assert tiny_model.count_hooks() == 0


def test_text_instead_of_a_batch_says_how_to_build_one(tiny_model, no_shape_checks):
    for call in (tiny_model, tiny_model.run_with_cache, tiny_model.run_with_hooks, tiny_model.generate):
        with pytest.raises(TypeError, match=r"takes a PromptBatch, got str.*PromptBatch.paired"):
            call("some text")
    assert tiny_model.count_hooks() == 0
