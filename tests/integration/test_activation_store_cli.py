"""``vlminterp collect`` (vlminterp.studies.collect): a tiny run end to end, --resume, and a SIGKILL mid-run."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from vlminterp.cache import ActivationStore
from vlminterp.data.synthetic import tiny_samples
from vlminterp.studies.collect import CollectConfig, add_arguments, parse_layers, run

REPO = Path(__file__).resolve().parents[2]


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(argv)


def test_cli_run_equals_the_api(tiny_model, tmp_path, capsys):
    out = tmp_path / "cli"
    argv = [
        "--out",
        str(out),
        "--conditions",
        "image,text_only",
        "--layers",
        "1",
        "--batch-size",
        "2",
        "--no-progress",
    ]
    assert run(parse(argv)) == 0
    assert "image: 6 samples" in capsys.readouterr().out
    store = ActivationStore.load(out)
    api = ActivationStore.collect(
        tiny_model, tiny_samples(), ["image", "text_only"], layers=[1], batch_size=2, progress=False
    )
    assert store.layers == [1]
    for cond in ("image", "text_only"):
        assert torch.equal(store.mean(cond, "harmful"), api.mean(cond, "harmful"))
    with pytest.raises(FileExistsError, match="--resume"):
        run(parse(argv))
    assert run(parse([*argv, "--resume"])) == 0


def test_cli_config_validation():
    assert parse_layers("all") is None and parse_layers("3, 5-6") == [3, 5, 6]
    with pytest.raises(ValueError, match="'0,x'"):
        parse_layers("0,x")
    with pytest.raises(ValueError, match="--positions 'first'"):
        CollectConfig.from_args(parse(["--out", "x", "--positions", "first"]))
    with pytest.raises(ValueError, match="Unknown condition 'imgae'"):
        CollectConfig.from_args(parse(["--out", "x", "--conditions", "imgae"]))
    with pytest.raises(ValueError, match="--data-root"):
        CollectConfig(out="x", dataset="mm-safetybench")
    cfg = CollectConfig(out="x", positions=-2, keep="both")
    assert CollectConfig.from_dict(cfg.to_dict()) == cfg


def visible_files_are_whole(shards: Path) -> int:
    """Every shard file a reader can see opens as safetensors; every record parses. Returns #records."""
    for path in shards.glob("shard-*.safetensors"):
        with safe_open(str(path), framework="pt") as f:
            assert list(f.keys())
    records = list(shards.glob("shard-*.json"))
    for path in records:
        json.loads(path.read_text())
    return len(records)


@pytest.mark.slow
def test_sigkill_mid_run_then_resume_is_bit_identical(tiny_model, tmp_path):
    """Kill a CLI collection with SIGKILL after some shards; --resume finishes it; the files and statistics
    equal an uninterrupted run bit for bit, and no partial shard was ever visible."""
    common = [
        "--conditions",
        "image,blank,text_only",
        "--limit",
        "6",  # per label: 12 samples
        "--shard-size",
        "1",
        "--batch-size",
        "1",
    ]
    common += ["--keep", "both", "--covariance", "--no-progress"]
    cut = tmp_path / "cut"
    code = (
        "import sys, argparse; from vlminterp.studies.collect import add_arguments, run; "
        "p = argparse.ArgumentParser(); add_arguments(p); sys.exit(run(p.parse_args(sys.argv[1:])))"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", code, "--out", str(cut), *common], env=env, cwd=REPO)
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if (cut / "shards").is_dir() and visible_files_are_whole(cut / "shards") >= 3:
                break
            time.sleep(0.02)
        assert proc.poll() is None, "the collection finished before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    finished = visible_files_are_whole(cut / "shards")
    assert 3 <= finished < 12
    assert not json.loads((cut / "manifest.json").read_text())["complete"]

    assert run(parse(["--out", str(cut), "--resume", *common])) == 0
    assert run(parse(["--out", str(tmp_path / "full"), *common])) == 0
    resumed, full = ActivationStore.load(cut, checksum=True), ActivationStore.load(tmp_path / "full")
    for name in sorted(p.name for p in (tmp_path / "full" / "shards").iterdir()):
        assert (cut / "shards" / name).read_bytes() == (tmp_path / "full" / "shards" / name).read_bytes(), (
            name
        )
    for cond in ("image", "blank", "text_only"):
        assert torch.equal(resumed.mean(cond), full.mean(cond)) and torch.equal(
            resumed.cov(cond), full.cov(cond)
        )
