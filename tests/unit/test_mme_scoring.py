"""MME scoring against the official eval_tool/calculation.py rule, written out here, on the real files."""

from __future__ import annotations

import warnings

import pytest

from tests.conftest import SHARED_DATA
from vlminterp import data
from vlminterp.eval.metrics import mme_scores

MME = SHARED_DATA / "mme"
needs_mme = pytest.mark.skipif(not (MME / "eval_tool").is_dir(), reason="shared/data/mme absent")


def official_task_score(lines: list[str]) -> tuple[float, float]:
    """calculation.py for one filled results file: (acc, acc_plus), both in [0, 1]."""
    chunks = [lines[i : i + 2] for i in range(0, len(lines), 2)]  # divide_chunks: one image, two questions
    gts, preds, plus = [], [], 0
    for chunk in chunks:
        assert len(chunk) == 2
        right = 0
        for line in chunk:
            _, _, gt, pred = line.split("\t")
            gt, pred = gt.lower(), pred.lower()
            if pred not in ["yes", "no"]:  # parse_pred_ans
                head = pred[:4]
                pred = "yes" if "yes" in head else "no" if "no" in head else "other"
            gts.append(gt)
            preds.append(pred)
            right += gt == pred
        plus += right == 2
    acc = sum(g == p for g, p in zip(gts, preds, strict=True)) / len(gts)  # sklearn accuracy_score
    return acc, plus / len(chunks)


def rows_of(samples):
    return [
        {"subtask": s.meta["subtask"], "image_name": s.meta["image_name"], "gt_answer": s.meta["gt_answer"],
         "response": s.meta["response"]}
        for s in samples
    ]  # fmt: skip


@needs_mme
def test_lavin_existence_matches_calculation_py():
    path = MME / "eval_tool/LaVIN/existence.txt"
    samples = data.load("mme", MME, split="existence", results_dir=path.parent, on_missing="keep")
    with pytest.warns(UserWarning, match="13 of 14 subtasks missing"):
        got = {(r["subtask"], r["metric"]): r for r in mme_scores(rows_of(samples))}
    acc, plus = official_task_score(path.read_text(encoding="utf-8").splitlines(keepends=True))
    assert got[("existence", "acc")]["value"] == pytest.approx(100 * acc)
    assert got[("existence", "acc_plus")]["value"] == pytest.approx(100 * plus)
    assert got[("existence", "score")]["value"] == pytest.approx(100 * (acc + plus))
    assert got[("perception", "score")]["value"] == pytest.approx(100 * (acc + plus))
    assert 0 < plus < acc < 1  # the file has wrong answers, so the check can fail


@needs_mme
def test_missing_subtasks_are_warned_and_recorded():
    with pytest.warns(UserWarning, match="4 of the 14 subtask files; missing: position, color"):
        samples = data.load("mme", MME, on_missing="keep")
    answers = ["Yes", "No", "yes, maybe", "It is no"]
    rows = [r | {"response": answers[i % 4]} for i, r in enumerate(rows_of_gt(samples))]
    with pytest.warns(UserWarning) as caught:
        out = mme_scores(rows)
    message = str(caught[0].message)
    assert message.startswith("MME: 10 of 14 subtasks missing") and "celebrity" in message
    totals = {r["subtask"]: r for r in out if r["subtask"] in ("perception", "cognition")}
    assert totals["perception"]["subtasks"] == "3/10" and totals["cognition"]["subtasks"] == "1/4"
    assert totals["perception"]["missing"].split(",") == [
        "position", "color", "posters", "celebrity", "scene", "landmark", "artwork",
    ]  # fmt: skip
    assert totals["cognition"]["missing"] == "commonsense_reasoning,numerical_calculation,text_translation"
    subtasks = {r["subtask"] for r in out if r["metric"] == "acc"}
    assert subtasks == {"existence", "count", "OCR", "code_reasoning"}
    per = {r["subtask"]: r["value"] for r in out if r["metric"] == "score"}
    assert totals["perception"]["value"] == pytest.approx(per["existence"] + per["count"] + per["OCR"])


def rows_of_gt(samples):
    return [{"subtask": s.meta["subtask"], "image_name": s.meta["image_name"], "gt_answer": s.meta["gt_answer"]}
            for s in samples]  # fmt: skip


def test_complete_set_does_not_warn_and_bad_rows_raise():
    from vlminterp.data.mme import COGNITION, PERCEPTION

    rows = [
        {"subtask": t, "image_name": f"{t}.jpg", "gt_answer": g, "response": g}
        for t in PERCEPTION + COGNITION
        for g in ("Yes", "No")
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = mme_scores(rows)
    totals = {r["subtask"]: r for r in out if r["subtask"] in ("perception", "cognition")}
    assert (totals["perception"]["value"], totals["cognition"]["value"]) == (2000.0, 800.0)
    assert totals["perception"]["missing"] == "" and totals["cognition"]["subtasks"] == "4/4"
    with pytest.raises(ValueError, match="'count' has 1 questions"):
        mme_scores(rows[:3])
    shuffled = [{**rows[0], "image_name": name} for name in ("a.jpg", "b.jpg", "a.jpg", "b.jpg")]
    with pytest.raises(
        ValueError, match="'existence' pairs questions on 'a.jpg' and 'b.jpg'; pass the rows in"
    ):
        mme_scores(shuffled)
    with pytest.raises(ValueError, match="subtask 'vqa'"):
        mme_scores([{**rows[0], "subtask": "vqa"}])
