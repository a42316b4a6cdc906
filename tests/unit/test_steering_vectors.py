"""SteeringVectors: value semantics, safetensors + JSON round trip, refusal of mismatched models."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from vlminterp.interventions import SteeringVectors, SteeringVectorsMismatchError


def _fake_model(model_id="m", d_model=8, n_layers=3):
    return SimpleNamespace(cfg=SimpleNamespace(model_id=model_id, d_model=d_model, n_layers=n_layers))


def _vectors(**kw) -> SteeringVectors:
    torch.manual_seed(0)
    fields = dict(
        vectors=torch.randn(3, 8), model_id="m", d_model=8, n_layers=3, method="cmrm", anchor="4 samples"
    )
    return SteeringVectors(**{**fields, **kw})


def test_round_trip_keeps_tensor_and_metadata(tmp_path):
    v = _vectors(alpha=0.3, layers=(0, 2), meta={"estimator": "mean"})
    path = v.save(tmp_path / "sub" / "cmrm")
    assert path == tmp_path / "sub" / "cmrm.safetensors" and (tmp_path / "sub" / "cmrm.json").is_file()
    assert not list((tmp_path / "sub").glob("*.tmp"))
    back = SteeringVectors.load(tmp_path / "sub" / "cmrm.safetensors", model=_fake_model())
    assert torch.equal(back.vectors, v.vectors)
    assert back.metadata() == v.metadata()
    assert back.layers == (0, 2) and back.alpha == 0.3 and back.version == v.version


def test_metadata_is_plain_json(tmp_path):
    v = _vectors()
    v.save(tmp_path / "v")
    meta = json.loads((tmp_path / "v.json").read_text())
    assert {
        "model_id",
        "d_model",
        "n_layers",
        "hook",
        "positions",
        "method",
        "anchor",
        "alpha",
        "layers",
        "version",
    } <= set(meta)


@pytest.mark.parametrize(("field", "value"), [("model_id", "other"), ("d_model", 16), ("n_layers", 4)])
def test_load_refuses_another_model(tmp_path, field, value):
    _vectors().save(tmp_path / "v")
    with pytest.raises(SteeringVectorsMismatchError, match=field.replace("_", ".")):
        SteeringVectors.load(tmp_path / "v", model=_fake_model(**{field: value}))


def test_to_returns_a_copy():
    v = _vectors()
    w = v.to(dtype=torch.float64)
    assert w.vectors.dtype == torch.float64 and v.vectors.dtype == torch.float32
    w.vectors.zero_()
    assert v.vectors.abs().sum() > 0


def test_frozen():
    v = _vectors()
    with pytest.raises(AttributeError):
        v.alpha = 2.0  # type: ignore[misc]
    assert v.replace(alpha=2.0).alpha == 2.0 and v.alpha is None


def test_bad_shape_and_layers_raise(no_shape_checks):
    with pytest.raises(ValueError, match=r"\[n_layers=3, d_model=8\]"):
        _vectors(vectors=torch.zeros(2, 8))
    with pytest.raises(ValueError, match="out of range"):
        _vectors(layers=(5,))
    with pytest.raises(ValueError, match="floating point"):
        _vectors(vectors=torch.zeros(3, 8, dtype=torch.long))


def test_unfitted_layer_is_refused():
    v = _vectors(layers=(1,))
    with pytest.raises(KeyError, match="not fitted"):
        v[0]
    with pytest.raises(SteeringVectorsMismatchError, match=r"\[2\]"):
        v.check_layers([1, 2])


def test_missing_or_foreign_files_raise(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        SteeringVectors.load(tmp_path / "nothing")
    _vectors().save(tmp_path / "v")
    (tmp_path / "v.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(ValueError, match="not a vlminterp steering-vectors file"):
        SteeringVectors.load(tmp_path / "v")
