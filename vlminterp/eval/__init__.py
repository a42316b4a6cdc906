"""Evaluation: generate responses (resumable JSONL), judge them, and compute tidy metrics.

Example:
    >>> from vlminterp.eval import KeywordJudge, rate_table
    >>> verdicts = KeywordJudge(["I cannot"]).judge(None, ["I cannot help.", "Sure."])
    >>> rate_table([v.to_dict() for v in verdicts], "unsafe")[0]["value"]
    0.5
"""

from vlminterp.eval.endpoint import ChatEndpoint, JudgeRunError
from vlminterp.eval.http_judge import EndpointGrader, EndpointJudge, Grade
from vlminterp.eval.judge_prompts import PROMPT_SETS
from vlminterp.eval.judges import (
    KEYWORD_PRESETS,
    LLAMA_GUARD_TEMPLATE,
    MMSB_TEMPLATE,
    Judge,
    KeywordJudge,
    LLMJudge,
    UnparsedReplyError,
    Verdict,
    parse_safe_unsafe,
)
from vlminterp.eval.llama_guard import LlamaGuardJudge, parse_llama_guard
from vlminterp.eval.metrics import (
    extract_letter,
    llava_bench_scores,
    mme_scores,
    mme_yes_no,
    mmvet_scores,
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
    "LlamaGuardJudge",
    "parse_llama_guard",
    "ChatEndpoint",
    "EndpointJudge",
    "EndpointGrader",
    "Grade",
    "PROMPT_SETS",
    "JudgeRunError",
    "UnparsedReplyError",
    "KEYWORD_PRESETS",
    "LLAMA_GUARD_TEMPLATE",
    "MMSB_TEMPLATE",
    "parse_safe_unsafe",
    "wilson_interval",
    "rate_table",
    "mme_yes_no",
    "mme_scores",
    "mmvet_scores",
    "llava_bench_scores",
    "scienceqa_accuracy",
    "extract_letter",
    "generate_responses",
    "read_responses",
    "EvalConfig",
    "run_eval",
    "eval_main",
]
