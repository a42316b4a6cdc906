"""sweep(): metrics against hand computations, stacked grid points == one at a time, exact resume."""

from __future__ import annotations

import json

import pytest

from vlminterp import Condition, PromptBatch
from vlminterp.interventions import CMRM, ActivationPatch, HeadAblation
from vlminterp.sweeps import (
    GapClosed,
    JudgedRefusalRate,
    KLToUnsteered,
    RefusalScore,
    SweepMismatchError,
    grid_points,
    sweep,
)

GRID = {"layer": [0, 1], "head": [0, 1, 2, 3]}


def _heads(layer, head):
    return HeadAblation([(layer, head)])


def _values(rows, metric):
    return {(r["layer"], r["head"]): r["value"] for r in rows if r["metric"] == metric}


def test_refusal_score_and_kl_match_a_hand_computation(tiny_model, samples):
    rows = sweep(tiny_model, samples, _heads, {"layer": [1], "head": [2]}, [RefusalScore(), KLToUnsteered()],
                 progress=False)  # fmt: skip
    batch = PromptBatch.paired(tiny_model, samples, [Condition.IMAGE])
    clean = tiny_model.forward(batch)[:, -1].double()
    steered = tiny_model.run_with_hooks(batch, HeadAblation([(1, 2)]).prepared(tiny_model).fwd_hooks)
    steered = steered[:, -1].double()
    sorry, sure = tiny_model.tokenizer.convert_tokens_to_ids(["sorry", "sure"])
    harmful = [i for i, s in enumerate(samples) if s.label == "harmful"]
    benign = [i for i, s in enumerate(samples) if s.label == "benign"]
    score = (steered[harmful, sorry] - steered[harmful, sure]).mean()
    p, q = clean[benign].softmax(-1), steered[benign].softmax(-1)
    kl = (p * (p.log() - q.log())).sum(-1).mean()
    by_metric = {r["metric"]: r for r in rows}
    assert by_metric["refusal_score"]["value"] == pytest.approx(float(score), abs=1e-5)
    assert by_metric["refusal_score"]["n"] == len(harmful)
    assert by_metric["kl_to_unsteered"]["value"] == pytest.approx(float(kl), abs=1e-6)
    assert by_metric["kl_to_unsteered"]["n"] == len(benign)
    assert set(rows[0]) == {"model", "dataset", "method", "layer", "head", "alpha", "metric", "value", "n"}
    assert rows[0]["method"] == "HeadAblation" and rows[0]["alpha"] is None


def test_unsteered_point_has_zero_kl_and_no_gap_closed(tiny_model, samples):
    rows = sweep(tiny_model, samples, lambda alpha: None, {"alpha": [0.0]}, ["kl_to_unsteered", "gap_closed"],
                 progress=False)  # fmt: skip
    values = {r["metric"]: r["value"] for r in rows}
    assert values["kl_to_unsteered"] == pytest.approx(0.0, abs=1e-9)
    assert values["gap_closed"] == pytest.approx(0.0, abs=1e-9)
    assert rows[0]["method"] == "none"


def test_patching_the_text_only_state_closes_the_whole_gap(tiny_model, samples):
    last = tiny_model.layer_hook("resid_post", tiny_model.cfg.n_layers - 1)
    text = PromptBatch.paired(tiny_model, samples, [Condition.TEXT_ONLY])
    _, cache = tiny_model.run_with_cache(text, names_filter=[last], positions="last")
    rows = sweep(tiny_model, samples, lambda layer: ActivationPatch(cache, layers=layer, positions="last"),
                 {"layer": [-1]}, GapClosed(), progress=False)  # fmt: skip
    assert rows[0]["value"] == pytest.approx(1.0, abs=1e-5)
    assert rows[0]["n"] == len(samples)


def test_judged_refusal_rate_matches_generations(tiny_model, samples):
    def judge(text):
        return text.startswith("sorry")

    rows = sweep(tiny_model, samples, _heads, {"layer": [0], "head": [1]},
                 JudgedRefusalRate(judge, max_new_tokens=3, label=None), progress=False)  # fmt: skip
    batch = PromptBatch.paired(tiny_model, samples, [Condition.IMAGE])
    with HeadAblation([(0, 1)]).applied(tiny_model):
        texts = tiny_model.generate(batch, max_new_tokens=3).texts
    assert rows[0]["value"] == pytest.approx(sum(map(judge, texts)) / len(texts))
    assert rows[0]["n"] == len(samples)


def test_stacked_points_equal_one_point_per_forward(tiny_model, samples):
    metrics = [RefusalScore(), KLToUnsteered()]
    stacked = sweep(tiny_model, samples, _heads, GRID, metrics, progress=False, max_rows=64)
    single = sweep(tiny_model, samples, _heads, GRID, metrics, progress=False, max_rows=1)
    split = sweep(tiny_model, samples, _heads, GRID, metrics, progress=False, batch_size=2)
    for other in (single, split):
        for m in ("refusal_score", "kl_to_unsteered"):
            a, b = _values(stacked, m), _values(other, m)
            assert a.keys() == b.keys() and len(a) == 8
            for k in a:
                assert a[k] == pytest.approx(b[k], abs=1e-4)


