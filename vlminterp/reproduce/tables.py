"""The papers' table layouts over tidy rows, with the published number beside each measured one.

:func:`with_published` adds ``published`` and ``published_source`` to every measured row the paper
reports (matched on benchmark, subset, condition, method, alpha and metric;
:mod:`vlminterp.reproduce.published`), and adds the published rows nothing measured (``value`` None),
so a table shows every number of the paper. A :class:`Layout` is a grid: each row and column is a
label and the column values it selects; a cell shows ``measured (paper)`` in the paper's unit
(rates in percent).

Example:
    >>> rows = [{"benchmark": "b", "subset": "all", "condition": "image", "method": "none", "alpha": None,
    ...          "metric": "asr", "value": 0.5, "n": 8, "published": 0.454}]
    >>> print(Layout("ASR (%)", [("none", {"method": "none"})], [("b", {"benchmark": "b"})], "asr").markdown(rows))
    ### ASR (%)
    <BLANKLINE>
    | | b |
    |---|---|
    | none | 50.00 (45.40) |
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["Layout", "with_published", "split_subset", "fmt", "MATCH"]

#: Columns a measured row and a published row must share.
MATCH = ("benchmark", "subset", "condition", "method", "metric")
#: Metrics shown in percent (stored as fractions).
_PERCENT = {"unsafe_rate", "asr", "accuracy", "refused_rate"}


def _alpha_matches(published: float | None, measured: float | None, paper_alpha: float | None) -> bool:
    if published is None:  # the paper's own setting: its default strength
        return measured is None or paper_alpha is None or math.isclose(measured, paper_alpha)
    return measured is not None and math.isclose(published, measured)


def with_published(
    rows: Sequence[Mapping[str, Any]], published: Sequence[Mapping[str, Any]], paper_alpha: float | None = 1.0
) -> list[dict[str, Any]]:
    """Measured rows with ``published`` / ``published_source`` (None when the paper has no such number),
    then each published row that no measured row matched (``value`` None, ``n`` 0).

    Args:
        rows: Measured tidy rows (columns :data:`MATCH` and ``alpha``).
        published: The paper's rows (:func:`vlminterp.reproduce.published.published`).
        paper_alpha: The strength a published row without ``alpha`` was measured at.
    """
    out, used = [], set()
    for r in rows:
        hit = None
        for i, p in enumerate(published):
            if all(r.get(k) == p.get(k) for k in MATCH) and _alpha_matches(
                p.get("alpha"), r.get("alpha"), paper_alpha
            ):
                hit = i
                break
        if hit is not None:
            used.add(hit)
        p = published[hit] if hit is not None else {}
        out.append({**r, "published": p.get("value"), "published_source": p.get("source")})
    for i, p in enumerate(published):
        if i not in used:
            keys = {k: p.get(k) for k in (*MATCH, "alpha")}
            if keys["alpha"] is None and keys["method"] != "none":
                keys["alpha"] = paper_alpha
            out.append(
                {**keys, "value": None, "n": 0, "published": p["value"], "published_source": p["source"]}
            )
    return [{**r, **split_subset(r.get("subset"))} for r in out]


def split_subset(subset: str | None) -> dict[str, str]:
    """A ``SCENARIO/VARIANT`` subset (MM-SafetyBench) as columns ``scenario`` and ``variant``, else ``{}``.

    Example:
        >>> split_subset("01-Illegal_Activitiy/SD"), split_subset("all")
        ({'scenario': '01-Illegal_Activitiy', 'variant': 'SD'}, {})
    """
    if not subset or "/" not in subset:
        return {}
    scenario, variant = subset.split("/", 1)
    return {"scenario": scenario, "variant": variant}


def fmt(value: float | None, metric: str) -> str:
    """A number in the paper's unit: rates in percent (2 decimals), seconds (3), scores (1); ``-`` for None.

    Example:
        >>> fmt(0.6153, "unsafe_rate"), fmt(1863.1, "mme_score"), fmt(None, "asr")
        ('61.53', '1863.1', '-')
    """
    if value is None:
        return "-"
    if metric in _PERCENT:
        return f"{100 * value:.2f}"
    if metric == "seconds_per_response":
        return f"{value:.3f}"
    return f"{value:.1f}"


@dataclass(frozen=True)
class Layout:
    """A grid of one metric: rows and columns are ``(label, {column: value})`` selections.

    Attributes:
        title: The table's heading.
        rows, cols: Labels and what they select; a tidy row is in a cell when it matches both.
        metric: The metric shown (None: the selections name it, e.g. one metric per column).
        note: A line under the table.
    """

    title: str
    rows: Sequence[tuple[str, Mapping[str, Any]]]
    cols: Sequence[tuple[str, Mapping[str, Any]]]
    metric: str | None = None
    note: str = ""

    def cell(self, rows: Sequence[Mapping[str, Any]], where: Mapping[str, Any]) -> str:
        """``measured (paper)``, ``measured``, ``- (paper)`` or ``-`` for the rows matching ``where``."""
        where = {"metric": self.metric, **where} if self.metric else where
        hits = [r for r in rows if all(_eq(r.get(k), v) for k, v in where.items())]
        if not hits:
            return "-"
        metric = hits[0]["metric"]
        measured = next((r for r in hits if r.get("value") is not None), None)
        published = next((r["published"] for r in hits if r.get("published") is not None), None)
        text = fmt(measured["value"] if measured else None, metric)
        return text if published is None else f"{text} ({fmt(published, metric)})"

    def markdown(self, rows: Sequence[Mapping[str, Any]]) -> str:
        """The table as Markdown, headed by its title."""
        lines = [f"### {self.title}", "", "| | " + " | ".join(c for c, _ in self.cols) + " |",
                 "|---|" + "---|" * len(self.cols)]  # fmt: skip
        for label, rsel in self.rows:
            cells = [self.cell(rows, {**rsel, **csel}) for _, csel in self.cols]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        if self.note:
            lines += ["", self.note]
        return "\n".join(lines)


def _eq(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b)
    return a == b
