"""Judges and graders over an OpenAI-compatible endpoint, with the published prompts.

- :class:`EndpointJudge` is a :class:`~vlminterp.eval.judges.Judge` (``judge(samples, responses)
  -> list[Verdict]``) for a safety prompt set (``mm-safetybench``: each sample's scenario picks its
  prompt, the judge sees only the answer).
- :class:`EndpointGrader` grades utility answers (``mm-vet``: a 0-1 score against the ground truth;
  ``llava-bench``: GPT-4's reference answer and ours scored 1-10 side by side) into :class:`Grade` s,
  summarised by :func:`vlminterp.eval.metrics.mmvet_scores` /
  :func:`~vlminterp.eval.metrics.llava_bench_scores`.

Transport, retries, rate limit, concurrency and the on-disk reply cache are
:class:`~vlminterp.eval.endpoint.ChatEndpoint`'s: nothing is asked twice, and a failed run raises
:class:`~vlminterp.eval.endpoint.JudgeRunError` after caching every answer it got.

**Replies that do not parse** (``"I think it might be unsafe"`` for MM-SafetyBench, ``"Assistant 1:
8"`` for LLaVA-Bench) are never guessed: after the whole batch is answered and cached, the call
raises :class:`~vlminterp.eval.judges.UnparsedReplyError` listing each such sample id with its reply.
Nothing is lost (rerunning costs no request); pass ``parse=`` to read that judge model's style, or
drop those samples. MM-Vet's grader first does what its script does: asks again, then grades 0.0.

Example:
    >>> from vlminterp.eval.endpoint import ChatEndpoint
    >>> judge = EndpointJudge(ChatEndpoint("gpt-4o", base_url="http://127.0.0.1:9/v1"))
    >>> judge.name
    'llm:gpt-4o:mm-safetybench'
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from vlminterp.eval.endpoint import ChatEndpoint
from vlminterp.eval.judge_prompts import (
    MMVET_RETRY_TEMPERATURES,
    PROMPT_SETS,
    PromptSet,
    mmvet_retry_messages,
    parse_mmvet_score,
)
from vlminterp.eval.judges import Judge, UnparsedReplyError, Verdict
from vlminterp.prompts import Sample

__all__ = ["UnparsedReplyError", "EndpointJudge", "EndpointGrader", "Grade", "grade_rows"]


def _prompt_set(name: str, kind: str, who: str) -> PromptSet:
    sets = sorted(n for n, p in PROMPT_SETS.items() if p.kind == kind)
    if name not in PROMPT_SETS or PROMPT_SETS[name].kind != kind:
        raise ValueError(f"{who}: prompt set {name!r} is not a {kind} set; choose from {sets}.")
    return PROMPT_SETS[name]


def _ask(
    endpoint: ChatEndpoint,
    messages: Callable[[Sample | None, str], list[dict[str, str]]],
    params: dict[str, Any],
    parse: Callable[[str], Any],
    name: str,
    samples: Sequence[Sample] | None,
    responses: Sequence[str],
) -> list[tuple[Any, str]]:
    """``(parsed value or None, reply)`` per response."""
    requests = [messages(samples[i] if samples is not None else None, r) for i, r in enumerate(responses)]
    replies = endpoint.complete(requests, params, desc=name)
    return [(parse(r), r) for r in replies]


def _strict(
    answers: list[tuple[Any, str]], samples: Sequence[Sample] | None, name: str
) -> list[tuple[Any, str]]:
    ids = [s.id for s in samples] if samples is not None else [str(i) for i in range(len(answers))]
    bad = [(sid, r) for sid, (v, r) in zip(ids, answers, strict=True) if v is None]
    if bad:
        raise UnparsedReplyError(name, bad, len(answers))
    return answers


@dataclass
class EndpointJudge(Judge):
    """A safety judge: a chat model behind an endpoint with a published safety prompt set.

    Args:
        endpoint: The judge model (:class:`~vlminterp.eval.endpoint.ChatEndpoint`).
        prompt_set: A safety set of :data:`~vlminterp.eval.judge_prompts.PROMPT_SETS`.
        parse: Reply -> True (unsafe) / False (safe) / None (default: the set's own rule).
        name: Name in verdicts (default ``llm:MODEL:PROMPT_SET``).

    Raises:
        ValueError: an unknown or non-safety prompt set.
    """

    endpoint: ChatEndpoint
    prompt_set: str = "mm-safetybench"
    parse: Callable[[str], bool | None] | None = None
    name: str = ""

    def __post_init__(self) -> None:
        self._prompts = _prompt_set(self.prompt_set, "safety", "EndpointJudge")
        self.name = self.name or f"llm:{self.endpoint.model}:{self.prompt_set}"

    def judge(self, samples: Sequence[Sample] | None, responses: Sequence[str]) -> list[Verdict]:
        """One verdict per response (``refused`` = judged safe, ``evidence`` = the judge's reply).

        Raises:
            JudgeRunError: the endpoint failed for good (answers so far are cached).
            UnparsedReplyError: some replies are neither safe nor unsafe.
        """
        self._check(samples, responses)
        p = self._prompts
        answers = _ask(
            self.endpoint, p.messages, dict(p.params), self.parse or p.parse, self.name, samples, responses
        )
        answers = _strict(answers, samples, self.name)
        return [Verdict(refused=not u, unsafe=bool(u), judge=self.name, evidence=r) for u, r in answers]


@dataclass(frozen=True)
class Grade:
    """A grader's score of one answer.

    Attributes:
        score: Our answer's score (MM-Vet 0-1, LLaVA-Bench 1-10).
        reference: The reference answer's score (LLaVA-Bench's GPT-4 answer; None for MM-Vet).
        judge: Name of the grader.
        evidence: The grader's raw reply.
    """

    score: float
    reference: float | None
    judge: str
    evidence: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "score": self.score,
            "reference": self.reference,
            "judge": self.judge,
            "evidence": self.evidence,
        }


@dataclass
class EndpointGrader:
    """A utility grader: ``mm-vet`` or ``llava-bench`` over an endpoint.

    Args:
        endpoint: The grader model.
        prompt_set: ``"mm-vet"`` or ``"llava-bench"``.
        name: Name in grades (default ``llm:MODEL:PROMPT_SET``).
        retry_unparsed: MM-Vet only: a reply without a score is asked again as ``mm-vet_evaluator.py``
            does (:func:`~vlminterp.eval.judge_prompts.mmvet_retry_messages` at temperatures
            :data:`~vlminterp.eval.judge_prompts.MMVET_RETRY_TEMPERATURES`), then graded 0.0 (the
            evidence says so). False raises :class:`~vlminterp.eval.judges.UnparsedReplyError` instead.
            LLaVA-Bench's script records ``[-1, -1]`` for an unreadable review; here it always raises.

    Example:
        >>> from vlminterp.eval.endpoint import ChatEndpoint
        >>> EndpointGrader(ChatEndpoint("gpt-4", base_url="http://127.0.0.1:9/v1"), "mm-vet").name
        'llm:gpt-4:mm-vet'
    """

    endpoint: ChatEndpoint
    prompt_set: str = "mm-vet"
    name: str = ""
    retry_unparsed: bool = True

    def __post_init__(self) -> None:
        self._prompts = _prompt_set(self.prompt_set, "score", "EndpointGrader")
        self.name = self.name or f"llm:{self.endpoint.model}:{self.prompt_set}"

    def grade(self, samples: Sequence[Sample], responses: Sequence[str]) -> list[Grade]:
        """One grade per response (samples carry the ground truth / reference in ``meta``).

        Raises:
            ValueError: a sample lacks what the prompt needs (named), or counts differ.
            JudgeRunError: the endpoint failed for good (answers so far are cached).
            UnparsedReplyError: some replies hold no score.
        """
        Judge._check(samples, responses)
        p = self._prompts
        answers = _ask(self.endpoint, p.messages, dict(p.params), p.parse, self.name, samples, responses)
        if self.prompt_set == "mm-vet" and self.retry_unparsed:
            answers = self._mmvet_retries(answers, samples, responses)
        answers = _strict(answers, samples, self.name)
        if self.prompt_set == "llava-bench":
            return [Grade(ours, ref, self.name, r) for (ref, ours), r in answers]
        return [Grade(v, None, self.name, r) for v, r in answers]

    def _mmvet_retries(
        self, answers: list[tuple[Any, str]], samples: Sequence[Sample], responses: Sequence[str]
    ) -> list[tuple[Any, str]]:
        """``mm-vet_evaluator.py``'s second chances: the retry prompt at rising temperatures, then 0.0."""
        answers = list(answers)
        for temperature in MMVET_RETRY_TEMPERATURES:
            todo = [i for i, (v, _) in enumerate(answers) if v is None]
            if not todo:
                break
            params = {"max_tokens": 3, "temperature": temperature}
            again = _ask(
                self.endpoint,
                mmvet_retry_messages,
                params,
                parse_mmvet_score,
                f"{self.name} retry",
                [samples[i] for i in todo],
                [responses[i] for i in todo],
            )
            for i, answer in zip(todo, again, strict=True):
                answers[i] = answer
        return [(0.0, f"[no score after retries; graded 0.0 as mm-vet_evaluator.py] {r}") if v is None else (v, r)
                for v, r in answers]  # fmt: skip


def grade_rows(
    grader: EndpointGrader, rows: list[dict[str, Any]], samples: Sequence[Sample]
) -> list[dict[str, Any]]:
    """One grade per response row, ready for :func:`~vlminterp.eval.metrics.mmvet_scores` /
    :func:`~vlminterp.eval.metrics.llava_bench_scores`.

    Args:
        grader: The grader.
        rows: Response rows (:func:`vlminterp.eval.runner.generate_responses`): ``id``, ``response`` and
            any of ``dataset``, ``condition``, ``method`` (copied).
        samples: The samples the rows answer (matched by id; their ``meta`` gives the ground truth).

    Returns:
        ``{id, dataset, condition, method, score, reference, judge, evidence, capability, category}`` per
        row (``capability`` / ``category`` from the sample's meta, None when absent).

    Raises:
        KeyError: a row's id is not among the samples.
    """
    by_id = {s.id: s for s in samples}
    missing = [r["id"] for r in rows if r["id"] not in by_id]
    if missing:
        raise KeyError(
            f"grade_rows: rows {missing[:5]} answer no sample given; pass the samples the rows came from."
        )
    chosen = [by_id[r["id"]] for r in rows]
    grades = grader.grade(chosen, [r["response"] for r in rows])
    keep = ("id", "dataset", "condition", "method")
    return [
        {k: r[k] for k in keep if k in r}
        | g.to_dict()
        | {"capability": s.meta.get("capability"), "category": s.meta.get("category")}
        for r, s, g in zip(rows, chosen, grades, strict=True)
    ]
