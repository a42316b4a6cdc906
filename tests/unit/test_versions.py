"""The lock: freeze -> read round trip, mismatches named, malformed lines refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from vlminterp import versions

REPO = Path(__file__).resolve().parents[2]


def test_freeze_reads_back_as_the_installed_versions(tmp_path):
    lock = tmp_path / "constraints.txt"
    lock.write_text(versions.freeze())
    pins = versions.read_lock(lock)
    assert pins["transformers"] == versions.key_versions()["transformers"]
    assert "vlminterp" not in pins and "pip" not in pins
    assert versions.lock_mismatches(lock) == []


def test_mismatches_name_the_package_and_both_versions(tmp_path):
    lock = tmp_path / "constraints.txt"
    lock.write_text("# a comment\n\ntransformers==0.0.1\nNot_A-Package==1.0  # trailing comment\n")
    assert versions.lock_mismatches(lock) == [
        f"transformers: locked 0.0.1, installed {versions.key_versions()['transformers']}",
        "not-a-package: locked 1.0, installed nothing",
    ]
    assert versions.main(["--check-lock", str(lock)]) == 1


def test_local_version_labels_are_the_same_release(tmp_path):
    lock = tmp_path / "constraints.txt"
    lock.write_text(f"torch=={versions.key_versions()['torch']}+cu128\n")
    assert versions.lock_mismatches(lock) == []


def test_malformed_line_is_refused_with_its_place(tmp_path):
    lock = tmp_path / "constraints.txt"
    lock.write_text("transformers>=5\n")
    with pytest.raises(ValueError, match=r"constraints.txt:1: expected 'name==version'"):
        versions.read_lock(lock)


def test_the_repository_lock_pins_the_key_packages():
    pins = versions.read_lock(REPO / "constraints.txt")
    assert {"torch", "transformers", "transformer-lens", "tokenizers"} <= set(pins)
