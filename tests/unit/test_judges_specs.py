"""Judge specs for the model judges: ``llama-guard:<folder>`` and ``llm:<model>[:<prompt set>]``."""

from __future__ import annotations

import pytest

from vlminterp.eval.http_judge import EndpointJudge
from vlminterp.specs import JudgeSpec


@pytest.fixture
def judge_env(monkeypatch, tmp_path):
    for var in ("VLMINTERP_JUDGE_BASE_URL", "OPENAI_BASE_URL", "VLMINTERP_JUDGE_API_KEY", "OPENAI_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("VLMINTERP_JUDGE_CACHE", str(tmp_path / "cache.jsonl"))
    return monkeypatch


def test_llm_specs(judge_env, tmp_path):
    with pytest.raises(ValueError, match="--judge 'llm:gpt-4o': set VLMINTERP_JUDGE_BASE_URL"):
        JudgeSpec.parse("llm:gpt-4o")
    judge_env.setenv("VLMINTERP_JUDGE_BASE_URL", "http://127.0.0.1:9/v1")
    spec = JudgeSpec.parse("llm:gpt-4o")
    assert (spec.kind, spec.preset, spec.prompt_set, spec.name) == (
        "llm",
        "gpt-4o",
        "mm-safetybench",
        "llm:gpt-4o:mm-safetybench",
    )
    assert JudgeSpec.parse("llm:llama3:8b").preset == "llama3:8b"  # a model name with ':' and no prompt set
    assert JudgeSpec.parse("llm:llama3:8b:mm-safetybench").name == "llm:llama3:8b:mm-safetybench"
    with pytest.raises(ValueError, match="'mm-vet' grades utility"):
        JudgeSpec.parse("llm:gpt-4:mm-vet")
    with pytest.raises(ValueError, match="name the judge model"):
        JudgeSpec.parse("llm::mm-safetybench")
    judge = spec.build()
    assert isinstance(judge, EndpointJudge) and judge.name == spec.name
    assert judge.endpoint.cache == str(tmp_path / "cache.jsonl")
    assert spec.build(cache=tmp_path / "other.jsonl").endpoint.cache == tmp_path / "other.jsonl"


def test_llama_guard_specs(tmp_path):
    with pytest.raises(ValueError, match="is not a checkpoint folder with config.json"):
        JudgeSpec.parse(f"llama-guard:{tmp_path}")
    (tmp_path / "config.json").write_text("{}")
    spec = JudgeSpec.parse(f"llama-guard:{tmp_path}")
    assert (spec.kind, spec.preset, spec.name) == (
        "llama-guard",
        str(tmp_path),
        f"llama-guard:{tmp_path.name}",
    )
    with pytest.raises(ValueError, match=r"llama-guard:<checkpoint folder> or llm:<model>\[:<prompt set>\]"):
        JudgeSpec.parse("guard")
