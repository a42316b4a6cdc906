"""The organism's attribution-patching study: result files, the figure drawn from them, and README's block.

A fresh run of ``figures/attribution_patching.py`` (into a temporary folder: CI has no results/)
must reproduce README's ``attribution-patching`` table; its Spearman ρ is recomputed here from the
tidy rows with pandas, independently of ``vlminterp.analysis.attribution.rank_correlation``.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pandas as pd
import pytest
import torch

from figures import attribution_patching as study
from vlminterp.io import read_json

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        folder = tmp_path_factory.mktemp("attribution")
        study.run(folder)
    finally:
        torch.set_num_threads(threads)
    return folder


def test_readme_block_matches_a_fresh_run(out):
    messages = study.check(ROOT / "README.md", out)
    assert not messages, "README disagrees with a fresh run:\n" + "\n".join(messages)


def test_files_hold_the_same_rows_and_the_summary_follows_from_them(out):
    rows = read_json(out / "grids.json")
    with open(out / "grids.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == len(rows)
    frame = pd.DataFrame(rows)
    spearman = [r for r in read_json(out / "summary.json") if r["metric"] == "spearman"]
    assert [r["hook"] for r in spearman] == ["resid_pre", "z"]
    for s in spearman:
        cells = frame[frame.hook == s["hook"]].pivot_table(
            index=["layer", "group", "head"] if s["hook"] == "z" else ["layer", "group"],
            columns="method",
            values="value",
        )
        cells = cells.dropna()
        assert len(cells) == s["n"]
        assert cells["exact"].corr(cells["attribution"], method="spearman") == pytest.approx(s["value"])
    assert spearman[0]["n"] == 4 * 3  # 4 layers x (instruction, template, last): no image tokens in TEXT_ONLY
    assert sorted(p.name for p in out.iterdir() if p.suffix != ".js") == [
        "attribution_patching.html",
        "grids.csv",
        "grids.json",
        "manifest.json",
        "summary.csv",
        "summary.json",
    ]


def test_check_names_a_stale_row_and_the_readme_option_rewrites_it(out, tmp_path):
    readme = tmp_path / "README.md"
    fresh = (ROOT / "README.md").read_text(encoding="utf-8")
    start = fresh.index("| resid_pre |")
    readme.write_text(
        fresh[:start] + "| resid_pre | layer × group | 12 | 0.10 |" + fresh[fresh.index("\n", start) :]
    )
    assert study.main(["--readme", str(readme), "--out", str(out), "--check"]) == 1
    assert any("row 'resid_pre | layer × group'" in m for m in study.check(readme, out))
    assert study.main(["--readme", str(readme), "--out", str(out)]) == 0
    assert readme.read_text(encoding="utf-8") == fresh


def test_figure_is_drawn_from_the_file(out):
    rows, summary = read_json(out / "grids.json"), read_json(out / "summary.json")
    fig = study.figure(rows, summary)
    heatmaps = [t for t in fig.data if t.type == "heatmap"]
    exact = {
        (r["layer"], r["group"]): r["value"]
        for r in rows
        if r["hook"] == "resid_pre" and r["method"] == "exact"
    }
    assert list(heatmaps[0].z[2]) == [exact[2, g] for g in heatmaps[0].x]
    scatter = [t for t in fig.data if t.type == "scatter" and t.mode == "markers"]
    assert [t.name.split(" ")[0] for t in scatter] == ["resid_pre", "z"]
    assert len(scatter[0].x) == sum(
        1 for r in rows if r["hook"] == "resid_pre" and r["method"] == "exact" and r["value"] is not None
    )
