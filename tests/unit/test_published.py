"""The published numbers: schema, vocabulary, the values DESIGN.md quotes, and the tables' own sums."""

from __future__ import annotations

import math

import pytest

from vlminterp import data
from vlminterp.data.mm_safetybench import QUERY_FIELD, SCENARIOS
from vlminterp.prompts import Condition
from vlminterp.reproduce.published import BENCHMARKS, PAPERS, PROTOCOL, PUBLISHED, published

KEYS = {"paper", "model", "benchmark", "subset", "condition", "method", "alpha", "metric", "value", "source"}
METHODS = {"none", "cmrm_dataset", "cmrm_sample", "shiftdc", "ecso", "adashield", "shiftdc_caption128"}
RANGES = {
    "unsafe_rate": (0.0, 1.0),
    "asr": (0.0, 1.0),
    "mme_score": (0.0, 2800.0),
    "score": (0.0, 100.0),
    "seconds_per_response": (0.0, 60.0),
}


def _value(paper, benchmark, subset, method, metric, condition=None):
    rows = [
        r
        for r in published(paper, benchmark)
        if r["subset"] == subset
        and r["method"] == method
        and r["metric"] == metric
        and (condition is None or r["condition"] == condition)
    ]
    assert len(rows) == 1, (paper, benchmark, subset, method, metric, rows)
    return rows[0]["value"]


def test_every_row_has_the_schema_and_the_vocabulary():
    conditions = {c.value for c in Condition}
    benchmarks = set(data.names()) | {"timing"}
    for row in PUBLISHED:
        assert set(row) == KEYS, row
        assert row["paper"] in PAPERS and row["benchmark"] in BENCHMARKS[row["paper"]], row
        assert row["model"] == "llava-1.5-7b", row
        assert row["benchmark"] in benchmarks, row
        assert row["condition"] in conditions, row
        assert row["method"] in METHODS, row
        assert row["alpha"] is None or isinstance(row["alpha"], float), row
        low, high = RANGES[row["metric"]]
        assert isinstance(row["value"], float) and low <= row["value"] <= high, row
        arxiv = {"cmrm": "2410.09047", "shiftdc": "2502.13095"}[row["paper"]]
        assert arxiv in row["source"], row


def test_mm_safetybench_subsets_use_the_loader_names():
    rows = published("shiftdc", "mm-safetybench")
    for row in rows:
        scenario, variant = row["subset"].split("/")
        assert scenario in SCENARIOS or scenario == "all", row
        assert variant in QUERY_FIELD, row
        assert (variant == "Text_only") == (row["condition"] == "text_only"), row
    # 13 scenarios + the average, each with Text + 3 variants x 4 defences, and Table 14's one row.
    assert len(rows) == 14 * 13 + 1


def test_rows_are_unique():
    keys = [tuple(r[k] for k in sorted(KEYS - {"value", "source"})) for r in PUBLISHED]
    assert len(keys) == len(set(keys))


