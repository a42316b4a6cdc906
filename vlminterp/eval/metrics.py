"""Metrics as tidy rows: rates with Wilson intervals grouped by any columns, ScienceQA accuracy, MME.

Every function returns a list of dicts, one measurement per row
(``{<group columns>, metric, value, n, ci_low, ci_high}``), ready for a CSV/JSON results file.

Example:
    >>> rows = [{"condition": "image", "unsafe": True}, {"condition": "image", "unsafe": False}]
    >>> r = rate_table(rows, "unsafe", by=["condition"])[0]
    >>> (r["condition"], r["metric"], r["value"], r["n"])
    ('image', 'unsafe_rate', 0.5, 2)
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

__all__ = [
    "wilson_interval",
    "rate_table",
    "mme_yes_no",
    "mme_scores",
    "scienceqa_accuracy",
    "extract_letter",
]


def wilson_interval(k: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """Wilson score interval of a proportion ``k / n`` (95% for the default ``z``)."""
    if n <= 0:
        raise ValueError(f"wilson_interval needs n > 0, got n={n}.")
    if not 0 <= k <= n:
        raise ValueError(f"wilson_interval needs 0 <= k <= n, got k={k}, n={n}.")
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def rate_table(
    rows: Iterable[Mapping[str, Any]], column: str, by: Sequence[str] = (), metric: str | None = None
) -> list[dict[str, Any]]:
    """Share of rows whose boolean ``column`` is True, per group of ``by`` columns, with Wilson 95% CI.

    Args:
        rows: Records (e.g. judged responses) holding ``column`` and the ``by`` columns.
        column: A boolean column (``"unsafe"`` for ASR / unsafe rate, ``"refused"`` for refusal rate).
        by: Grouping columns (``["dataset", "condition", "method"]``).
        metric: Metric name in the output (default ``f"{column}_rate"``).

    Returns:
        One row per group, in first-seen order.
    """
    groups: dict[tuple, list[int]] = {}
    for i, row in enumerate(rows):
        for c in (column, *by):
            if c not in row:
                raise KeyError(f"rate_table: row {i} has no column {c!r} (it has {sorted(row)}).")
        value = row[column]
        if not isinstance(value, bool):
            raise TypeError(f"rate_table: row {i} column {column!r} is {value!r}, expected True/False.")
        counts = groups.setdefault(tuple(row[c] for c in by), [0, 0])
        counts[0] += value
        counts[1] += 1
    out = []
    for key, (k, n) in groups.items():
        low, high = wilson_interval(k, n)
        out.append(
            {
                **dict(zip(by, key, strict=True)),
                "metric": metric or f"{column}_rate",
                "value": k / n,
                "n": n,
                "ci_low": low,
                "ci_high": high,
            }
        )
    return out


def mme_yes_no(response: str) -> str:
    """MME's reading of a response: ``"yes"``/``"no"`` if it equals it or starts with it (first 4
    characters, lower-cased, as the official ``calculation.py``), else ``"other"`` (always wrong)."""
    pred = response.lower()
    if pred in ("yes", "no"):
        return pred
    head = pred[:4]
    if "yes" in head:
        return "yes"
    if "no" in head:
        return "no"
    return "other"


def mme_scores(rows: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """MME acc, acc+ and score per subtask, plus perception and cognition totals.

    Args:
        rows: One per question: ``subtask``, ``category`` (perception/cognition), ``image_name``,
            ``gt_answer`` (Yes/No) and ``response``.

    Returns:
        Rows ``{subtask, metric, value, n}`` with metric ``acc``, ``acc_plus`` (percent) and ``score``
        (acc + acc_plus, max 200); totals use subtask ``"perception"`` / ``"cognition"`` (sums of scores).
    """
    per: dict[str, dict[str, list[bool]]] = {}
    category: dict[str, str] = {}
    for r in rows:
        correct = mme_yes_no(r["response"]) == str(r["gt_answer"]).lower()
        per.setdefault(r["subtask"], {}).setdefault(r["image_name"], []).append(correct)
        category[r["subtask"]] = r["category"]
    out, totals = [], {}
    for subtask, images in per.items():
        answers = [c for cs in images.values() for c in cs]
        acc = 100 * sum(answers) / len(answers)
        acc_plus = 100 * sum(all(cs) for cs in images.values()) / len(images)
        out += [
            {"subtask": subtask, "metric": "acc", "value": acc, "n": len(answers)},
            {"subtask": subtask, "metric": "acc_plus", "value": acc_plus, "n": len(images)},
            {"subtask": subtask, "metric": "score", "value": acc + acc_plus, "n": len(answers)},
        ]
        totals[category[subtask]] = totals.get(category[subtask], 0.0) + acc + acc_plus
    out += [{"subtask": c, "metric": "score", "value": v, "n": None} for c, v in totals.items()]
    return out


def extract_letter(response: str, options: Sequence[str]) -> str | None:
    """The option letter a ScienceQA response gives (LLaVA's rule: the reply is the letter, maybe
    followed by ``.``/text), or None."""
    text = response.strip()
    if text[:1] in options and (len(text) == 1 or not text[1].isalnum()):
        return text[0]
    return None


def scienceqa_accuracy(rows: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Accuracy (all and image subset, with Wilson CI) from rows ``response``, ``answer``, ``options``,
    ``has_image``."""
    rows = list(rows)
    scored = [
        {"correct": extract_letter(r["response"], r["options"]) == r["answer"], "subset": "all"} for r in rows
    ]
    with_image = [
        {"correct": s["correct"], "subset": "image"}
        for s, r in zip(scored, rows, strict=True)
        if r["has_image"]
    ]
    return rate_table(scored + with_image, "correct", by=["subset"], metric="accuracy")
