"""One model, dataset and judge spec for every command; a CLI run validates before it writes anything."""

from __future__ import annotations

import json

import pytest

from vlminterp.cli import main
from vlminterp.eval.pipeline import EvalConfig
from vlminterp.specs import ModelSpec, model_name
from vlminterp.studies.collect import CollectConfig
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
        ["steer", "cmrm", "--model", "tiny", "--anchor", "organism:train", "--eval", "organism:test",
         "--judge", "organism", "--layers", "0,5"],
        ["steer", "cmrm", "--model", "tiny", "--level", "sample", "--eval", "organism:test", "--judge", "none"],
        ["collect", "--model", "tiny", "--dataset", "nosuchset", "--data-root", "x"],
        ["collect", "--model", "tiny:nope"],
        ["collect", "--model", "tiny", "--layers", "0,7"],
        ["sweep", "--study", "layer", "--model", "tiny:nope"],
        ["sweep", "--study", "layer", "--model", "tiny", "--layers", "0,9"],
        ["sweep", "--study", "layer", "--model", "tiny", "--dataset", "organism:dev"],
        ["sweep", "--study", "head", "--model", "tiny", "--dataset", "figstep"],
        ["sweep", "--study", "head", "--model", "tiny", "--modes", "median"],
        ["sweep", "--study", "alpha-layer", "--model", "tiny", "--alphas", "one"],
        ["gap", "--model", "tiny", "--layers", "0,9", "--limit", "2", "--n-splits", "2"],
        ["gap", "--model", "tiny", "--dataset", "nosuchset"],
        ["eval", "--model", "tiny", "--dataset", "organism", "--judge", "gpt4"],
        ["eval", "--model", "tiny", "--dataset", "mme", "--judge", "none"],
    ],
)  # fmt: skip
def test_an_invalid_run_writes_nothing(bad, tmp_path):
    out = tmp_path / "run"
    with pytest.raises((SystemExit, ValueError)) as e:
        main([*bad, "--out", str(out)])
    assert not isinstance(e.value, SystemExit) or e.value.code == 2
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.parametrize("command", [["sweep", "--study", "layer"], ["gap"], ["collect"]])
def test_an_out_that_is_a_file_is_refused_and_kept(command, tmp_path):
    out = tmp_path / "file"
    out.write_text("mine")
    with pytest.raises((SystemExit, ValueError, FileExistsError, NotADirectoryError)):
        main([*command, "--model", "tiny", "--out", str(out)])
    assert out.read_text() == "mine"


def test_the_corrected_rerun_uses_the_same_out(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as e:  # exit 2 with the message, nothing written
        main(["collect", "--model", "tiny", "--dataset", "nosuchset", "--data-root", "x", "--out", str(out)])
    assert e.value.code == 2 and not out.exists()
    assert main(["collect", "--model", "tiny", "--limit", "2", "--no-progress", "--out", str(out)]) == 0
    text = "".join(p.read_text() for p in out.glob("*.json"))
    assert str(tmp_path) not in text


def test_a_refused_sweep_then_its_corrected_rerun(tmp_path, monkeypatch):
    """Bad --layers exits 2 with nothing written; the same --out then takes the corrected run."""
    from vlminterp import viz

    monkeypatch.setattr(viz, "png_unavailable_reason", lambda: "disabled in tests")
    out = tmp_path / "sweep"
    argv = ["sweep", "--study", "alpha-layer", "--model", "tiny", "--alphas", "0", "--n-harmful", "1",
            "--n-benign", "1", "--no-progress", "--out", str(out)]  # fmt: skip
    with pytest.raises(SystemExit) as e:
        main([*argv, "--layers", "5"])
    assert e.value.code == 2 and not out.exists()
    assert main([*argv, "--layers", "-1"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["model"] == "tiny:llava" and "out" not in manifest["config"]
    assert {r["layer"] for r in json.loads((out / "results.json").read_text())} == {1}
    assert str(tmp_path) not in (out / "manifest.json").read_text()
