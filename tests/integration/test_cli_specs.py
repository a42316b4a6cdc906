"""One model spec parser for every command; a CLI run validates before it writes anything."""

from __future__ import annotations

import pytest

from vlminterp.cache.collect_cli import CollectConfig
from vlminterp.cli import main
from vlminterp.eval.pipeline import EvalConfig
from vlminterp.specs import ModelSpec, model_name
from vlminterp.studies.representation_gap import RepresentationGapConfig


@pytest.mark.parametrize("spec", ["tiny", "tiny:llava", "organism"])
def test_every_command_accepts_the_same_specs(spec, tmp_path):
    EvalConfig(model=spec, dataset="jailbreakllms", root=str(tmp_path), out=str(tmp_path), judge="none")
    CollectConfig(out=str(tmp_path), model=spec)
    RepresentationGapConfig(model=spec)
    assert ModelSpec.parse(spec).name == ("tiny:llava" if spec.startswith("tiny") else spec)


@pytest.mark.parametrize("spec", ["tiny:nope", "/no/such/folder", ""])
def test_bad_specs_are_refused_before_loading(spec):
    with pytest.raises(ValueError, match="--model"):
        ModelSpec.parse(spec)


def test_model_names_are_specs_not_paths(tiny_model):
    assert model_name(tiny_model) == "tiny:llava"


@pytest.mark.parametrize(
    "bad",
    [
        ["steer", "cmrm", "--model", "tiny", "--anchor", "organism:train", "--eval", "organism:test",
         "--judge", "organism", "--alpha", "nan"],
        ["steer", "cmrm", "--model", "tiny:nope", "--anchor", "organism:train", "--eval", "organism:test",
         "--judge", "organism"],
        ["steer", "cmrm", "--model", "tiny", "--anchor", "organism:train", "--eval", "nosuchset",
         "--judge", "organism"],
        ["collect", "--model", "tiny", "--dataset", "nosuchset", "--data-root", "x"],
        ["collect", "--model", "tiny:nope"],
    ],
)  # fmt: skip
def test_an_invalid_run_writes_nothing(bad, tmp_path):
    out = tmp_path / "run"
    with pytest.raises((SystemExit, ValueError)):
        main([*bad, "--out", str(out)])
    assert not out.exists() or not any(out.iterdir())


def test_the_corrected_rerun_uses_the_same_out(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(ValueError):
        main(["collect", "--model", "tiny", "--dataset", "nosuchset", "--data-root", "x", "--out", str(out)])
    assert main(["collect", "--model", "tiny", "--limit", "2", "--no-progress", "--out", str(out)]) == 0
    text = "".join(p.read_text() for p in out.glob("*.json"))
    assert str(tmp_path) not in text
