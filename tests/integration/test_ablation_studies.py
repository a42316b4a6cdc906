"""The ablation studies end to end on the tiny model with tiny grids: files, rows, figures, resume, CLI."""

from __future__ import annotations

import argparse
import json

import pytest

from vlminterp import viz
from vlminterp.cli import sweep as sweep_cli


@pytest.fixture(autouse=True)
def _html_only(monkeypatch):
    """Figures as HTML only (PNG rendering starts a browser; the PNG path is viz's to test)."""
    monkeypatch.setattr(viz.export, "png_unavailable_reason", lambda: "disabled in tests")


def _args(study, out, *extra):
    parser = argparse.ArgumentParser()
    sweep_cli.add_arguments(parser)
    base = ["--study", study, "--model", "tiny", "--out", str(out), "--n-harmful", "3", "--n-benign", "2"]
    return parser.parse_args([*base, "--no-progress", *extra])


def _rows(out):
    return json.loads((out / "results.json").read_text())


def test_layer_ablation_study(tiny_model, tmp_path):
    from vlminterp.studies import layer_ablation

    out = tmp_path / "layer"
    written = layer_ablation.run(_args("layer", out, "--window", "2"), model=tiny_model)
    rows = _rows(out)
    study = [r for r in rows if r["analysis"] == "layer_ablation"]
    n = tiny_model.cfg.n_layers
    assert len(study) == 2 * 3 * n * 2  # methods x scopes x layers x metrics
    assert {r["method"] for r in study} == {"cmrm", "shiftdc"}
    assert all(r["value"] is not None for r in study)
    # "from the last layer" and "single last layer" steer the same layers: same numbers.
    for method in ("cmrm", "shiftdc"):
        pick = {
            (r["scope"], r["metric"]): r["value"]
            for r in study
            if r["method"] == method and r["layer"] == n - 1
        }
        assert pick["from", "refusal_score"] == pytest.approx(pick["single", "refusal_score"], abs=1e-5)
    assert {r["condition"] for r in rows if r["analysis"] == "baseline"} == {"image", "text_only"}
    assert {p.name for p in written} >= {"results.json", "layer_ablation_refusal_score.html"}
    assert (out / "manifest.json").is_file() and (out / "rows_cmrm.jsonl").is_file()
    assert tiny_model.count_hooks() == 0


def test_head_ablation_study_and_resume(tiny_model, tmp_path):
    from vlminterp.studies import head_ablation

    out = tmp_path / "head"
    args = _args("head", out, "--top-k", "2")
    head_ablation.run(args, model=tiny_model)
    rows = _rows(out)
    c = tiny_model.cfg
    changes = [r for r in rows if r["metric"] == "refusal_score_change"]
    assert len(changes) == 2 * c.n_layers * c.n_heads
    top = [r for r in rows if r["analysis"] == "top_heads"]
    assert len(top) == 2 * c.n_layers * c.n_heads and sum(r["selected"] for r in top) == 2 * 2
    patch = {
        r["layer"]: r["value"] for r in rows if r["metric"] == "refusal_gap_recovered" and r["head"] is None
    }
    assert patch[c.n_layers - 1] == pytest.approx(1.0, abs=1e-4)  # the last residual state carries the answer
    for name in ("head_ablation_zero.html", "head_ablation_mean.html", "head_patching.html"):
        assert (out / name).is_file()
    before = (out / "rows_ablation.jsonl").read_text()
    head_ablation.run(args, model=tiny_model)  # resumes: every point is done, nothing recomputed
    assert (out / "rows_ablation.jsonl").read_text() == before
    assert _rows(out) == rows


def test_alpha_layer_grid_study_through_the_cli_entry(tmp_path, capsys):
    """``vlminterp sweep ...`` is ``vlminterp.cli.sweep.main``; ``--layers`` chooses the grid's start layers."""
    out = tmp_path / "alpha"
    argv = ["--study", "alpha-layer", "--model", "tiny", "--out", str(out), "--alphas", "0,1",
            "--n-harmful", "2", "--n-benign", "2", "--layers", "0,-1", "--no-progress"]  # fmt: skip
    assert sweep_cli.main(argv) == 0
    rows = _rows(out)
    assert {(r["alpha"], r["layer"]) for r in rows} == {(a, lay) for a in (0.0, 1.0) for lay in (0, 1)}
    assert (out / "results.csv").read_text().splitlines()[0].startswith("model,dataset,analysis,")
    kl = {(r["alpha"], r["layer"]): r["value"] for r in rows if r["metric"] == "kl_to_unsteered"}
    assert kl[0.0, 0] == pytest.approx(0.0, abs=1e-9)  # alpha = 0 is no intervention
    assert "alpha_layer_grid_refusal_score.html" in capsys.readouterr().out


def test_figure_script_redraws_from_results(tiny_model, tmp_path):
    from vlminterp.studies import ablation_heatmap, alpha_layer_grid

    out = tmp_path / "alpha"
    alpha_layer_grid.run(_args("alpha-layer", out, "--alphas", "0.5"), model=tiny_model)
    written = ablation_heatmap.main([str(out / "results.json"), "--out", str(tmp_path / "figs")])
    assert sorted(p.name for p in written) == [
        "alpha_layer_grid_kl_to_unsteered.html",
        "alpha_layer_grid_refusal_score.html",
    ]
    (tmp_path / "other.json").write_text(json.dumps([{"analysis": "pca", "value": 1}]))
    with pytest.raises(ValueError, match="no ablation-study rows"):
        ablation_heatmap.draw(tmp_path / "other.json")


def test_bad_study_options_raise(tiny_model, tmp_path):
    from vlminterp.studies import alpha_layer_grid, head_ablation, layer_ablation

    with pytest.raises(ValueError, match="choose from"):
        layer_ablation.run(_args("layer", tmp_path, "--methods", "cmrm,steer"), model=tiny_model)
    with pytest.raises(ValueError, match="choose from"):
        head_ablation.run(_args("head", tmp_path, "--modes", "median"), model=tiny_model)
    with pytest.raises(ValueError, match="comma-separated numbers"):
        alpha_layer_grid.run(_args("alpha-layer", tmp_path, "--alphas", "one"), model=tiny_model)
    for bad in ("0,nan", "inf", "1,-inf"):
        with pytest.raises(ValueError, match="not finite"):
            alpha_layer_grid.run(_args("alpha-layer", tmp_path, "--alphas", bad), model=tiny_model)
