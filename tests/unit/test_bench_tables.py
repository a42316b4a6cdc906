"""figures/bench_tables.py: README's benchmark table comes from the recorded JSON lines, and --check
names every row where README and the lines disagree."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest

from figures import bench_tables, readme_tables

README = (
    "# x\n\n## Speed\n\nprose before\n\n<!-- bench-table:start -->\nold\n<!-- bench-table:end -->\n\n"
    "prose after\n"
)


def line(bench, shapes, ratios, ms, targets=None, load=1.0):
    config = {
        "shapes": shapes,
        "params_m": 4.5 if shapes == "quick" else 115.6,
        "device": "cpu",
        "threads": 2,
        "repeats": 3,
        "load_avg_1m": load,
        "wall_s": 90 if shapes == "quick" else 250,
        "malloc": {"env": {"MALLOC_TOP_PAD_": None}, "mallopt": {"M_TOP_PAD": 1 << 30}},
    }
    return {"benchmark": bench, "ratios": ratios, "ms": ms, "targets": targets or {}, "config": config}


@pytest.fixture
def results(tmp_path):
    d = tmp_path / "results"
    d.mkdir()
    collect = [
        line("bench_collect", "mid", {"collect_vs_hf": 1.08, "rss_growth_8x": 0.01}, {"raw_hf": 9000.0}, {
            "collect_vs_hf": 1.05, "rss_growth_8x": 0.05}),
        line("bench_collect", "quick", {"collect_vs_hf": 1.02, "rss_growth_8x": 0.004}, {"raw_hf": 800.0}, {
            "collect_vs_hf": 1.05, "rss_growth_8x": 0.05}),
        line("bench_collect", "quick", {"collect_vs_hf": 1.04, "rss_growth_8x": 0.005}, {"raw_hf": 850.0}, {
            "collect_vs_hf": 1.05, "rss_growth_8x": 0.05}),
        line("bench_collect", "quick", {"collect_vs_hf": 1.10, "rss_growth_8x": 0.006}, {"raw_hf": 900.0}, {
            "collect_vs_hf": 1.05, "rss_growth_8x": 0.05}, load=3.0),
    ]  # fmt: skip
    (d / "bench_collect.jsonl").write_text("".join(json.dumps(x) + "\n" for x in collect))
    sweep = line(
        "bench_sweep",
        "quick",
        {"sweep_point_vs_forward": 1.3},
        {"forward": 50.0},
        {"sweep_point_vs_forward": 1.2},
    )
    (d / "bench_sweep.jsonl").write_text(json.dumps(sweep) + "\n\n")
    return d


def test_table_rows_are_medians_of_the_recorded_runs_with_their_range(results):
    rows = bench_tables.render(results)["bench-table"].splitlines()
    assert [r.split(" | ")[:2] for r in rows[2:]] == [
        ["| `bench_collect`", "quick"],
        ["| `bench_collect`", "mid"],
        ["| `bench_sweep`", "quick"],
    ]
    quick = rows[2]
    # independent: the median of 1.02, 1.10, 1.04 and of 800, 900, 850 ms, computed here
    assert f"collect_vs_hf **{statistics.median([1.02, 1.04, 1.10]):.3f}×** (1.020×–1.100×) ✓" in quick
    assert "rss_growth_8x **+0.5%** (+0.4%–+0.6%) ✓" in quick
    assert (
        "raw_hf 850" in quick
        and "3 repeats × 3 runs" in quick
        and "load 1.0, run 1.5 min" in quick
        and "mallopt" in quick
    )
    assert "sweep_point_vs_forward **1.300×** ✗" in rows[4]
    assert "collect_vs_hf ≤ 1.05; rss_growth_8x < 5%" in quick


def test_rewrite_then_check_agree_and_a_changed_number_is_named(results, tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(README)
    assert bench_tables.main(["--results", str(results), "--readme", str(readme), "--check"]) == 1
    assert bench_tables.main(["--results", str(results), "--readme", str(readme)]) == 0
    text = readme.read_text()
    assert text.startswith("# x\n\n## Speed\n\nprose before\n") and text.endswith("\n\nprose after\n")
    assert bench_tables.main(["--results", str(results), "--readme", str(readme), "--check"]) == 0
    readme.write_text(text.replace("**1.300×**", "**1.100×**"))
    messages = readme_tables.differences(readme.read_text(), bench_tables.render(results))
    assert len(messages) == 1 and "row '`bench_sweep` | quick'" in messages[0] and "1.300×" in messages[0]


def test_bad_result_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="--record"):
        bench_tables.read_lines(tmp_path)
    (tmp_path / "bench_x.jsonl").write_text('{"benchmark": "bench_x"}\n')
    with pytest.raises(ValueError, match=r"bench_x.jsonl:1 is not a benchmark line"):
        bench_tables.read_lines(tmp_path)
    (tmp_path / "bench_x.jsonl").write_text("not json\n")
    with pytest.raises(ValueError, match=r"bench_x.jsonl:1 is not JSON"):
        bench_tables.read_lines(tmp_path)


def test_readme_benchmark_table_matches_the_committed_results():
    root = Path(__file__).resolve().parents[2]
    tables = bench_tables.render(root / "benchmarks" / "results")
    messages = readme_tables.differences((root / "README.md").read_text(encoding="utf-8"), tables)
    assert not messages, "Regenerate with python figures/bench_tables.py:\n" + "\n".join(messages)


def test_glibc_figures_and_ms_per_token_are_shown_without_target_marks(tmp_path):
    both = line(
        "bench_forward", "mid", {"cache_last_vs_hf": 1.04}, {"raw_hf": 9000.0}, {"cache_last_vs_hf": 1.05}
    )
    both["ms_per_token"] = {"raw_hf": 7.5}
    both["glibc"] = {"ratios": {"cache_last_vs_hf": 1.2}, "ms": {"raw_hf": 9500.0}, "malloc": {}}
    (tmp_path / "bench_forward.jsonl").write_text(json.dumps(both) + "\n")
    row = bench_tables.render(tmp_path)["bench-table"].splitlines()[-1]
    assert "cache_last_vs_hf **1.040×** ✓; glibc/cache_last_vs_hf **1.200×** |" in row
    assert "raw_hf 9000 (7.5/token) |" in row and "mallopt (glibc/: VLMINTERP_MALLOC=0)" in row


def test_a_ratio_some_runs_did_not_measure_is_kept_with_its_count(tmp_path):
    """A retired variant's ratio stays in the row (after the last run's), with how many runs measured it."""
    d = tmp_path / "results"
    d.mkdir()
    runs = [
        line("bench_steer", "mid", {"a_vs_hf": 1.2, "old_vs_hf": 0.7}, {"raw_hf": 10.0}),
        line("bench_steer", "mid", {"a_vs_hf": 1.4, "old_vs_hf": 0.9}, {"raw_hf": 10.0}),
        line("bench_steer", "mid", {"new_vs_hf": 1.1, "a_vs_hf": 1.3}, {"raw_hf": 10.0}),
    ]
    (d / "bench_steer.jsonl").write_text("".join(json.dumps(x) + "\n" for x in runs))
    row = bench_tables.render(d)["bench-table"].splitlines()[2]
    cells = row.split(" | ")[3].split("; ")
    assert cells == [
        "new_vs_hf **1.100×** (1 of 3 runs)",
        "a_vs_hf **1.300×** (1.200×–1.400×)",
        f"old_vs_hf **{statistics.median([0.7, 0.9]):.3f}×** (0.700×–0.900×, 2 of 3 runs)",
    ]


def test_a_run_in_another_dtype_is_a_row_of_its_own(tmp_path):
    """A float16 rehearsal of the GPU run on a CPU (``--quick --dtype float16``) is not pooled with float32."""
    runs = [line("bench_forward", "quick", {"a_vs_hf": r}, {"raw_hf": 10.0}) for r in (1.0, 1.2)]
    runs[1]["config"]["dtype"] = "float16"
    runs.append(line("bench_forward", "quick", {"a_vs_hf": 1.1}, {"raw_hf": 10.0}))
    runs[2]["config"]["dtype"] = "float32"  # the default, as recorded now
    big = line("bench_forward", "llava-7b", {"a_vs_hf": 1.3}, {"raw_hf": 10.0})
    big["config"]["dtype"] = "float16"  # llava-7b's default
    runs.append(big)
    (tmp_path / "bench_forward.jsonl").write_text("".join(json.dumps(x) + "\n" for x in runs))
    rows = bench_tables.render(tmp_path)["bench-table"].splitlines()[2:]
    sizes = [row.split(" | ")[1] for row in rows]
    assert sizes == ["quick", "quick float16", "llava-7b"]
    assert "a_vs_hf **1.050×** (1.000×–1.100×)" in rows[0] and "a_vs_hf **1.200×** |" in rows[1]
