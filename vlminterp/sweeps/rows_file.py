"""The resumable rows file of a sweep: JSONL appended one group of points at a time, with its manifest.

The rows of every group of points are appended in one write followed by ``fsync``; a half-written
last line (a killed run) is dropped on restart, and points whose rows are all there are skipped. A
side file ``<path>.manifest.json`` records what the rows measure (model, dataset, samples, metrics,
method); opening it with a different one raises :class:`SweepMismatchError` instead of mixing tables.

Under a launcher every process appends its own groups to a part file ``<name>.rank<R>.jsonl``
(:func:`vlminterp.parallel.part_path`, :func:`append_rows`); rank 0 joins them into the file in grid order
(:meth:`RowsFile.merge_parts`) at the end, and at the start of a resumed run (the parts of a killed
run hold finished points too), so the file equals a one-process run's.

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
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from vlminterp.io import write_text_atomic
from vlminterp.parallel import part_paths
from vlminterp.prompts import Sample

__all__ = ["RowsFile", "SweepMismatchError", "samples_digest", "append_rows"]


class SweepMismatchError(ValueError):
    """An output file holds rows of another sweep (model, dataset, samples, metrics or method)."""


def samples_digest(samples: Sequence[Sample]) -> str:
    """A short hash of the samples' ids, queries, labels and captions (a manifest field)."""
    h = hashlib.sha256()
    for s in samples:
        h.update(json.dumps([s.id, s.query, s.label, s.caption]).encode())
    return h.hexdigest()[:16]


def append_rows(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    """Append ``rows`` to a JSONL file in one write, then ``fsync`` (a kill leaves at most a torn last line)."""
    with open(path, "a", encoding="utf-8") as f:
        f.write("".join(json.dumps(r) + "\n" for r in rows))
        f.flush()
        os.fsync(f.fileno())


def _read_rows(path: Path, metric_names: list[str]) -> tuple[list[dict[str, Any]], bool]:
    """Rows of the points whose every metric is in ``path``; True when some text was dropped."""
    if not path.is_file():
        return [], False
    lines = path.read_text().split("\n")
    whole, torn = lines[:-1], lines[-1]  # text after the last newline was never completed
    rows = []
    for n, line in enumerate(whole, start=1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                raise ValueError(f"{path}, line {n} is not JSON; this is not a sweep rows file.") from None
    metrics: dict[str, set[str]] = {}
    for r in rows:
        metrics.setdefault(r["point"], set()).add(r["metric"])
    complete = {p for p, m in metrics.items() if m >= set(metric_names)}
    kept = [r for r in rows if r["point"] in complete]
    return kept, bool(torn) or len(kept) != len(rows)


class RowsFile:
    """A JSONL file of sweep rows: whole groups appended with fsync; a torn last line is dropped."""

    def __init__(self, path: Path, manifest: dict[str, Any], metric_names: list[str]):
        self.path = path
        self.manifest_path = path.with_name(path.name + ".manifest.json")
        self.metric_names = metric_names
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
        self.rows, rewrite = _read_rows(path, metric_names)
        if rewrite:
            self._write()

    def _write(self) -> None:
        write_text_atomic(self.path, "".join(json.dumps(r) + "\n" for r in self.rows))

    def done(self) -> set[str]:
        return {r["point"] for r in self.rows}

    def append(self, rows: list[dict[str, Any]]) -> None:
        append_rows(self.path, rows)
        self.rows.extend(rows)

    def merge_parts(self, order: Sequence[str]) -> None:
        """Join every part file's finished points into the file, sorted by ``order``; parts removed.

        Args:
            order: Point keys in grid order (points not in it go last, in the order found).
        """
        parts = part_paths(self.path)
        if not parts:
            return
        done = self.done()
        for part in parts:
            rows, _ = _read_rows(part, self.metric_names)
            self.rows += [r for r in rows if r["point"] not in done]
            done |= {r["point"] for r in rows}
        index = {key: i for i, key in enumerate(order)}
        self.rows.sort(key=lambda r: index.get(r["point"], len(index)))  # stable: metrics keep their order
        self._write()
        for part in parts:
            part.unlink()
