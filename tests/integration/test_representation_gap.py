"""The representation_gap study end to end on the tiny llava: rows, manifest, resume, figures."""

import json
import runpy
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import shape_checks_off
from vlminterp import viz
from vlminterp.data.synthetic import demo_samples
from vlminterp.studies import representation_gap as study

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def no_png(monkeypatch):
    monkeypatch.setattr(viz.export, "png_unavailable_reason", lambda: "disabled in tests (speed)")


def test_collection_batched_equals_one_sample_at_a_time(tiny_model):
    samples = demo_samples(2)
    cfg = study.RepresentationGapConfig(limit=None, batch_size=4)
    one = study.collect(tiny_model, samples, study.RepresentationGapConfig(batch_size=1))
    batched = study.collect(tiny_model, samples, cfg)
    for cond in cfg.conditions:
        assert one.sample_ids[cond] == batched.sample_ids[cond]
        np.testing.assert_allclose(one.get(cond), batched.get(cond), atol=1e-4)
    assert batched.get("image").shape == (4, tiny_model.cfg.n_layers, tiny_model.cfg.d_model)


def test_study_end_to_end(tiny_model, tmp_path, no_png, capsys):
    out = tmp_path / "rg"
    cfg = study.RepresentationGapConfig(limit=6, n_splits=3, out=str(out))
    study.run(cfg, model=tiny_model)
    rows = json.loads((out / "results.json").read_text())
    assert all({"model", "dataset", "analysis", "layer", "metric", "value"} <= set(r) for r in rows)
    assert all(isinstance(r["value"], float) and np.isfinite(r["value"]) for r in rows)
    analyses = {r["analysis"] for r in rows}
    assert analyses == {
        "pca",
        "gap",
        "gap_closed",
        "probe",
        "direction",
        "projection",
        "distortion",
        "distortion_summary",
    }
    pairs = {(r["train"], r["test"]) for r in rows if r["analysis"] == "probe"}
    assert pairs == {
        ("text_only", "text_only"),
        ("image", "image"),
        ("text_only", "image"),
        ("text_only", "caption"),
    }
    closed = {r["shift"] for r in rows if r["analysis"] == "gap_closed"}
    assert closed == {"cmrm_mean", "cmrm_first_pc"}
    n_pc = sum(r["analysis"] == "pca" and r["metric"] == "pc1" for r in rows)
    assert n_pc == 12 * 4 * tiny_model.cfg.n_layers  # samples x conditions x layers
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config_hash"] == cfg.hash() and manifest["info"]["n_rows"] == len(rows)
    assert manifest["info"]["model"] == "tiny:llava" and "out" not in manifest["config"]
    assert (out / "results.csv").read_text().count("\n") == len(rows) + 1
    assert study.RepresentationGapConfig.from_dict({**manifest["config"], "out": str(out)}) == cfg
    for name in viz.FIGURES:
        assert (out / f"{name}.html").is_file()

    # A matching manifest resumes without touching the model.
    capsys.readouterr()
    with shape_checks_off():  # object(): a stand-in that fails if anything touches it
        study.run(cfg, model=object())
    assert "is up to date" in capsys.readouterr().out
    assert json.loads((out / "results.json").read_text()) == rows


def test_figure_script_runs_on_the_study_json(tiny_model, tmp_path, no_png, monkeypatch):
    out = tmp_path / "rg"
    study.run(
        study.RepresentationGapConfig(limit=5, n_splits=2, out=str(out), conditions=("image", "text_only")),
        model=tiny_model,
    )
    argv = [str(out / "results.json"), "--out", str(tmp_path / "fig")]
    monkeypatch.setattr(sys, "argv", ["probe_accuracy.py", *argv])
    runpy.run_path(str(ROOT / "figures" / "probe_accuracy.py"), run_name="__main__")
    assert (tmp_path / "fig.html").is_file()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"conditions": ("image", "blank")}, "must include 'text_only'"),
        ({"conditions": ("image", "text_only", "photo")}, "Unknown condition 'photo'"),
        ({"limit": 4}, "use --limit >= 5"),
        ({"dataset": "mm-safetybench"}, "pass --data-root"),
        ({"n_splits": 1}, "n_splits must be >= 2"),
    ],
)
def test_config_rejects_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        study.RepresentationGapConfig(**kwargs)


def test_bad_layer_names_the_range(tiny_model):
    with pytest.raises(ValueError, match=r"--layers \[7\] are out of range for a 2-layer model"):
        study.collect(tiny_model, demo_samples(1), study.RepresentationGapConfig(layers=(7,)))


def test_cli_refuses_bad_layers_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "gap"
    with pytest.raises(SystemExit) as e:
        study.main(
            ["--model", "tiny", "--limit", "2", "--n-splits", "2", "--layers", "0,9", "--out", str(out)]
        )
    assert e.value.code == 2 and "--layers [9] are out of range" in capsys.readouterr().err
    assert not out.exists()
