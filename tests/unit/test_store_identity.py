"""The store's identity fields without a model: the fingerprint ignores folders, the digest ignores image folders."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from PIL import Image
from transformers import LlamaConfig

from vlminterp import Sample
from vlminterp.cache.identity import SAMPLED_VALUES, model_fingerprint
from vlminterp.cache.manifest import ManifestMismatchError, check_config, samples_digest


def fake_model(name_or_path: str, weight: torch.Tensor) -> SimpleNamespace:
    """What model_fingerprint reads: ``hf_model.config`` and ``hf_model.named_parameters()``."""
    config = LlamaConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=2, vocab_size=16)
    config._name_or_path = name_or_path
    module = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False)
    module.weight.data = weight.clone()
    module.config = config
    return SimpleNamespace(hf_model=module)


def test_fingerprint_ignores_the_folder_and_sees_the_weights():
    w = torch.randn(64, 130)  # more values than are sampled
    assert w.numel() > SAMPLED_VALUES
    a = model_fingerprint(fake_model("/data/run1/ckpt", w))
    assert a == model_fingerprint(fake_model("/elsewhere/copy", w))
    for index in (0, -1):  # the first and the last value are always sampled
        edited = w.clone()
        edited.view(-1)[index] += 1.0
        assert model_fingerprint(fake_model("/data/run1/ckpt", edited)) != a
    assert model_fingerprint(fake_model("/data/run1/ckpt", w.half())) != a  # dtype counts
    assert model_fingerprint(fake_model("/data/run1/ckpt", w * 1.001)) != a  # a dense change


def test_samples_digest_counts_image_files_by_name_and_size(tmp_path):
    def dataset(folder: Path, color: str) -> list[Sample]:
        folder.mkdir()
        Image.new("RGB", (8, 8), color).save(folder / "img.png")
        return [Sample(id="a", query="what is this ?", image=str(folder / "img.png"))]

    here = samples_digest(dataset(tmp_path / "here", "red"))
    assert samples_digest(dataset(tmp_path / "copied", "red")) == here
    noisy = tmp_path / "other"
    noisy.mkdir()
    Image.effect_noise((8, 8), 50).convert("RGB").save(noisy / "img.png")
    assert samples_digest([Sample(id="a", query="what is this ?", image=str(noisy / "img.png"))]) != here


def test_check_config_skips_the_name_and_explains_a_fingerprint_mismatch():
    stored = {"model_id": "ckpt", "model_fingerprint": "aa", "keep": "stats"}
    check_config(Path("out"), stored, {**stored, "model_id": "copy"})  # another folder name: resumes
    with pytest.raises(
        ManifestMismatchError, match=r"'model_fingerprint'.*model 'ckpt'.*model is 'other'"
    ) as err:
        check_config(Path("out"), stored, {**stored, "model_id": "other", "model_fingerprint": "bb"})
    assert (err.value.field, err.value.stored, err.value.requested) == ("model_fingerprint", "aa", "bb")
