"""generate_responses on the tiny llava: rows match model.generate, resume, interventions, atomic batches."""

from __future__ import annotations

import json

import pytest

from tests.conftest import SHARED_DATA
from vlminterp import Condition, PromptBatch, Sample
from vlminterp.eval import generate_responses, read_responses
from vlminterp.interventions import Intervention, PreparedRun


class AddToResidual(Intervention):
    """A trivial intervention: adds ``scale`` to the last layer's residual stream."""

    def __init__(self, scale: float, fail_after: int | None = None):
        super().__init__(layers=-1, hook="resid_post", positions="all")
        self.scale, self.fail_after, self.entered = scale, fail_after, 0

    def to_dict(self):
        return {**super().to_dict(), "scale": self.scale}

    def prepare(self, model, batch):
        self.entered += 1
        if self.fail_after is not None and self.entered > self.fail_after:
            raise RuntimeError("simulated crash")
        return PreparedRun(
            batch, [(name, lambda x, hook: x + self.scale) for name in self.site.hook_names(model)]
        )


@pytest.fixture()
def text_samples():
    return [
        Sample(id=f"q{i}", query=q, label="harmful")
        for i, q in enumerate(["how do i", "tell me a story", "why"])
    ]


def test_rows_equal_direct_generation(tiny_model, samples, tmp_path):
    out = tmp_path / "r.jsonl"
    rows = generate_responses(
        tiny_model, samples, "image", out, max_new_tokens=4, batch_size=2, dataset="toy", progress=False
    )
    direct = []
    for start in (0, 2):
        batch = PromptBatch.paired(tiny_model, samples[start : start + 2], [Condition.IMAGE])
        direct += tiny_model.generate(batch, max_new_tokens=4).texts
    assert [r["response"] for r in rows] == direct
    assert [r["id"] for r in rows] == [s.id for s in samples]
    on_disk = read_responses(out)
    assert on_disk == json.loads(json.dumps(rows))
    first = on_disk[0]
    assert (first["condition"], first["method"], first["dataset"], first["label"]) == (
        "image",
        "none",
        "toy",
        "benign",
    )
    assert first["settings"]["max_new_tokens"] == 4 and first["query"] == samples[0].query
    assert tiny_model.count_hooks() == 0


def test_resume_skips_done_ids(tiny_model, text_samples, tmp_path, monkeypatch):
    out = tmp_path / "r.jsonl"
    generate_responses(tiny_model, text_samples[:2], "text_only", out, max_new_tokens=3, progress=False)
    calls = []
    original = tiny_model.generate
    monkeypatch.setattr(
        tiny_model, "generate", lambda batch, **kw: calls.append(batch.sample_ids) or original(batch, **kw)
    )
    rows = generate_responses(tiny_model, text_samples, "text_only", out, max_new_tokens=3, progress=False)
    assert calls == [["q2"]] and [r["id"] for r in rows] == ["q0", "q1", "q2"]
    assert len(read_responses(out)) == 3


def test_intervention_applied_recorded_and_removed(tiny_model, text_samples, tmp_path):
    plain = generate_responses(
        tiny_model, text_samples, "text_only", tmp_path / "a.jsonl", max_new_tokens=4, progress=False
    )
    iv = AddToResidual(50.0)
    steered = generate_responses(
        tiny_model,
        text_samples,
        "text_only",
        tmp_path / "b.jsonl",
        iv,
        max_new_tokens=4,
        batch_size=2,
        progress=False,
    )
    assert iv.entered == 2 and tiny_model.count_hooks() == 0
    assert [r["response"] for r in steered] != [r["response"] for r in plain]
    assert steered[0]["method"] == "AddToResidual"
    assert steered[0]["settings"]["intervention"] == {"type": "AddToResidual", **iv.to_dict()}
    assert steered[0]["settings"]["intervention"]["scale"] == 50.0


def test_crash_keeps_finished_batches_then_resumes(tiny_model, text_samples, tmp_path):
    out = tmp_path / "r.jsonl"
    with pytest.raises(RuntimeError, match="simulated crash"):
        generate_responses(
            tiny_model,
            text_samples,
            "text_only",
            out,
            AddToResidual(0.0, fail_after=1),
            max_new_tokens=2,
            batch_size=2,
            method="m",
            progress=False,
        )
    assert [r["id"] for r in read_responses(out)] == ["q0", "q1"]
    assert tiny_model.count_hooks() == 0 and not list(tmp_path.glob(".*tmp*"))
    rows = generate_responses(
        tiny_model,
        text_samples,
        "text_only",
        out,
        AddToResidual(0.0),
        max_new_tokens=2,
        batch_size=2,
        method="m",
        progress=False,
    )
    assert [r["id"] for r in rows] == ["q0", "q1", "q2"] and len(read_responses(out)) == 3


