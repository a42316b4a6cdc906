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
import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

__all__ = [
    "wilson_interval",
    "rate_table",
    "mme_yes_no",
    "mme_scores",
    "mmvet_scores",
    "llava_bench_scores",
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
    """MME acc, acc+ and score per subtask, and perception / cognition totals, as ``calculation.py``.

    The official rule (``eval_tool/calculation.py``): a subtask's questions are taken in file order in
    consecutive pairs (one image, two questions); acc is the share of questions answered right
    (:func:`mme_yes_no`), acc+ the share of pairs with both right, the subtask score is
    ``100 * (acc + acc+)`` (max 200), and a category's score is the sum of its subtasks' scores
    (perception: 10 subtasks, max 2000; cognition: 4, max 800).

    The official script needs all 14 subtask files; here missing subtasks are allowed but never silent:
    each total row records ``subtasks`` (present / expected) and ``missing`` (comma-separated names,
    ``""`` when complete), and a warning names them. A category with no subtask present gets
    ``value`` None.

    Args:
        rows: One per question, in file order: ``subtask``, ``image_name``, ``gt_answer`` (Yes/No) and
            ``response`` (``category`` is not needed; it follows from the subtask).

    Returns:
        Rows ``{subtask, metric, value, n}`` with metric ``acc``, ``acc_plus`` (percent) and ``score``
        per subtask (``n`` questions, images for acc+), then one ``score`` row each for subtask
        ``"perception"`` and ``"cognition"`` with ``n`` (questions), ``subtasks`` and ``missing``.

    Raises:
        ValueError: an unknown subtask, an odd number of questions, or a pair of two different images.

    Example:
        >>> import warnings
        >>> rows = [dict(subtask="count", image_name="1.jpg", gt_answer="Yes", response=r) for r in ("Yes", "No")]
        >>> with warnings.catch_warnings(record=True) as caught:
        ...     warnings.simplefilter("always")
        ...     out = mme_scores(rows)
        >>> [(r["subtask"], r["metric"], r["value"]) for r in out[:3]]
        [('count', 'acc', 50.0), ('count', 'acc_plus', 0.0), ('count', 'score', 50.0)]
        >>> out[3]["subtask"], out[3]["subtasks"], str(caught[0].message).split(";")[0]
        ('perception', '1/10', 'MME: 13 of 14 subtasks missing')
    """
    from vlminterp.data.mme import COGNITION, PERCEPTION

    categories = {"perception": PERCEPTION, "cognition": COGNITION}
    per: dict[str, list[tuple[str, bool]]] = {}
    for i, r in enumerate(rows):
        if r["subtask"] not in PERCEPTION + COGNITION:
            raise ValueError(
                f"mme_scores: row {i} has subtask {r['subtask']!r}; MME has {list(PERCEPTION + COGNITION)}."
            )
        correct = mme_yes_no(r["response"]) == str(r["gt_answer"]).lower()
        per.setdefault(r["subtask"], []).append((r["image_name"], correct))
    out, scores, counts = [], {}, {}
    for subtask, answers in per.items():
        if len(answers) % 2:
            raise ValueError(
                f"mme_scores: subtask {subtask!r} has {len(answers)} questions; MME pairs two questions per image."
            )
        pairs = [answers[k : k + 2] for k in range(0, len(answers), 2)]
        for (a, _), (b, _) in pairs:
            if a != b:
                raise ValueError(
                    f"mme_scores: subtask {subtask!r} pairs questions on {a!r} and {b!r}; pass the rows in "
                    "file order (each image's two questions next to each other)."
                )
        acc = 100 * sum(c for _, c in answers) / len(answers)
        acc_plus = 100 * sum(p[0][1] and p[1][1] for p in pairs) / len(pairs)
        out += [
            {"subtask": subtask, "metric": "acc", "value": acc, "n": len(answers)},
            {"subtask": subtask, "metric": "acc_plus", "value": acc_plus, "n": len(pairs)},
            {"subtask": subtask, "metric": "score", "value": acc + acc_plus, "n": len(answers)},
        ]
        scores[subtask], counts[subtask] = acc + acc_plus, len(answers)
    missing = {c: [s for s in subs if s not in per] for c, subs in categories.items()}
    for category, subtasks in categories.items():
        present = [s for s in subtasks if s in per]
        out.append(
            {
                "subtask": category,
                "metric": "score",
                "value": sum(scores[s] for s in present) if present else None,
                "n": sum(counts[s] for s in present),
                "subtasks": f"{len(present)}/{len(subtasks)}",
                "missing": ",".join(missing[category]),
            }
        )
    n_missing = sum(map(len, missing.values()))
    if n_missing:
        warnings.warn(
            f"MME: {n_missing} of 14 subtasks missing; the perception and cognition totals sum only the "
            f"subtasks present (missing: {', '.join(missing['perception'] + missing['cognition'])}).",
            stacklevel=2,
        )
    return out


def mmvet_scores(rows: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """MM-Vet totals as ``mm-vet_evaluator.py``: 100 x the mean grade, overall and per capability.

    Args:
        rows: One per question: ``score`` (the grader's 0-1 value) and ``capability`` (a list of
            capability names, e.g. ``["rec", "ocr"]``; None when unknown, counted only in ``all``).

    Returns:
        Rows ``{capability, metric: "mmvet_score", value, n}``, ``all`` first, then capabilities by count.

    Example:
        >>> rows = [{"score": 1.0, "capability": ["ocr"]}, {"score": 0.4, "capability": ["ocr", "math"]}]
        >>> [(r["capability"], round(r["value"], 6), r["n"]) for r in mmvet_scores(rows)]
        [('all', 70.0, 2), ('ocr', 70.0, 2), ('math', 40.0, 1)]
    """
    groups: dict[str, list[float]] = {"all": []}
    for i, r in enumerate(rows):
        score = r["score"]
        if isinstance(score, bool) or not isinstance(score, (int, float)) or not 0 <= score <= 1:
            raise ValueError(
                f"mmvet_scores: row {i} has score {score!r}; MM-Vet grades are numbers in [0, 1]."
            )
        for group in ["all", *(r.get("capability") or [])]:
            groups.setdefault(group, []).append(float(score))
    ordered = sorted(groups.items(), key=lambda kv: (kv[0] != "all", -len(kv[1])))
    return [
        {"capability": c, "metric": "mmvet_score", "value": 100 * sum(v) / len(v), "n": len(v)}
        for c, v in ordered
        if v
    ]


def llava_bench_scores(rows: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """LLaVA-Bench relative scores as ``summarize_gpt_review.py``: 100 x mean(ours) / mean(reference).

    Args:
        rows: One per question: ``category`` (``conv`` / ``detail`` / ``complex``), ``score`` (our
            answer's 1-10 grade) and ``reference`` (the GPT-4 answer's grade in the same review).

    Returns:
        Per category and ``all``: rows ``{category, metric, value, n}`` with metric ``relative_score``,
        ``answer_score`` (mean of ours) and ``reference_score`` (mean of the reference's).

    Example:
        >>> rows = [{"category": "conv", "score": 6.0, "reference": 8.0}, {"category": "detail", "score": 9.0, "reference": 9.0}]
        >>> [(r["category"], r["value"]) for r in llava_bench_scores(rows) if r["metric"] == "relative_score"]
        [('all', 88.23529411764706), ('conv', 75.0), ('detail', 100.0)]
    """
    groups: dict[str, list[tuple[float, float]]] = {"all": []}
    for r in rows:
        for group in ("all", r["category"]):
            groups.setdefault(group, []).append((float(r["score"]), float(r["reference"])))
    out = []
    for category, pairs in sorted(groups.items(), key=lambda kv: kv[0] != "all"):
        if not pairs:
            continue
        ours = sum(p[0] for p in pairs) / len(pairs)
        reference = sum(p[1] for p in pairs) / len(pairs)
        n = len(pairs)
        out += [
            {"category": category, "metric": "relative_score", "value": 100 * ours / reference, "n": n},
            {"category": category, "metric": "answer_score", "value": ours, "n": n},
            {"category": category, "metric": "reference_score", "value": reference, "n": n},
        ]
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
