"""Result files: one row type (tidy rows, one measurement per row) and one writer, used by every command.

A :data:`Row` is a flat dict: the columns that say *what* was measured (``model``, ``dataset``,
``condition``, ``method``, ``layer``, ``label``, ...), then ``metric``, ``value`` and ``n`` (how
many observations the value averages; ``ci_low`` / ``ci_high`` when there is an interval). Columns a
table does not use are simply absent. :func:`write_results` writes ``NAME.json`` (a JSON list of the
rows) and ``NAME.csv`` (the same rows, columns in :data:`COLUMNS` order, then any others), and
``manifest.json`` beside them: the run's config, its hash, the package versions and the files in
the folder. Every file is written tmp -> rename (:mod:`vlminterp.io`), so a killed run never leaves a
half-written table. Tables read back with :func:`read_results`.

The model is named by its spec (``organism``, ``tiny:llava``, a hub id; :func:`vlminterp.specs.model_name`),
never by a machine path: a config value that is an absolute path inside the output folder is written
relative to it, and ``out`` itself is not recorded.

Example:
    >>> import tempfile, pathlib
    >>> out = pathlib.Path(tempfile.mkdtemp())
    >>> rows = [row("refused_rate", 0.5, n=4, model="tiny:llava", condition="image")]
    >>> write_results(out, rows, {"model": "tiny:llava"}).name
    'results.json'
    >>> (out / "results.csv").read_text().splitlines()[0]
    'model,condition,metric,value,n'
    >>> read_results(out) == rows, sorted(p.name for p in out.iterdir())
    (True, ['manifest.json', 'results.csv', 'results.json'])
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from vlminterp.io import read_json, write_json_atomic, write_text_atomic

__all__ = ["Row", "COLUMNS", "row", "check_rows", "write_results", "read_results", "config_hash", "versions"]

#: One measurement: identifying columns, then ``metric``, ``value``, ``n`` (and optional CI columns).
Row = dict[str, Any]

#: Column order of the CSV files (columns a table lacks are skipped; unknown ones follow, in first-seen order).
COLUMNS = (
    "model",
    "dataset",
    "split",
    "analysis",
    "label",
    "condition",
    "method",
    "mode",
    "scope",
    "layer",
    "head",
    "alpha",
    "steps",
    "judge",
    "metric",
    "value",
    "n",
    "ci_low",
    "ci_high",
)
_REQUIRED = ("metric", "value")
MANIFEST = "manifest.json"


def row(metric: str, value: float | None, n: int | None = None, **columns: Any) -> Row:
    """One tidy row: the identifying ``columns``, then ``metric``, ``value`` and ``n``.

    Example:
        >>> row("utility", 1.0, n=20, condition="image")
        {'condition': 'image', 'metric': 'utility', 'value': 1.0, 'n': 20}
    """
    return {**columns, "metric": metric, "value": value, "n": n}


def check_rows(rows: Sequence[Mapping[str, Any]], name: str = "results") -> None:
    """Raise when a row is not a tidy row: not a dict, without ``metric`` / ``value``, or not JSON.

    Raises:
        ValueError: naming the table, the row index and what is wrong.

    Example:
        >>> check_rows([{"metric": "m"}], "table")
        Traceback (most recent call last):
        ...
        ValueError: table row 0 has no 'value' column; every row needs 'metric' and 'value' (see vlminterp.results.row).
    """
    for i, r in enumerate(rows):
        if not isinstance(r, Mapping):
            raise ValueError(f"{name} row {i} is a {type(r).__name__}, not a dict of columns.")
        for key in _REQUIRED:
            if key not in r:
                raise ValueError(
                    f"{name} row {i} has no {key!r} column; every row needs 'metric' and 'value' "
                    "(see vlminterp.results.row)."
                )
        value = r["value"]
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{name} row {i} ({r['metric']}) has value {value}; write None for 'no value'.")
        try:
            json.dumps(dict(r), allow_nan=False)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{name} row {i} ({r['metric']}) is not JSON-serialisable: {e}.") from None


def _csv(rows: Sequence[Mapping[str, Any]]) -> str:
    seen = list(dict.fromkeys(k for r in rows for k in r))
    fields = [c for c in COLUMNS if c in seen] + [c for c in seen if c not in COLUMNS]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def versions() -> dict[str, str]:
    """Versions of vlminterp, torch and transformers (recorded in every manifest)."""
    import torch
    import transformers

    import vlminterp

    return {
        "vlminterp": vlminterp.__version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }


def config_hash(config: Mapping[str, Any]) -> str:
    """A short hash of ``config`` (sorted keys, values as JSON; non-JSON values by ``str``).

    Example:
        >>> config_hash({"a": 1, "b": 2}) == config_hash({"b": 2, "a": 1})
        True
    """
    return hashlib.sha256(json.dumps(dict(config), sort_keys=True, default=str).encode()).hexdigest()[:16]


def _portable(config: Mapping[str, Any], out: Path) -> dict[str, Any]:
    """``config`` without ``out``, with absolute paths inside ``out`` made relative to it."""
    root = out.resolve()
    kept = {}
    for key, value in config.items():
        if key == "out":
            continue
        if isinstance(value, (str, Path)) and Path(value).is_absolute():
            path = Path(value).resolve()
            value = str(path.relative_to(root)) if path.is_relative_to(root) else str(value)
        kept[key] = value
    return kept


def write_results(
    out: str | Path,
    rows: Sequence[Mapping[str, Any]],
    config: Mapping[str, Any],
    name: str = "results",
    info: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``out/NAME.json`` + ``out/NAME.csv`` (the rows) and ``out/manifest.json``; returns the JSON path.

    Args:
        out: Output folder (created).
        rows: Tidy rows (:func:`check_rows` is run first: a bad row writes nothing).
        config: The run's settings (recorded with their hash; ``out`` is left out, paths inside it
            are written relative to it).
        name: File stem; a command with several tables calls this once per table (the manifest lists
            every file in the folder).
        info: Facts about the run for the manifest that are not settings (seconds, sample counts):
            recorded under ``info``, not hashed.

    Returns:
        The path of ``NAME.json``.
    """
    check_rows(rows, name)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.json"
    write_json_atomic(path, [dict(r) for r in rows])
    write_text_atomic(out / f"{name}.csv", _csv(rows))
    settings = _portable(config, out)
    manifest = {
        "config": settings,
        "config_hash": config_hash(settings),
        "info": dict(info or {}),
        "versions": versions(),
        "files": sorted(
            {MANIFEST, *(p.name for p in out.iterdir() if p.is_file() and not p.name.startswith("."))}
        ),
    }
    write_json_atomic(out / MANIFEST, manifest, indent=2)
    return path


def read_results(out: str | Path, name: str = "results") -> list[Row]:
    """The rows of ``out/NAME.json`` written by :func:`write_results`.

    Raises:
        FileNotFoundError: naming the missing file.
    """
    path = Path(out) / f"{name}.json"
    if not path.is_file():
        raise FileNotFoundError(f"No results table {path}; the command that writes it has not run there.")
    return read_json(path)