def test_bad_inputs(tiny_model, tmp_path, no_shape_checks):
    with pytest.raises(ValueError, match="'a' appears more than once"):
        generate_responses(
            tiny_model, [Sample("a", "x"), Sample("a", "y")], "text_only", tmp_path / "r.jsonl"
        )
    with pytest.raises(FileNotFoundError, match="Sample 'm'.*does not exist"):
        generate_responses(
            tiny_model,
            [Sample("m", "x", image=tmp_path / "missing.png")],
            "image",
            tmp_path / "r.jsonl",
            progress=False,
        )
    with pytest.raises(TypeError, match="must be a vlminterp Intervention"):
        generate_responses(tiny_model, [Sample("a", "x")], "text_only", tmp_path / "r.jsonl", object())
    (tmp_path / "bad.jsonl").write_text('{"id": "a"}\n{"id": ')
    with pytest.raises(ValueError, match="bad.jsonl, line 2: not valid JSON"):
        generate_responses(
            tiny_model, [Sample("a", "x")], "text_only", tmp_path / "bad.jsonl", progress=False
        )


def test_eval_main_end_to_end(tmp_path, capsys):

    from vlminterp.eval import EvalConfig, eval_main

    shared = SHARED_DATA
    if not shared.is_dir():
        pytest.skip("shared/data not present")
    argv = [
        "--model",
        "tiny:llava",
        "--dataset",
        "jailbreakllms",
        "--root",
        str(shared / "jailbreak_llms"),
        "--out",
        str(tmp_path),
        "--condition",
        "text_only",
        "--limit",
        "3",
        "--max-new-tokens",
        "2",
        "--judge",
        "keyword:gcg",
        "--judges-dir",
        str(shared / "judges"),
    ]
    assert eval_main(argv) == 0
    assert "unsafe_rate" in capsys.readouterr().out
    metrics = (tmp_path / "metrics.csv").read_text().splitlines()
    assert (
        metrics[0] == "model,dataset,condition,method,judge,metric,value,n,ci_low,ci_high"
        and len(metrics) == 3
    )
    assert json.loads((tmp_path / "metrics.json").read_text())[0]["model"] == "tiny:llava"
    assert len(read_responses(tmp_path / "responses.jsonl")) == 3
    responses = (tmp_path / "responses.jsonl").read_text()
    assert '"model": "tiny:llava"' in responses and "vlminterp-tiny" not in responses  # the spec, not a path
    cfg = EvalConfig.from_dict(json.loads((tmp_path / "config.json").read_text()))
    assert cfg == EvalConfig.from_dict(cfg.to_dict()) and cfg.limit == 3
    with pytest.raises(ValueError, match="unknown dataset"):
        EvalConfig(model="tiny:llava", dataset="nope", root=".", out=".")
    with pytest.raises(ValueError, match="keyword:<preset>"):
        EvalConfig(model="tiny:llava", dataset="figstep", root=".", out=".", judge="gpt4")


def test_one_process_rerun_merges_the_parts_a_killed_parallel_run_left(
    tiny_model, text_samples, tmp_path, monkeypatch
):
    """Rank 1 of 2 finished q1 before the run died: a one-process rerun keeps it and makes only q0 and q2."""
    reference = generate_responses(
        tiny_model, text_samples, "text_only", tmp_path / "ref.jsonl", max_new_tokens=3, progress=False
    )
    out = tmp_path / "r.jsonl"
    (tmp_path / "r.rank1.jsonl").write_text(json.dumps(reference[1]) + "\n")
    assert [r["id"] for r in read_responses(out)] == ["q1"]
    calls = []
    original = tiny_model.generate
    monkeypatch.setattr(
        tiny_model, "generate", lambda batch, **kw: calls.append(batch.sample_ids) or original(batch, **kw)
    )
    rows = generate_responses(tiny_model, text_samples, "text_only", out, max_new_tokens=3, progress=False)
    assert calls == [["q0", "q2"]]
    assert rows == reference and not (tmp_path / "r.rank1.jsonl").exists()
    assert sorted(read_responses(out), key=lambda r: r["id"]) == reference
