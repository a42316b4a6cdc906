"""benchmarks/gpu.sh, rehearsed on a CPU: the GPU section's one command must work the first time a
device is lent (a lease is 15 minutes). Quick shapes in float16 run every benchmark through the
script's own path: one checkpoint folder shared by the four, JSON lines recorded with their dtype,
and only what the benchmarks built deleted afterwards. The wheels carried to the device
(``benchmarks/gpu_wheels.sh``) are the lock's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from figures import bench_tables

ROOT = Path(__file__).resolve().parents[2]


def _script(tmp_path: Path, checkpoint: Path, benches: str) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "PYTHON": sys.executable,
        "DEVICE": "cpu",
        "SHAPES": "quick",
        "DTYPE": "float16",
        "BENCH_ARGS": "--repeats 1",
        "BENCHES": benches,
        "RESULTS": str(tmp_path / "results"),
        "CHECKPOINT": str(checkpoint),
        "HF_HUB_OFFLINE": "1",
    }
    return subprocess.run(
        ["bash", "benchmarks/gpu.sh"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900
    )


@pytest.mark.slow
def test_the_gpu_script_runs_every_benchmark_in_half_precision_and_cleans_up(tmp_path):
    checkpoint = tmp_path / "ckpt"
    done = _script(tmp_path, checkpoint, "forward steer sweep collect")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for bench in ("forward", "steer", "sweep", "collect"):
        lines = (tmp_path / "results" / f"bench_{bench}.jsonl").read_text().splitlines()
        config = json.loads(lines[-1])["config"]
        assert (len(lines), config["dtype"], config["shapes"]) == (1, "float16", "quick"), bench
    steer = json.loads((tmp_path / "results" / "bench_steer.jsonl").read_text())
    assert steer["config"]["unsteered_tokens_equal_hf"] is True
    assert not checkpoint.exists()  # the checkpoints (and the folder they emptied) are gone

    table = bench_tables.render(tmp_path / "results")["bench-table"]
    assert table.count("| quick float16 |") == 4


@pytest.mark.slow
def test_the_gpu_script_deletes_nothing_it_did_not_build(tmp_path):
    checkpoint = tmp_path / "mine"
    checkpoint.mkdir()
    (checkpoint / "notes.txt").write_text("a user's file")
    done = _script(tmp_path, checkpoint, "forward")
    assert done.returncode == 1 and "holds files of its own (notes.txt)" in done.stderr
    assert (checkpoint / "notes.txt").read_text() == "a user's file"


def test_the_device_wheels_are_pinned_by_the_lock():
    """benchmarks/gpu_wheels.sh downloads each package at its constraints.txt version (it exits otherwise)."""
    script = (ROOT / "benchmarks" / "gpu_wheels.sh").read_text()
    packages = script.split('PACKAGES="')[1].split('"')[0].split()
    lock = {line.split("==")[0].lower() for line in (ROOT / "constraints.txt").read_text().splitlines()}
    assert {"transformers", "transformer-lens", "huggingface-hub", "tokenizers"} <= set(packages)
    assert [p for p in packages if p.lower() not in lock] == []
