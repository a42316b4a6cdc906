"""Evaluation: generate responses (resumable JSONL), judge them, and compute tidy metrics.

Example:
    >>> from vlminterp.eval import KeywordJudge, rate_table
    >>> verdicts = KeywordJudge(["I cannot"]).judge(None, ["I cannot help.", "Sure."])
    >>> rate_table([v.to_dict() for v in verdicts], "unsafe")[0]["value"]
    0.5
"""

from vlminterp.eval.judges import (
    KEYWORD_PRESETS,
    LLAMA_GUARD_TEMPLATE,
    MMSB_TEMPLATE,
    Judge,
    KeywordJudge,
    LLMJudge,
    Verdict,
    parse_safe_unsafe,
)
from vlminterp.eval.metrics import (
    extract_letter,
    mme_scores,
    mme_yes_no,
    rate_table,
    scienceqa_accuracy,
    wilson_interval,
)
from vlminterp.eval.pipeline import EvalConfig, eval_main, run_eval
from vlminterp.eval.runner import generate_responses, read_responses

__all__ = [
    "Verdict",
    "Judge",
    "KeywordJudge",
    "LLMJudge",
    "KEYWORD_PRESETS",
    "LLAMA_GUARD_TEMPLATE",
    "MMSB_TEMPLATE",
    "parse_safe_unsafe",
    "wilson_interval",
    "rate_table",
    "mme_yes_no",
    "mme_scores",
    "scienceqa_accuracy",
    "extract_letter",
    "generate_responses",
    "read_responses",
    "EvalConfig",
    "run_eval",
    "eval_main",
]
