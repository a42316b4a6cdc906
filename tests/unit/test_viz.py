"""Figure builders on rows from the analyses (synthetic, no model): traces, axes, slider, files."""

import json

import numpy as np
import plotly.io as pio
import pytest

from vlminterp import viz
from vlminterp.analysis import (
    ConditionActivations,
    direction_rows,
    distortion_rows,
    gap_closed_rows,
    gap_rows,
    pca_rows,
    probe_rows,
    projection_rows,
    safety_direction,
)

D, N, LAYERS = 8, 12, (0, 3, 5)


@pytest.fixture(scope="module")
def rows():
    rng = np.random.default_rng(0)
    y = ["harmful", "benign"] * (N // 2)
    sign = np.where(np.array(y) == "benign", 1.0, -1.0)[:, None, None]
    text = rng.normal(size=(N, len(LAYERS), D)) + sign
    conds = {"text_only": text, "image": text + 2, "caption": text + 0.1}
    ids = [f"s{i}" for i in range(N)]
    acts = ConditionActivations(
        conds, sample_ids=dict.fromkeys(conds, ids), labels=dict.fromkeys(conds, y), layers=LAYERS, model="m"
    )
    s = safety_direction(acts)
    out = pca_rows(acts)
    out += gap_rows(acts, [("image", "text_only"), ("caption", "text_only")], n_splits=3)
    out += gap_closed_rows(acts, {"zero": np.zeros((len(LAYERS), D))})
    out += probe_rows(acts, [("text_only", "text_only"), ("text_only", "image")], n_splits=3)
    out += direction_rows(acts, {"safety": s, "modality": np.ones((len(LAYERS), D))})
    out += projection_rows(acts, "safety", s)
    out += distortion_rows(acts, s)
    return json.loads(json.dumps(out))  # exactly what a results file holds


def test_pca_scatter_has_one_trace_per_layer_group_and_a_slider(rows):
    fig = viz.pca_scatter(rows)
    groups = 3 * 2  # conditions x labels
    assert len(fig.data) == len(LAYERS) * groups
    steps = fig.layout.sliders[0].steps
    assert [s.label for s in steps] == ["0", "3", "5"]
    for step, layer in zip(steps, LAYERS, strict=True):
        visible = step.args[0]["visible"]
        assert sum(visible) == groups
        assert all(t.meta["layer"] == layer for t, v in zip(fig.data, visible, strict=True) if v)
        assert step.args[1]["xaxis.title.text"].startswith("PC1 (")
    assert sum(t.visible for t in fig.data) == groups
    assert {t.marker.symbol for t in fig.data} == {"x", "circle"}
    assert fig.layout.xaxis.title.text.startswith("PC1") and fig.layout.yaxis.title.text.startswith("PC2")


def test_probe_accuracy_has_a_line_and_a_band_per_pair(rows):
    fig = viz.probe_accuracy(rows)
    assert len(fig.data) == 2 * 2
    lines = [t for t in fig.data if t.mode == "lines+markers"]
    assert [t.name for t in lines] == ["text_only → text_only", "text_only → image"]
    assert list(lines[0].x) == list(LAYERS)
    band = fig.data[0]
    assert band.fill == "toself" and len(band.x) == 2 * len(LAYERS)
    assert fig.layout.xaxis.title.text == "layer" and "probe accuracy" in fig.layout.yaxis.title.text


def test_direction_cosine_heatmaps(rows):
    fig = viz.direction_cosine(rows)
    assert [t.type for t in fig.data] == ["heatmap", "heatmap"]
    z = np.array(fig.data[1].z, dtype=float)  # the all-ones modality direction: cosine 1 everywhere
    np.testing.assert_allclose(z, np.ones((3, 3)))
    np.testing.assert_allclose(np.diag(np.array(fig.data[0].z, dtype=float)), 1.0)


def test_projection_gap_and_distortion_figures(rows):
    fig = viz.projection_distributions(rows)
    assert len(fig.data) == 3 * 2 and {t.type for t in fig.data} == {"violin"}
    assert sum(t.showlegend for t in fig.data) == 2
    gap = viz.gap_metrics(rows)
    assert len(gap.data) == 5 * 2 + 1  # 5 metrics x 2 pairs + gap_closed x 1 shift
    dist = viz.distortion_lines(rows)
    assert len(dist.data) == 2 * 2  # metrics x (variant, label)


def test_generic_heatmap_pivots_and_refuses_duplicates():
    cells = [{"layer": la, "alpha": a, "value": la * 10 + a} for la in (2, 0, 1) for a in (0.5, 1.0)]
    fig = viz.heatmap(cells, x="alpha", y="layer")
    assert list(fig.data[0].y) == ["0", "1", "2"] and list(fig.data[0].x) == ["0.5", "1.0"]
    assert fig.data[0].z[2][1] == 21.0
    with pytest.raises(ValueError, match="two rows for alpha=0.5, layer=2"):
        viz.heatmap([*cells, cells[0]], x="alpha", y="layer")
    with pytest.raises(ValueError, match=r"lack the keys \['head'\]"):
        viz.heatmap(cells, x="head", y="layer")


def test_missing_rows_raise_naming_the_figure(rows):
    with pytest.raises(ValueError, match=r"probe_accuracy needs rows .* \(analyses present: \[.pca.\]\)"):
        viz.probe_accuracy([r for r in rows if r["analysis"] == "pca"])


def test_save_figure_html_always_png_skipped_with_a_message(rows, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(viz.export, "png_unavailable_reason", lambda: "kaleido is not installed")
    written = viz.save_figure(viz.probe_accuracy(rows), tmp_path / "sub" / "probe")
    assert written == [tmp_path / "sub" / "probe.html"]
    assert "PNG skipped for probe.html: kaleido is not installed." in capsys.readouterr().out
    html = written[0].read_text()
    assert "Plotly.newPlot" in html and (tmp_path / "sub" / "plotly.min.js").is_file()
    assert not list((tmp_path / "sub").glob(".*tmp*"))


def test_png_export(rows, tmp_path):
    reason = viz.png_unavailable_reason()
    if reason is not None:
        pytest.skip(f"PNG export unavailable: {reason}")
    written = viz.save_figure(viz.pca_scatter(rows), tmp_path / "pca")
    png = tmp_path / "pca.png"
    assert written == [tmp_path / "pca.html", png]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_figure_main_and_draw_read_results_files(rows, tmp_path, monkeypatch):
    monkeypatch.setattr(viz.export, "png_unavailable_reason", lambda: "disabled in this test")
    results = tmp_path / "results.json"
    results.write_text(json.dumps(rows))
    out = viz.figure_main("pca_scatter", [str(results), "--out", str(tmp_path / "figs" / "p")])
    assert out == [tmp_path / "figs" / "p.html"]
    fig = pio.from_json(json.dumps(viz.pca_scatter(viz.load_rows(results)).to_plotly_json()))
    assert len(fig.layout.sliders[0].steps) == 3
    only_probe = tmp_path / "probe.json"
    only_probe.write_text(json.dumps([r for r in rows if r["analysis"] == "probe"]))
    assert [p.name for p in viz.draw(only_probe)] == ["probe_accuracy.html"]
    with pytest.raises(ValueError, match="Unknown figure 'nope'"):
        viz.figure_main("nope", [str(results)])
    with pytest.raises(FileNotFoundError, match="run the analysis"):
        viz.load_rows(tmp_path / "missing.json")
