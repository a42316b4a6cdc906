"""Grader summaries against the published scripts' arithmetic, written out here."""

from __future__ import annotations

import pytest

from vlminterp.eval.metrics import llava_bench_scores, mmvet_scores


def test_mmvet_scores_as_the_evaluator():
    grades = {"v1_0": 1.0, "v1_1": 0.5, "v1_2": 0.0, "v1_3": 0.3}
    caps = {"v1_0": ["rec"], "v1_1": ["rec", "ocr"], "v1_2": ["ocr", "math"], "v1_3": ["rec", "know", "gen"]}
    # mm-vet_evaluator.py: cap_socres[c] += score per capability; then / counter[c] * 100.
    counter, totals = {}, {}
    for k, score in grades.items():
        for c in caps[k]:
            counter[c] = counter.get(c, 0) + 1
            totals[c] = totals.get(c, 0.0) + score
    expected = {c: totals[c] / counter[c] * 100 for c in counter} | {"all": sum(grades.values()) / 4 * 100}
    rows = mmvet_scores([{"score": grades[k], "capability": caps[k]} for k in grades])
    assert {r["capability"]: r["value"] for r in rows} == pytest.approx(expected)
    assert [r["capability"] for r in rows][:3] == ["all", "rec", "ocr"] and rows[0]["n"] == 4
    with pytest.raises(ValueError, match="row 0 has score 1.5"):
        mmvet_scores([{"score": 1.5, "capability": None}])


def test_llava_bench_relative_scores_as_summarize_gpt_review():
    reviews = [("conv", 8, 7), ("conv", 9, 9), ("detail", 7, 4), ("complex", 8, 8), ("complex", 10, 6)]
    # summarize_gpt_review.py: stats = mean of [reference, ours] tuples; print stats[1] / stats[0] * 100.
    expected = {}
    for cat in ("all", "conv", "detail", "complex"):
        chosen = [(ref, ours) for c, ref, ours in reviews if cat in ("all", c)]
        ref = sum(x[0] for x in chosen) / len(chosen)
        ours = sum(x[1] for x in chosen) / len(chosen)
        expected[cat] = ours / ref * 100
    rows = llava_bench_scores([{"category": c, "reference": ref, "score": ours} for c, ref, ours in reviews])
    got = {r["category"]: r["value"] for r in rows if r["metric"] == "relative_score"}
    assert got == pytest.approx(expected) and list(got) == ["all", "conv", "detail", "complex"]
    means = {(r["category"], r["metric"]): r["value"] for r in rows}
    assert means[("detail", "answer_score")] == 4 and means[("all", "reference_score")] == pytest.approx(8.4)
