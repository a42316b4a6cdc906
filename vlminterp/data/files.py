"""Readers for benchmark files that report malformed rows by file, line and field.

Every reader keeps the file's own layout quirks working (CRLF or LF, no trailing newline) and raises
:class:`~vlminterp.data.errors.DatasetFormatError` instead of ``KeyError``/``JSONDecodeError``.

Example:
    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "q.jsonl"
    >>> _ = p.write_text('{"a": 1}\\n{"a": 2}')
    >>> [(line, row["a"]) for line, row in read_jsonl(p)]
    [(1, 1), (2, 2)]
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from vlminterp.data.errors import DatasetFormatError

__all__ = ["read_jsonl", "read_json", "read_csv", "read_tsv", "field", "find_file", "find_dir"]


def find_file(root: Path, candidates: Sequence[str], what: str) -> Path:
    """The first ``root / candidate`` that is a file; else FileNotFoundError listing where it looked."""
    for c in candidates:
        if (root / c).is_file():
            return root / c
    tried = ", ".join(str(root / c) for c in candidates)
    raise FileNotFoundError(
        f"{what} not found under {root} (looked for {tried}). Pass the benchmark's folder as laid out by its "
        "publishers as `root`."
    )


def find_dir(root: Path, explicit: str | Path | None, candidates: Sequence[str]) -> Path:
    """``explicit`` if given, else the first existing ``root / candidate`` (the first one if none exists)."""
    if explicit is not None:
        return Path(explicit)
    for c in candidates:
        if (root / c).is_dir():
            return root / c
    return root / candidates[0]


def read_jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line_number, object)`` for every non-empty line of a JSON-lines file."""
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise DatasetFormatError(path, f"line {n}", None, f"is not valid JSON ({e.msg})") from None
            if not isinstance(obj, dict):
                raise DatasetFormatError(path, f"line {n}", None, f"is a {type(obj).__name__}, not an object")
            yield n, obj


def read_json(path: Path, kind: type) -> Any:
    """The JSON value of a whole file, which must be of type ``kind`` (``list`` or ``dict``)."""
    try:
        with open(path, encoding="utf-8") as f:
            value = json.load(f)
    except json.JSONDecodeError as e:
        raise DatasetFormatError(path, f"line {e.lineno}", None, f"is not valid JSON ({e.msg})") from None
    if not isinstance(value, kind):
        raise DatasetFormatError(
            path, "top level", None, f"is a {type(value).__name__}, expected a {kind.__name__}"
        )
    return value


def read_csv(path: Path, columns: Sequence[str]) -> Iterator[tuple[int, dict[str, str]]]:
    """``(line_number, row)`` of a comma-separated file with a header holding ``columns``."""
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        for col in columns:
            if col not in header:
                raise DatasetFormatError(path, "header", col, f"is missing (the header has {list(header)})")
        for row in reader:
            if None in row or any(v is None for v in row.values()):
                n_fields = len(header) + len(row.get(None) or []) - sum(v is None for v in row.values())
                raise DatasetFormatError(
                    path,
                    f"line {reader.line_num}",
                    None,
                    f"has {n_fields} fields, the header has {len(header)}",
                )
            yield reader.line_num, row


def read_tsv(path: Path, n_columns: Sequence[int]) -> Iterator[tuple[int, list[str]]]:
    """``(line_number, fields)`` of a tab-separated file without header; ``n_columns`` are the allowed widths."""
    with open(path, encoding="utf-8", newline="") as f:
        for n, line in enumerate(f, start=1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            parts = line.split("\t")
            if len(parts) not in n_columns:
                raise DatasetFormatError(
                    path,
                    f"line {n}",
                    None,
                    f"has {len(parts)} tab-separated fields, expected {list(n_columns)}",
                )
            yield n, parts


def field(row: dict[str, Any], name: str, kind: type | tuple[type, ...], path: Path, where: str) -> Any:
    """``row[name]``, checked to exist and to be of type ``kind``."""
    if name not in row:
        raise DatasetFormatError(path, where, name, f"is missing (the row has {sorted(row)})")
    value = row[name]
    if not isinstance(value, kind):
        expected = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise DatasetFormatError(path, where, name, f"is {value!r}, expected {expected}")
    return value