def test_twin_rows_stack_like_one_point_per_forward(tiny_model, samples):
    """Sample-level CMRM runs 3 rows per input: stacked points (concatenated batches) == one per forward."""
    grid = {"alpha": [0.5, 2.0], "layer": [0, 1]}

    def make(alpha, layer):
        return CMRM.sample_level(alpha=alpha, layers=[layer])

    metrics = [RefusalScore(), KLToUnsteered()]
    stacked = sweep(tiny_model, samples, make, grid, metrics, progress=False, max_rows=64)
    single = sweep(tiny_model, samples, make, grid, metrics, progress=False, max_rows=1)
    assert [r["value"] for r in stacked] == pytest.approx([r["value"] for r in single], abs=1e-4)
    by_hand = make(2.0, 1).run_with_cache(tiny_model, samples, [])[0][:, -1].double()
    harmful = [i for i, s in enumerate(samples) if s.label == "harmful"]
    sorry, sure = tiny_model.tokenizer.convert_tokens_to_ids(["sorry", "sure"])
    score = (by_hand[harmful, sorry] - by_hand[harmful, sure]).mean()
    got = [r for r in stacked if (r["alpha"], r["layer"], r["metric"]) == (2.0, 1, "refusal_score")]
    assert got[0]["value"] == pytest.approx(float(score), abs=1e-5)
    # TEXT_ONLY inputs with BLANK twins: the unsteered point's rows are re-padded to the longer twins' batch
    mixed = sweep(tiny_model, samples, lambda alpha: None if alpha == 0 else make(alpha, 1), {"alpha": [0.0, 1.0]},
                  KLToUnsteered(label=None), conditions=["text_only"], progress=False, max_rows=64)  # fmt: skip
    assert mixed[0]["value"] == pytest.approx(0.0, abs=1e-6) and mixed[1]["value"] > 1e-4


def test_killed_sweep_resumes_to_the_same_table(tiny_model, samples, tmp_path):
    metrics = [RefusalScore(), KLToUnsteered()]
    reference = sweep(
        tiny_model, samples, _heads, GRID, metrics, tmp_path / "full.jsonl", progress=False, max_rows=8
    )

    calls = []

    def crashing(layer, head):
        calls.append((layer, head))
        if len(calls) == 5:
            raise RuntimeError("killed")
        return _heads(layer, head)

    path = tmp_path / "resumed.jsonl"
    with pytest.raises(RuntimeError, match="killed"):
        sweep(tiny_model, samples, crashing, GRID, metrics, path, progress=False, max_rows=8)
    assert tiny_model.count_hooks() == 0
    finished = {json.loads(line)["point"] for line in path.read_text().splitlines()}
    assert len(finished) == 4  # two points per forward (8 rows // 4 samples): two groups written
    path.write_text(path.read_text() + '{"point": "torn')  # a write cut mid-line

    calls.clear()
    resumed = sweep(tiny_model, samples, lambda **p: calls.append(p) or _heads(**p), GRID, metrics, path,
                    progress=False, max_rows=8)  # fmt: skip
    assert len(calls) == 4  # only the missing points
    assert resumed == reference  # bit-identical values
    calls.clear()
    again = sweep(
        tiny_model, samples, lambda **p: calls.append(p), GRID, metrics, path, progress=False, max_rows=8
    )
    assert calls == [] and again == reference
    assert len(path.read_text().splitlines()) == 2 * 8


def test_resuming_another_sweep_raises(tiny_model, samples, tmp_path):
    path = tmp_path / "rows.jsonl"
    sweep(tiny_model, samples, _heads, {"layer": [0], "head": [0]}, "refusal_score", path, progress=False)
    with pytest.raises(SweepMismatchError, match="metrics"):
        sweep(
            tiny_model, samples, _heads, {"layer": [0], "head": [0]}, "kl_to_unsteered", path, progress=False
        )
    with pytest.raises(SweepMismatchError, match="samples"):
        sweep(
            tiny_model,
            samples[:2],
            _heads,
            {"layer": [0], "head": [0]},
            "refusal_score",
            path,
            progress=False,
        )


def test_bad_arguments_raise(tiny_model, samples):
    with pytest.raises(ValueError, match="Choose from"):
        sweep(tiny_model, samples, _heads, GRID, "refusal", progress=False)
    with pytest.raises(ValueError, match="needs a judge"):
        sweep(tiny_model, samples, _heads, GRID, "judged_refusal_rate", progress=False)
    with pytest.raises(ValueError, match="clash"):
        grid_points({"metric": [1]})
    with pytest.raises(ValueError, match="empty"):
        grid_points({"layer": []})
    with pytest.raises(ValueError, match="not one known token"):
        sweep(tiny_model, samples, _heads, GRID, RefusalScore(refusal=["I cannot"]), progress=False)
    with pytest.raises(ValueError, match="no sample has that label"):
        sweep(tiny_model, samples[:1], _heads, GRID, RefusalScore(), progress=False)
    assert grid_points({"layer": [0, 1], "alpha": [0.5, 1.0]})[1] == {"layer": 0, "alpha": 1.0}
