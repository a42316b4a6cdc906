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


def test_dtype_defaults_to_the_shapes_and_can_be_set():
    assert _common.parse_args("", ["--quick"]).dtype == torch.float32
    assert _common.parse_args("", ["--shapes", "llava-7b", "--device", "cuda"]).dtype == torch.float16
    assert _common.parse_args("", ["--quick", "--dtype", "float16"]).dtype == torch.float16
    assert _common.parse_args("", ["--dtype", "bfloat16"]).dtype == torch.bfloat16


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
    assert config["dtype"] == "float32"


def test_interleaved_medians_times_round_robin():
    calls = []
    med = _common.interleaved_medians({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, 3)
    assert calls == ["a", "b"] * 4 and set(med) == {"a", "b"}
    calls.clear()
    _common.interleaved_medians({"a": lambda: calls.append("a")}, 2, warmup=False)
    assert calls == ["a", "a"]


def test_emit_divides_ms_by_tokens(capsys):
    args = _common.parse_args("", ["--quick"])
    line = _common.emit(args, "bench_x", {}, {"raw_hf": 0.5, "a": 0.25}, {}, {}, tokens=1000)
    assert line["ms_per_token"] == {"raw_hf": 0.5, "a": 0.25} and line["config"]["tokens"] == 1000


def test_policy_env_strips_malloc_variables_and_sets_the_opt_out():
    base = {"PATH": "/bin", "MALLOC_TOP_PAD_": "1", "VLMINTERP_MALLOC": "0"}
    assert _common.policy_env("library", base) == {"PATH": "/bin"}
    assert _common.policy_env("glibc", base) == {"PATH": "/bin", "VLMINTERP_MALLOC": "0"}
    assert _common.policy_env("makefile", base) == {"PATH": "/bin", **_common.MAKEFILE_ENV}
    with pytest.raises(ValueError, match="Unknown malloc policy 'jemalloc'"):
        _common.policy_env("jemalloc", base)


def test_run_policies_measures_in_one_process_per_malloc_setting(tmp_path, monkeypatch, capsys):
    """Each child runs with --malloc current and no --record; the merged line is the library's, plus
    the glibc child's figures; each child's malloc settings are those of its own process."""
    script = tmp_path / "bench_fake.py"
    script.write_text(
        "import os, sys\n"
        f"sys.path.insert(0, {str(Path(_common.__file__).parent)!r})\n"
        "import vlminterp  # applies the mallopt tuning unless VLMINTERP_MALLOC=0\n"
        "from _common import emit, parse_args\n"
        "args = parse_args('', sys.argv[1:])\n"
        "assert args.malloc == 'current' and args.record is None, sys.argv\n"
        "glibc = os.environ.get('VLMINTERP_MALLOC') == '0'\n"
        "print('a table line')\n"
        "emit(args, 'bench_fake', {'a_vs_hf': 2.0 if glibc else 1.0}, {'a': 0.1}, {'a_vs_hf': 1.5}, {})\n"
    )
    monkeypatch.setenv("MALLOC_TOP_PAD_", "1")  # the user's environment: stripped in both children
    record = tmp_path / "r.jsonl"
    args = _common.parse_args("", ["--quick", "--record", str(record)])
    line = _common.run_policies(args, script, ["--quick", "--record", str(record), "--malloc", "both"])
    assert json.loads(record.read_text()) == line and "a table line" in capsys.readouterr().out
    assert line["ratios"] == {"a_vs_hf": 1.0} and line["glibc"]["ratios"] == {"a_vs_hf": 2.0}
    assert line["config"]["malloc"]["env"]["MALLOC_TOP_PAD_"] is None
    assert line["config"]["malloc"]["mallopt"] and line["glibc"]["malloc"]["mallopt"] == {}


def test_without_drops_valued_options():
    argv = ["--quick", "--record", "r.jsonl", "--malloc=both", "--repeats", "2"]
    assert _common._without(argv, ("--record", "--malloc")) == ["--quick", "--repeats", "2"]


def test_a_checkpoint_folder_is_built_once_then_reused_and_never_mistaken(tmp_path, monkeypatch):
    import vlminterp.testing

    folder = tmp_path / "ckpt"
    args = _common.parse_args("", ["--quick", "--checkpoint", str(folder)])
    built = []
    real = vlminterp.testing.build_tiny_vlm

    def counting(*a, **k):
        built.append(a)
        return real(*a, **k)

    monkeypatch.setattr(vlminterp.testing, "build_tiny_vlm", counting)
    path = _common.checkpoint_dir(args, folder)
    assert path.parent == folder and path.name.startswith("bench-llava-quick-")
    assert (path / "config.json").is_file()
    assert _common.checkpoint_dir(args, folder) == path and len(built) == 1  # read, not rebuilt
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"] and list(folder.iterdir()) == [path]

    def fake(name, out, **sizes):  # other shapes build beside it (bench_collect --quick: 112 px)
        (Path(out) / "config.json").write_text(json.dumps(sizes))

    monkeypatch.setattr(vlminterp.testing, "build_tiny_vlm", fake)
    small = _common.parse_args("", ["--quick"])
    small.sizes = {**small.sizes, "image_size": 112}
    other = _common.checkpoint_dir(small, folder)
    assert other != path and sorted(folder.iterdir()) == sorted([path, other])
    assert _common.checkpoint_dir(args, folder) == path  # still there, not rebuilt

    (path / "bench_shapes.json").write_text('{"shapes": "mid"}')
    with pytest.raises(ValueError, match="other shapes"):
        _common.checkpoint_dir(args, folder)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("a user's file")
    with pytest.raises(ValueError, match="holds files of its own \\(notes.txt\\)"):
        _common.checkpoint_dir(args, tmp_path / "mine")

    def failing(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(vlminterp.testing, "build_tiny_vlm", failing)
    with pytest.raises(KeyboardInterrupt):
        _common.checkpoint_dir(args, tmp_path / "cut")
    assert list((tmp_path / "cut").iterdir()) == []  # a rerun starts clean
