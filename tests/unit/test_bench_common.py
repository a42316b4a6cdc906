"""benchmarks/_common.py: the shared options (sizes, device, llava-7b shapes) and the JSON line every
benchmark ends with (ratios, absolute ms, versions, threads, malloc settings), also appended to --record."""

from __future__ import annotations

import json
import sys
from importlib.metadata import version
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import _common  # noqa: E402


def test_sizes_resolve_from_quick_and_shapes():
    assert _common.parse_args("", []).shapes == "mid"
    assert _common.parse_args("", []).sizes["d_model"] == 768
    quick = _common.parse_args("", ["--quick"])
    assert (quick.shapes, quick.quick, quick.sizes["d_model"]) == ("quick", True, 256)
    big = _common.parse_args("", ["--shapes", "llava-7b", "--device", "cuda"])
    assert (big.sizes["d_model"], big.sizes["n_layers"], big.sizes["d_mlp"], big.sizes["image_size"]) == (
        4096, 32, 11008, 336,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("argv", "match"),
    [(["--shapes", "llava-7b"], "add --device cuda"), (["--quick", "--shapes", "mid"], "contradicts")],
)
def test_contradicting_options_are_refused(argv, match, capsys):
    with pytest.raises(SystemExit):
        _common.parse_args("", argv)
    assert match in capsys.readouterr().err


def test_emit_prints_and_records_ratios_ms_versions_threads_malloc(tmp_path, capsys):
    record = tmp_path / "results" / "bench_x.jsonl"
    args = _common.parse_args("", ["--quick", "--record", str(record)])
    for _ in range(2):
        _common.emit(
            args, "bench_x", {"a_vs_hf": 1.23456}, {"raw_hf": 0.5, "a": 0.61728}, {"a_vs_hf": 1.1}, {}
        )
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    lines = [json.loads(x) for x in record.read_text().splitlines()]
    assert len(lines) == 2 and lines[-1] == printed
    assert printed["ratios"] == {"a_vs_hf": 1.2346} and printed["ms"] == {"raw_hf": 500.0, "a": 617.28}
    config = printed["config"]
    assert config["versions"]["torch"] == version("torch") and set(config["versions"]) == {
        "torch", "transformers", "transformer-lens", "vlminterp",
    }  # fmt: skip
    assert config["threads"] == torch.get_num_threads() and config["device"] == "cpu"
    assert set(config["malloc"]) == {"env", "mallopt"} and config["shapes"] == "quick"
    assert config["d_model"] == 256 and "load_avg_1m" in config and config["wall_s"] >= 0


def test_interleaved_medians_times_round_robin():
    calls = []
    med = _common.interleaved_medians({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, 3)
    assert calls == ["a", "b"] * 4 and set(med) == {"a", "b"}
    calls.clear()
    _common.interleaved_medians({"a": lambda: calls.append("a")}, 2, warmup=False)
    assert calls == ["a", "a"]
