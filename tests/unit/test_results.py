"""The one results writer: JSON and CSV hold the same rows (read back with the csv module), the manifest
records the config and its hash without machine paths, and a bad row writes nothing."""

from __future__ import annotations

import csv
import hashlib
import json
import math

import pytest

from vlminterp.results import COLUMNS, check_rows, read_results, row, write_results

ROWS = [
    {
        "metric": "refused_rate",
        "value": 0.5,
        "n": 4,
        "condition": "image",
        "model": "tiny:llava",
        "extra": "x",
    },
    {"metric": "refused_rate", "value": None, "n": 0, "condition": "text_only", "model": "tiny:llava"},
]


def test_json_and_csv_hold_the_same_rows(tmp_path):
    path = write_results(tmp_path, ROWS, {"model": "tiny:llava"}, "table")
    assert path == tmp_path / "table.json" and json.loads(path.read_text()) == ROWS
    assert read_results(tmp_path, "table") == ROWS
    with open(tmp_path / "table.csv", newline="") as f:
        reader = csv.DictReader(f)
        header, got = reader.fieldnames, list(reader)
    assert header == ["model", "condition", "metric", "value", "n", "extra"]  # COLUMNS order, then the rest
    assert [h for h in header if h in COLUMNS] == sorted(
        (h for h in header if h in COLUMNS), key=COLUMNS.index
    )
    assert got[0] == {"model": "tiny:llava", "condition": "image", "metric": "refused_rate", "value": "0.5",
                      "n": "4", "extra": "x"}  # fmt: skip
    assert got[1]["value"] == "" and got[1]["extra"] == ""


def test_manifest_records_config_hash_and_versions_without_paths(tmp_path):
    inside = tmp_path / "vectors"
    config = {
        "model": "tiny:llava",
        "alpha": 0.5,
        "out": str(tmp_path),
        "vectors": str(inside),
        "root": "/data",
    }
    write_results(tmp_path, ROWS, config, info={"seconds": 1.5})
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    kept = {"model": "tiny:llava", "alpha": 0.5, "vectors": "vectors", "root": "/data"}
    assert manifest["config"] == kept and manifest["info"] == {"seconds": 1.5}
    want = hashlib.sha256(json.dumps(kept, sort_keys=True).encode()).hexdigest()[:16]
    assert manifest["config_hash"] == want
    assert set(manifest["versions"]) == {"vlminterp", "torch", "transformers"}
    assert manifest["files"] == ["manifest.json", "results.csv", "results.json"]
    assert str(tmp_path) not in (tmp_path / "manifest.json").read_text()


@pytest.mark.parametrize(
    ("rows", "match"),
    [
        ([{"value": 1.0}], "row 0 has no 'metric' column"),
        ([{"metric": "m", "value": 1.0}, {"metric": "m"}], "row 1 has no 'value' column"),
        ([{"metric": "m", "value": math.nan}], "has value nan; write None"),
        ([{"metric": "m", "value": 1.0, "x": object()}], "not JSON-serialisable"),
        (["m"], "row 0 is a str"),
    ],
)
def test_a_bad_row_raises_and_writes_nothing(rows, match, tmp_path, no_shape_checks):
    with pytest.raises(ValueError, match=match):
        write_results(tmp_path / "out", rows, {})
    assert not (tmp_path / "out").exists()


def test_row_and_missing_table():
    assert row("utility", 1.0, n=2, condition="image") == {
        "condition": "image",
        "metric": "utility",
        "value": 1.0,
        "n": 2,
    }
    check_rows([row("utility", None)])
    with pytest.raises(FileNotFoundError, match="No results table"):
        read_results("/nonexistent", "summary")
