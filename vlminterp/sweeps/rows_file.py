"""The resumable rows file of a sweep: JSONL appended one group of points at a time, with its manifest.

The rows of every group of points are appended in one write followed by ``fsync``; a half-written
last line (a killed run) is dropped on restart, and points whose rows are all there are skipped. A
side file ``<path>.manifest.json`` records what the rows measure (model, dataset, samples, metrics,
method); opening it with a different one raises :class:`SweepMismatchError` instead of mixing tables.

Example:
    >>> import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "rows.jsonl"
    >>> f = RowsFile(path, {"model": "m"}, ["refusal_score"])
    >>> f.append([{"point": "p", "metric": "refusal_score", "value": 1.0}])
    >>> RowsFile(path, {"model": "m"}, ["refusal_score"]).done()
    {'p'}
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vlminterp.io import write_text_atomic
from vlminterp.prompts import Sample

__all__ = ["RowsFile", "SweepMismatchError", "samples_digest"]


class SweepMismatchError(ValueError):
    """An output file holds rows of another sweep (model, dataset, samples, metrics or method)."""


def samples_digest(samples: Sequence[Sample]) -> str:
    """A short hash of the samples' ids, queries, labels and captions (a manifest field)."""
    h = hashlib.sha256()
    for s in samples:
        h.update(json.dumps([s.id, s.query, s.label, s.caption]).encode())
    return h.hexdigest()[:16]


class RowsFile:
    """A JSONL file of sweep rows: whole groups appended with fsync; a torn last line is dropped."""

    def __init__(self, path: Path, manifest: dict[str, Any], metric_names: list[str]):
        self.path = path
        self.manifest_path = path.with_name(path.name + ".manifest.json")
        path.parent.mkdir(parents=True, exist_ok=True)
        if self.manifest_path.is_file():
            found = json.loads(self.manifest_path.read_text())
            diff = sorted(k for k in set(found) | set(manifest) if found.get(k) != manifest.get(k))
            if diff:
                raise SweepMismatchError(
                    f"{str(path)!r} holds rows of another sweep (differs in {diff}). Use another out_path, or delete "
                    f"{path.name} and {self.manifest_path.name} to start over."
                )
        else:
            write_text_atomic(self.manifest_path, json.dumps(manifest, indent=2, sort_keys=True))
        self.rows = self._load(metric_names)

    def _load(self, metric_names: list[str]) -> list[dict[str, Any]]:
        if not self.path.is_file():
            return []
        text = self.path.read_text()
        lines = text.split("\n")
        whole, torn = lines[:-1], lines[-1]  # text after the last newline was never completed
        rows = []
        for n, line in enumerate(whole, start=1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    raise ValueError(
                        f"{self.path}, line {n} is not JSON; this is not a sweep rows file."
                    ) from None
        metrics: dict[str, set[str]] = {}
        for r in rows:
            metrics.setdefault(r["point"], set()).add(r["metric"])
        complete = {p for p, m in metrics.items() if m >= set(metric_names)}
        kept = [r for r in rows if r["point"] in complete]
        if torn or len(kept) != len(rows):
            write_text_atomic(self.path, "".join(json.dumps(r) + "\n" for r in kept))
        return kept

    def done(self) -> set[str]:
        return {r["point"] for r in self.rows}

    def append(self, rows: list[dict[str, Any]]) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write("".join(json.dumps(r) + "\n" for r in rows))
            f.flush()
            os.fsync(f.fileno())
        self.rows.extend(rows)
