"""Refusal and utility of an organism checkpoint per condition, as tidy rows.

One row per (task, condition, metric): ``{"split", "task", "condition", "metric", "value", "n"}``.
``refusal_rate`` is measured on ``harmful`` samples, ``utility`` (exact answer) on ``benign``
requests and on ``image_question`` samples (the latter under IMAGE and CAPTION only: without the
image or its caption the question has no answer).

Example:
    >>> from vlminterp import HookedVLM
    >>> from vlminterp.organism.evaluate import evaluate_organism
    >>> rows = evaluate_organism(HookedVLM.from_organism(), conditions=["text_only"])  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from vlminterp.organism.judge import refusal_rate, utility
from vlminterp.organism.tasks import organism_samples
from vlminterp.prompts import Condition, PromptBatch, Sample

if TYPE_CHECKING:
    from vlminterp.models.hooked_vlm import FwdHooks, HookedVLM

__all__ = ["DEFAULT_CONDITIONS", "MAX_NEW_TOKENS", "generate_texts", "evaluate_organism"]

DEFAULT_CONDITIONS = (Condition.TEXT_ONLY, Condition.CAPTION, Condition.BLANK, Condition.IMAGE)
#: Enough for the longest answer (the 9-token refusal) and its ``<eos>``.
MAX_NEW_TOKENS = 10
_IMAGE_TASK_CONDITIONS = (Condition.IMAGE, Condition.CAPTION)


def generate_texts(
    model: HookedVLM,
    samples: Sequence[Sample],
    condition: Condition | str,
    max_new_tokens: int = MAX_NEW_TOKENS,
    batch_size: int = 128,
    fwd_hooks: FwdHooks = (),
) -> list[str]:
    """Greedy responses of ``model`` to ``samples`` under ``condition``, in sample order."""
    texts: list[str] = []
    for start in range(0, len(samples), batch_size):
        batch = PromptBatch.paired(model, samples[start : start + batch_size], [condition])
        texts.extend(model.generate(batch, max_new_tokens=max_new_tokens, fwd_hooks=fwd_hooks).texts)
    return texts


def evaluate_organism(
    model: HookedVLM,
    split: str = "test",
    conditions: Sequence[Condition | str] = DEFAULT_CONDITIONS,
    n_images: dict[str, int] | None = None,
    max_new_tokens: int = MAX_NEW_TOKENS,
) -> list[dict[str, Any]]:
    """Refusal on harmful and utility on benign / image-question samples of ``split``, per condition.

    Args:
        model: An organism checkpoint loaded as a HookedVLM.
        split: ``"test"``, ``"val"`` or ``"train"`` (see :mod:`vlminterp.organism.tasks`).
        conditions: Conditions to evaluate.
        n_images: Images per request by kind (``{"harmful": 4}``); missing kinds use the defaults.
        max_new_tokens: Greedy tokens generated per response.

    Returns:
        Tidy rows ``{"split", "task", "condition", "metric", "value", "n"}``.
    """
    conds = [Condition.parse(c) for c in conditions]
    rows = []
    for kind in ("harmful", "benign", "image_question"):
        samples = organism_samples(split, kind, (n_images or {}).get(kind))
        for cond in conds:
            if kind == "image_question" and cond not in _IMAGE_TASK_CONDITIONS:
                continue
            texts = generate_texts(model, samples, cond, max_new_tokens)
            metric, value = (
                ("refusal_rate", refusal_rate(texts))
                if kind == "harmful"
                else ("utility", utility(texts, samples))
            )
            rows.append(
                {
                    "split": split,
                    "task": kind,
                    "condition": cond.value,
                    "metric": metric,
                    "value": value,
                    "n": len(samples),
                }
            )
    return rows
