"""Metrics against hand-computed values."""

from __future__ import annotations

import math

import pytest

from vlminterp.eval import mme_scores, mme_yes_no, rate_table, scienceqa_accuracy, wilson_interval


def test_wilson_interval_hand_computed():
    # k=8, n=10, z=1.96: centre (0.8 + 0.19208) / 1.38416 = 0.716680, half = 1.96*sqrt(0.016 + 0.009604)/1.38416
    low, high = wilson_interval(8, 10)
    assert low == pytest.approx(0.4901625, abs=1e-6) and high == pytest.approx(0.9433178, abs=1e-6)
    assert wilson_interval(0, 5)[0] == 0.0 and wilson_interval(5, 5)[1] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="n > 0"):
        wilson_interval(0, 0)


def test_rate_table_groups_tidy_rows():
    rows = [
        {"condition": "image", "method": "none", "unsafe": True},
        {"condition": "image", "method": "none", "unsafe": True},
        {"condition": "image", "method": "none", "unsafe": False},
        {"condition": "text_only", "method": "none", "unsafe": False},
    ]
    out = rate_table(rows, "unsafe", by=["condition", "method"])
    assert [(r["condition"], r["method"], r["metric"], r["n"]) for r in out] == [
        ("image", "none", "unsafe_rate", 3),
        ("text_only", "none", "unsafe_rate", 1),
    ]
    assert out[0]["value"] == pytest.approx(2 / 3) and out[1]["value"] == 0.0
    assert (out[0]["ci_low"], out[0]["ci_high"]) == wilson_interval(2, 3)
    with pytest.raises(KeyError, match="no column 'method'"):
        rate_table([{"unsafe": True}], "unsafe", by=["method"])
    with pytest.raises(TypeError, match="expected True/False"):
        rate_table([{"unsafe": 1}], "unsafe")


def test_mme_parsing_rule():
    assert [mme_yes_no(x) for x in ["Yes", "no", "Yes, there is", "The answer is yes", " no."]] == [
        "yes",
        "no",
        "yes",
        "other",
        "no",
    ]


def test_mme_acc_and_acc_plus_hand_computed():
    def row(sub, cat, img, gt, resp):
        return {"subtask": sub, "category": cat, "image_name": img, "gt_answer": gt, "response": resp}

    rows = [
        row("count", "perception", "1.jpg", "Yes", "Yes"),
        row("count", "perception", "1.jpg", "No", "No"),
        row("count", "perception", "2.jpg", "Yes", "Yes"),
        row("count", "perception", "2.jpg", "No", "Yes"),
        row("OCR", "perception", "a.jpg", "Yes", "maybe"),
        row("OCR", "perception", "a.jpg", "No", "no"),
        row("code_reasoning", "cognition", "c.png", "Yes", "yes"),
        row("code_reasoning", "cognition", "c.png", "No", "no"),
    ]
    got = {(r["subtask"], r["metric"]): r["value"] for r in mme_scores(rows)}
    # count: 3/4 right = 75, one of two images fully right = 50; OCR: 1/2 = 50, 0/1 images = 0.
    assert got[("count", "acc")] == 75 and got[("count", "acc_plus")] == 50 and got[("count", "score")] == 125
    assert got[("OCR", "acc")] == 50 and got[("OCR", "acc_plus")] == 0
    assert got[("perception", "score")] == 175 and got[("code_reasoning", "score")] == 200
    assert got[("cognition", "score")] == 200


def test_scienceqa_accuracy_all_and_image_subset():
    rows = [
        {"response": "B", "answer": "B", "options": ["A", "B"], "has_image": True},
        {"response": "A.", "answer": "B", "options": ["A", "B"], "has_image": True},
        {"response": "C", "answer": "C", "options": ["A", "B", "C"], "has_image": False},
        {"response": "Apple", "answer": "A", "options": ["A", "B"], "has_image": False},
    ]
    got = {r["subset"]: (r["value"], r["n"]) for r in scienceqa_accuracy(rows)}
    assert got == {"all": (0.5, 4), "image": (0.5, 2)}
    assert not math.isnan(scienceqa_accuracy(rows)[0]["ci_low"])
