"""``vlminterp steer cmrm|shiftdc`` end to end on the shipped organism: tables from the judge, files, resume, errors."""

from __future__ import annotations

import json

import pytest
import torch

from vlminterp import Condition, HookedVLM, PromptBatch
from vlminterp.cli.steer import main
from vlminterp.eval.metrics import wilson_interval
from vlminterp.interventions import SteeringVectors
from vlminterp.io import read_json
from vlminterp.organism.judge import is_refusal

COMMON = ["--model", "organism", "--eval", "organism:test", "--judge", "organism", "--limit", "8"]
FAST = ["--max-new-tokens", "10", "--no-progress"]


def _responses(out):
    return [json.loads(line) for line in (out / "responses.jsonl").read_text().splitlines()]


def _check_table_from_judge(out):
    """Every refused_rate row equals the organism rule applied to that group's responses, with its Wilson CI."""
    responses = _responses(out)
    rows = [r for r in read_json(out / "table.json") if r["metric"] == "refused_rate"]
    assert rows
    for row in rows:
        group = [
            r
            for r in responses
            if (r["dataset"], r["label"], r["condition"], r["method"])
            == (row["dataset"], row["label"], row["condition"], row["method"])
        ]
        k = sum(is_refusal(r["response"]) for r in group)
        assert row["n"] == len(group) == 8
        assert row["value"] == k / len(group)
        assert (row["ci_low"], row["ci_high"]) == pytest.approx(wilson_interval(k, len(group)))
        assert row["judge"] == "organism" and row["model"] == "organism"
    verdicts = [json.loads(line) for line in (out / "verdicts.jsonl").read_text().splitlines()]
    assert len(verdicts) == len(responses)
    return rows


@pytest.fixture(scope="module")
def cmrm_out(tmp_path_factory):
    out = tmp_path_factory.mktemp("steer") / "cmrm"
    args = ["cmrm", *COMMON, "--anchor", "organism:train", "--alpha", "1.0", "--out", str(out), *FAST]
    assert main(args) == 0
    return out, args


@pytest.fixture(scope="module")
def shiftdc_out(tmp_path_factory):
    out = tmp_path_factory.mktemp("steer") / "shiftdc"
    args = ["shiftdc", *COMMON, "--direction", "fit:organism:train", "--caption-source", "sample",
            "--compare-cmrm-alpha", "0.5", "--out", str(out), *FAST]  # fmt: skip
    assert main(args) == 0
    return out


def test_cmrm_table_rows_come_from_the_judge(cmrm_out, capsys):
    out, _ = cmrm_out
    rows = _check_table_from_judge(out)
    cells = {(r["label"], r["condition"], r["method"]) for r in rows}
    steered = "cmrm_dataset(alpha=1,steps=all,layers=all)"
    assert cells == {
        (label, cond, method)
        for label in ("harmful", "benign")
        for cond, method in [
            ("image", "none"),
            ("text_only", "none"),
            ("caption", "none"),
            ("image", steered),
        ]
    }
    for name in ("table.json", "table.csv", "responses.jsonl", "verdicts.jsonl", "config.json",
                 "cmrm_vectors.safetensors", "cmrm_vectors.json"):  # fmt: skip
        assert (out / name).is_file(), name
    vectors = SteeringVectors.load(out / "cmrm_vectors", HookedVLM.from_organism())
    assert vectors.meta["n_anchor"] == 16 and vectors.method == "cmrm"


def test_cmrm_rerun_resumes_and_other_settings_are_refused(cmrm_out, capsys):
    out, args = cmrm_out
    before = (out / "responses.jsonl").read_text()
    table = read_json(out / "table.json")
    assert main(args) == 0
    assert (out / "responses.jsonl").read_text() == before  # nothing generated again
    again = [r for r in read_json(out / "table.json") if r["metric"] != "seconds_per_response"]
    assert again == [r for r in table if r["metric"] != "seconds_per_response"]
    capsys.readouterr()
    changed = [a if a != "1.0" else "0.5" for a in args]
    with pytest.raises(SystemExit) as e:
        main(changed)
    assert e.value.code == 2
    assert "other settings (alpha)" in capsys.readouterr().err


def test_shiftdc_table_shift_rows_and_comparison(shiftdc_out):
    out = shiftdc_out
    rows = _check_table_from_judge(out)
    methods = {r["method"] for r in rows}
    assert any(m.startswith("shiftdc(") for m in methods) and any(
        m.startswith("cmrm_dataset(alpha=0.5") for m in methods
    )
    comparison = read_json(out / "comparison.json")
    assert {r["condition"] for r in comparison} == {"image"}
    assert {r["method"] for r in comparison} == {m for m in methods if m != "none"} | {"none"}
    for name in ("safety_direction.safetensors", "cmrm_vectors.safetensors", "shift.csv", "comparison.csv"):
        assert (out / name).is_file(), name


def test_shiftdc_distortion_matches_a_direct_computation(shiftdc_out):
    """cos(m, s) of one sample at one layer, from plain run_with_cache of its IMAGE and CAPTION prompts."""
    out = shiftdc_out
    shift = read_json(out / "shift.json")
    model = HookedVLM.from_organism()
    direction = SteeringVectors.load(out / "safety_direction", model)
    layer = model.cfg.n_layers - 1
    from vlminterp.organism.tasks import organism_samples

    sample = organism_samples("test", "harmful", n_images=1)[0]
    batch = PromptBatch.paired(model, [sample], [Condition.IMAGE, Condition.CAPTION])
    name = model.layer_hook("resid_post", layer)
    _, cache = model.run_with_cache(batch, names_filter=[name], positions="last")
    m = (cache[name][0] - cache[name][1]).double()
    s = direction.vectors[layer].double()
    want = {"shift_cosine": float(m @ s / (m.norm() * s.norm())), "shift_projection": float(m @ s / s.norm())}
    got = {r["metric"]: r["value"] for r in shift if r["id"] == sample.id and r["layer"] == layer}
    assert got == pytest.approx(want, abs=1e-4)
    assert len(shift) == 2 * 16 * len({r["layer"] for r in shift})
    assert torch.count_nonzero(direction.vectors) > 0


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["cmrm", *COMMON[:-4], "--judge", "gpt", "--anchor", "organism:train"], "--judge 'gpt'"),
        (
            ["cmrm", "--model", "organism", "--eval", "nope", "--judge", "organism", "--anchor", "organism"],
            "unknown dataset 'nope'",
        ),
        (["cmrm", *COMMON, "--anchor", "organism:dev"], "the organism has splits"),
        (["cmrm", *COMMON], "--anchor DATASET[:split] is needed"),
        (["cmrm", *COMMON, "--anchor", "organism", "--layers", "1,x"], "comma-separated layer indices"),
        (["cmrm", *COMMON, "--anchor", "organism", "--level", "token"], "invalid choice: 'token'"),
        (["shiftdc", *COMMON, "--direction", "/nonexistent/dir"], "no such steering vectors file"),
        (["shiftdc", *COMMON, "--direction", "fit:organism", "--compare-cmrm-alpha", "1"], None),
        (["cmrm", *COMMON, "--anchor", "organism", "--eval", "mme"], "pass --root"),
    ],
)
def test_bad_arguments_name_the_problem(argv, message, capsys, tmp_path):
    if message is None:  # a valid command line whose --limit is not a number
        argv, message = [*argv, "--limit", "0"], "'0' is not a positive integer"
    with pytest.raises(SystemExit) as e:
        main([*argv, "--out", str(tmp_path / "o")])
    assert e.value.code == 2
    assert message in capsys.readouterr().err
