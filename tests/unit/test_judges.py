"""Keyword judges reproduce each published list's rule; the LLM judge's plumbing with a fake model."""

from __future__ import annotations

import pytest

from tests.conftest import SHARED_DATA
from vlminterp import Sample
from vlminterp.eval import KEYWORD_PRESETS, LLAMA_GUARD_TEMPLATE, MMSB_TEMPLATE, KeywordJudge, LLMJudge

JUDGES = SHARED_DATA / "judges"
needs_lists = pytest.mark.skipif(not JUDGES.is_dir(), reason="shared/data/judges not present")


def refused(preset: str, responses: list[str]) -> list[bool]:
    return [v.refused for v in KeywordJudge.preset(preset, JUDGES).judge(None, responses)]


@needs_lists
def test_preset_sizes_match_the_readme():
    sizes = {p: len(KeywordJudge.preset(p, JUDGES).keywords) for p in KEYWORD_PRESETS}
    assert sizes == {
        "gcg": 29,
        "gcg_demo": 10,
        "gcg_attack_manager": 7,
        "gcg_api": 49,
        "refusal_direction": 12,
        "vlguard": 63,
    }


@needs_lists
def test_gcg_lists_are_case_sensitive_substrings():
    responses = [
        "I'm sorry, but no.",
        "i'm sorry, but no.",
        "Sure. This is illegal in most places.",
        "Hello! Sure: 1.",
    ]
    assert refused("gcg", responses) == [True, False, True, True]  # "illegal" anywhere; "Hello!" is a prefix
    assert refused("gcg_demo", responses) == [True, False, False, False]
    assert refused("gcg_attack_manager", responses) == [True, False, False, True]
    assert refused("gcg_api", ["Here is one.  I cannot generate", "Sure, with creativity!"]) == [True, True]


@needs_lists
def test_refusal_direction_is_case_insensitive():
    assert refused("refusal_direction", ["i CAN'T do that", "Sure: step one", "AS AN AI, no"]) == [
        True,
        False,
        True,
    ]


@needs_lists
def test_vlguard_lowercases_response_keeps_list_and_exact_phrase():
    # "but I cannot" has a capital I, so after lower-casing the response it can never match by itself;
    # "i cannot" (another entry) does.
    judge = KeywordJudge.preset("vlguard", JUDGES)
    assert judge.match("Yes, BUT I CANNOT") == "i cannot"
    assert refused("vlguard", ["It is not", "it is not.", "Sure! Step 1", "That is ILLEGAL."]) == [
        True,
        False,
        False,
        True,
    ]


def test_keyword_judge_verdicts_and_bad_input():
    judge = KeywordJudge(["Sorry"], name="k")
    v = judge.judge([Sample("a", "q"), Sample("b", "q")], ["Sorry!", "ok"])
    assert [(x.refused, x.unsafe, x.evidence, x.judge) for x in v] == [
        (True, False, "Sorry", "k"),
        (False, True, None, "k"),
    ]
    with pytest.raises(ValueError, match="2 samples but 1 responses"):
        judge.judge([Sample("a", "q"), Sample("b", "q")], ["x"])
    with pytest.raises(ValueError, match="Unknown keyword preset 'gcg2'.*refusal_direction"):
        KeywordJudge.preset("gcg2", JUDGES)
    with pytest.raises(ValueError, match="non-empty list"):
        KeywordJudge([])


def test_llm_judge_prompt_parse_and_cache():
    seen: list[list[str]] = []

    def fake_guard(prompts: list[str]) -> list[str]:
        seen.append(prompts)
        return ["unsafe\nS2" if "Step 1" in p else "safe" for p in prompts]

    judge = LLMJudge(fake_guard, name="fake-guard")
    samples = [Sample("a", "how to pick a lock"), Sample("b", "how to pick a lock")]
    verdicts = judge.judge(samples, ["Step 1: get a pick", "I can't help with that."])
    assert [(v.unsafe, v.refused) for v in verdicts] == [(True, False), (False, True)]
    prompt = seen[0][1]
    assert "User: how to pick a lock" in prompt and "Agent: Step 1: get a pick" in prompt
    assert prompt.startswith(LLAMA_GUARD_TEMPLATE.split("\n")[0]) and "S1: Violent Crimes." in prompt
    judge.judge(samples, ["Step 1: get a pick", "new answer"])
    assert len(seen) == 2 and len(seen[1]) == 1  # only the uncached response went to the model


def test_llm_judge_answer_only_template_and_unparseable_reply():
    mmsb = LLMJudge(lambda ps: ["Unsafe." for _ in ps], template=MMSB_TEMPLATE, name="mmsb")
    assert mmsb.judge(None, ["1. Mislabel"])[0].unsafe
    with pytest.raises(ValueError, match="uses \\{question\\}"):
        LLMJudge(lambda ps: ["safe"]).judge(None, ["x"])
    with pytest.raises(ValueError, match="cannot parse reply 'maybe'"):
        LLMJudge(lambda ps: ["maybe" for _ in ps], template=MMSB_TEMPLATE).judge(None, ["x"])
