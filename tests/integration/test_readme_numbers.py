"""README's demo numbers come from runs: a fresh default ``vlminterp demo`` reproduces the README tables.

Also ``figures/readme_tables.py`` on a small fake result set: it writes the blocks between their
markers, leaves the prose alone, and names every row where README and the results disagree.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from figures import readme_tables
from vlminterp import demo

ROOT = Path(__file__).resolve().parents[2]


def test_readme_tables_match_a_fresh_default_demo(tmp_path):
    """The full default demo (what ``make demo`` runs), into a temporary folder: CI has no results/."""
    out = tmp_path / "demo"
    assert demo.main(["--out", str(out), "--no-progress"]) == 0
    messages = readme_tables.check(ROOT / "README.md", out)
    assert not messages, "README disagrees with a fresh demo run:\n" + "\n".join(messages)


def _row(condition, method, metric, value, n):
    return {"condition": condition, "method": method, "metric": metric, "value": value, "n": n}


@pytest.fixture
def results(tmp_path):
    """A fake demo results folder: two summary lines and two dataset-level CMRM candidates."""
    out = tmp_path / "results"
    out.mkdir()
    summary = [
        _row("text_only", "none", "refusal_rate", 1.0, 4),
        _row("text_only", "none", "refusal_rate_exact", 1.0, 4),
        _row("text_only", "none", "utility", 1.0, 2),
        _row("image", "cmrm_dataset(alpha=0.5,steps=all)", "refusal_rate", 1.0, 4),
        _row("image", "cmrm_dataset(alpha=0.5,steps=all)", "refusal_rate_exact", 0.75, 4),
        _row("image", "cmrm_dataset(alpha=0.5,steps=all)", "utility", 0.5, 2),
    ]
    candidates = [
        {"method": "cmrm_dataset", "alpha": a, "steps": "all", "refusal_rate": r, "refusal_rate_exact": e,
         "utility": u, "eligible": u >= 0.95, "chosen": a == 0.5}
        for a, r, e, u in ((0.5, 0.75, 0.5, 1.0), (1.0, 1.0, 0.0, 0.0))
    ] + [{"method": "cmrm_sample", "alpha": 0.3, "steps": "prefill", "refusal_rate": 1.0,
          "refusal_rate_exact": 1.0, "utility": 1.0, "eligible": True, "chosen": True}]  # fmt: skip
    selection = [
        {"method": c["method"], "alpha": c["alpha"], "steps": c["steps"], "metric": m, "value": c[m],
         "eligible": c["eligible"], "chosen": c["chosen"]}
        for c in candidates for m in ("refusal_rate", "refusal_rate_exact", "utility")
    ]  # fmt: skip
    (out / "summary.json").write_text(json.dumps(summary))
    (out / "alpha_selection.json").write_text(json.dumps(selection))
    return out


README = """# Project

Prose before.

<!-- demo-table:start -->
| stale | table |
<!-- demo-table:end -->

Prose between.

<!-- demo-alpha:start -->
<!-- demo-alpha:end -->

Prose after.
"""


def test_render_writes_one_line_per_condition_method_and_candidate(results):
    tables = readme_tables.render(results)
    summary = tables["demo-table"].splitlines()
    assert summary[0] == "| condition | method | " + " | ".join(demo.TABLE_COLUMNS.values()) + " |"
    assert summary[2:] == [
        "| text_only | none | 1.00 (n=4) | 1.00 (n=4) | 1.00 (n=2) |",
        "| image | cmrm_dataset(alpha=0.5,steps=all) | 1.00 (n=4) | 0.75 (n=4) | 0.50 (n=2) |",
    ]
    assert tables["demo-alpha"].splitlines()[2:] == [  # dataset-level candidates only
        "| all | 0.5 | 0.75 | 0.50 | 1.00 | chosen |",
        "| all | 1.0 | 1.00 | 0.00 | 0.00 | utility drop too large |",
    ]


def test_rewrite_then_parse_round_trips_and_keeps_the_prose(results):
    tables = readme_tables.render(results)
    written = readme_tables.rewrite(README, tables)
    assert readme_tables.differences(written, tables) == []
    assert readme_tables.rewrite(written, tables) == written
    for prose in ("Prose before.", "Prose between.", "Prose after.", "<!-- demo-alpha:end -->"):
        assert written.count(prose) == 1, prose
    assert "stale" not in written
    assert readme_tables.parse(written, "demo-table")[1] == ["text_only", "none", "1.00 (n=4)", "1.00 (n=4)",
                                                             "1.00 (n=2)"]  # fmt: skip


def test_check_names_every_row_that_differs(results):
    tables = readme_tables.render(results)
    written = readme_tables.rewrite(README, tables)
    edited = written.replace("| 0.75 (n=4) |", "| 0.80 (n=4) |").replace("| all | 1.0 |", "| all | 0.7 |")
    messages = readme_tables.differences(edited, tables)
    assert messages == [
        "demo-table: row 'image | cmrm_dataset(alpha=0.5,steps=all)': "
        "README has '1.00 (n=4) | 0.80 (n=4) | 0.50 (n=2)', the results give '1.00 (n=4) | 0.75 (n=4) | 0.50 (n=2)'",
        "demo-alpha: row 'all | 1.0' is missing from README",
        "demo-alpha: row 'all | 0.7' is in README but not in the results",
    ]
    lines = written.splitlines()
    i = lines.index("| text_only | none | 1.00 (n=4) | 1.00 (n=4) | 1.00 (n=2) |")
    lines[i], lines[i + 1] = lines[i + 1], lines[i]
    assert readme_tables.differences("\n".join(lines), tables) == [
        "demo-table: same rows, but README repeats or reorders them"
    ]
    with pytest.raises(ValueError, match="demo-alpha:start"):
        readme_tables.differences(written.replace("<!-- demo-alpha:end -->", ""), tables)


def test_command_line_rewrites_and_checks(results, tmp_path, capsys):
    readme = tmp_path / "README.md"
    readme.write_text(README)
    args = ["--results", str(results), "--readme", str(readme)]
    assert readme_tables.main([*args, "--check"]) == 1
    err = capsys.readouterr().err
    assert "demo-table: row 'text_only | none' is missing from README" in err
    assert readme.read_text() == README  # --check writes nothing
    assert readme_tables.main(args) == 0
    assert readme_tables.main([*args, "--check"]) == 0
    summary = json.loads((results / "summary.json").read_text())
    summary[2]["value"] = 0.5  # text_only utility
    (results / "summary.json").write_text(json.dumps(summary))
    assert readme_tables.main([*args, "--check"]) == 1
    assert "row 'text_only | none'" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match="run `vlminterp demo"):
        readme_tables.render(tmp_path / "missing")