@pytest.mark.parametrize(
    ("paper", "benchmark", "subset", "condition", "method", "metric", "expected"),
    [
        # DESIGN.md: "LLaVA-1.5-7B unsafe rate on VLSafe 61.53% -> 5.41% (dataset) / 3.15% (sample),
        # text-only 1.91%, caption-instead-of-image 5.52%".
        ("cmrm", "vlsafe", "all", "image", "none", "unsafe_rate", 0.6153),
        ("cmrm", "vlsafe", "all", "image", "cmrm_dataset", "unsafe_rate", 0.0541),
        ("cmrm", "vlsafe", "all", "image", "cmrm_sample", "unsafe_rate", 0.0315),
        ("cmrm", "vlsafe", "all", "text_only", "none", "unsafe_rate", 0.0191),
        ("cmrm", "vlsafe", "all", "caption", "none", "unsafe_rate", 0.0552),
        # DESIGN.md: "SD 45.4->38.0, TYPO 69.3->39.7, SD+TYPO 70.5->43.6; FigStep 52.4->13.2;
        # MME 1863.1->1863.6, MM-Vet 30.5->30.4; 2.73 -> 4.66 s per response".
        ("shiftdc", "mm-safetybench", "all/SD", "image", "none", "asr", 0.454),
        ("shiftdc", "mm-safetybench", "all/SD", "image", "shiftdc", "asr", 0.380),
        ("shiftdc", "mm-safetybench", "all/TYPO", "image", "none", "asr", 0.693),
        ("shiftdc", "mm-safetybench", "all/TYPO", "image", "shiftdc", "asr", 0.397),
        ("shiftdc", "mm-safetybench", "all/SD_TYPO", "image", "none", "asr", 0.705),
        ("shiftdc", "mm-safetybench", "all/SD_TYPO", "image", "shiftdc", "asr", 0.436),
        ("shiftdc", "figstep", "all", "image", "none", "asr", 0.524),
        ("shiftdc", "figstep", "all", "image", "shiftdc", "asr", 0.132),
        ("shiftdc", "mme", "all", "image", "none", "mme_score", 1863.1),
        ("shiftdc", "mme", "all", "image", "shiftdc", "mme_score", 1863.6),
        ("shiftdc", "mm-vet", "all", "image", "none", "score", 30.5),
        ("shiftdc", "mm-vet", "all", "image", "shiftdc", "score", 30.4),
        ("shiftdc", "timing", "mm-safetybench", "image", "none", "seconds_per_response", 2.73),
        ("shiftdc", "timing", "mm-safetybench", "image", "shiftdc", "seconds_per_response", 4.66),
        # Not in DESIGN.md; read in the paper (Tables 4, 6, 11, 13) to pin the column order.
        ("shiftdc", "figstep", "all", "caption", "ecso", "asr", 0.142),
        ("shiftdc", "figstep", "all", "image", "adashield", "asr", 0.136),
        ("shiftdc", "mm-safetybench", "01-Illegal_Activitiy/Text_only", "text_only", "none", "asr", 0.102),
        ("shiftdc", "mm-safetybench", "08-Political_Lobbying/SD", "image", "shiftdc", "asr", 0.507),
        ("shiftdc", "mm-safetybench", "07-Sex/TYPO", "caption", "ecso", "asr", 0.160),
        ("shiftdc", "mm-safetybench", "13-Gov_Decision/SD_TYPO", "image", "adashield", "asr", 0.990),
        ("shiftdc", "mme", "cognition", "image", "shiftdc", "mme_score", 356.2),
        ("shiftdc", "timing", "mm-vet", "caption", "ecso", "seconds_per_response", 5.15),
    ],
)
def test_the_numbers_design_md_quotes(paper, benchmark, subset, condition, method, metric, expected):
    assert _value(paper, benchmark, subset, method, metric, condition) == pytest.approx(expected, abs=1e-9)


def test_table6_average_row_is_the_mean_of_its_13_scenarios():
    # The paper's Average row is the mean over all 13 scenarios rounded to 0.1 points, so a mistyped
    # cell (a swapped digit moves the mean by >= 0.07 points) breaks the equality.
    rows = published("shiftdc", "mm-safetybench")
    cells = {
        (r["subset"], r["method"], r["condition"]): r["value"]
        for r in rows
        if r["method"] != "shiftdc_caption128"
    }
    columns = {(s.split("/")[1], m, c) for s, m, c in cells}
    assert len(columns) == 13
    for variant, method, condition in columns:
        mean = sum(cells[(f"{s}/{variant}", method, condition)] for s in SCENARIOS) / len(SCENARIOS)
        average = cells[(f"all/{variant}", method, condition)]
        assert math.isclose(mean, average, abs_tol=0.00051), (variant, method, mean, average)


def test_mme_total_is_perception_plus_cognition():
    for method in ("none", "ecso", "adashield", "shiftdc"):
        total = _value("shiftdc", "mme", "all", method, "mme_score")
        parts = _value("shiftdc", "mme", "perception", method, "mme_score") + _value(
            "shiftdc", "mme", "cognition", method, "mme_score"
        )
        assert total == pytest.approx(parts, abs=0.051), method


def test_published_filters_copies_and_refuses_unknown_names():
    assert {r["benchmark"] for r in published("shiftdc")} == set(BENCHMARKS["shiftdc"])
    assert published("cmrm", "jailbreakllms") == []
    rows = published("cmrm", "vlsafe")
    rows[0]["value"] = -1.0
    assert published("cmrm", "vlsafe")[0]["value"] == 0.6153
    with pytest.raises(ValueError, match="unknown paper.*cmrm"):
        published("llava")
    with pytest.raises(ValueError, match="not a benchmark of cmrm"):
        published("cmrm", "mme")
    with pytest.raises(ValueError, match="not a benchmark of shiftdc"):
        published("shiftdc", "MM-SafetyBench")


def test_protocol_has_one_sentence_per_benchmark_and_the_method():
    assert set(PROTOCOL) == set(PAPERS)
    for paper, facts in PROTOCOL.items():
        assert set(facts) == set(BENCHMARKS[paper]) | {"method"}, paper
        assert all(isinstance(v, str) and v.strip() for v in facts.values()), paper
