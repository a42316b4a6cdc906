"""``eval``, ``steer`` and ``gap`` under torch.distributed: two gloo CPU processes write the one-process files.

The references are one-process runs of the same command lines in this process; the two-process
runs are spawned (``torch.multiprocessing``, as the launcher would start them) and join the group
themselves. Marked slow: the spawned processes import transformers and TransformerLens and run
every command on the shipped organism (about 2 minutes in all on the shared 2-core machine). The
merge logic itself is tested without processes in ``tests/unit/test_parallel_merge.py``.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file

from vlminterp.io import read_json

COMMON = ["--model", "organism", "--eval", "organism:test", "--judge", "organism", "--limit", "4"]
FAST = ["--max-new-tokens", "10", "--batch-size", "2", "--no-progress"]
EVAL = ["--model", "organism", "--dataset", "organism", "--condition", "image", "--judge", "organism",
        "--limit", "4", "--max-new-tokens", "10", "--batch-size", "2"]  # fmt: skip
CMRM = ["cmrm", *COMMON, "--anchor", "organism:train", *FAST]
SHIFTDC = ["shiftdc", *COMMON, "--direction", "fit:organism:train", "--caption-source", "self", *FAST]
GAP = [
    "--model",
    "organism",
    "--dataset",
    "organism",
    "--limit",
    "4",
    "--n-splits",
    "2",
    "--caption-tokens",
    "8",
]
JOBS = ("eval", "cmrm", "shiftdc", "gap")
#: The crash: every rank stops at the start of its 8th generate call (image, text_only and caption
#: baselines are 2 batches each per rank; the 8th is the second batch of IMAGE + CMRM).
CRASH_AT = 8


def run_job(job: str, out: Path) -> None:
    """One command line, into ``out``."""
    from vlminterp.cli.steer import main as steer
    from vlminterp.eval.pipeline import eval_main
    from vlminterp.studies.representation_gap import main as gap

    if job == "eval":
        assert eval_main([*EVAL, "--out", str(out)]) == 0
    elif job in ("cmrm", "shiftdc", "crash"):
        assert steer([*(SHIFTDC if job == "shiftdc" else CMRM), "--out", str(out)]) == 0
    else:
        gap([*GAP, "--out", str(out)])


def log_calls(tmp: str, rank: int, crash_at: int | None) -> None:
    """Log every finished generate call (sample, condition, steered) and every judge call of this rank."""
    from vlminterp import HookedVLM
    from vlminterp.eval.judges import PredicateJudge

    generate, judge, calls = HookedVLM.generate, PredicateJudge.judge, []

    def logged_generate(self, batch, *args, **kwargs):
        calls.append(1)
        if len(calls) == crash_at:
            torch.distributed.barrier()  # every rank stops here, none in the middle of a batch
            raise RuntimeError("simulated crash")
        out = generate(self, batch, *args, **kwargs)
        steered = self.count_hooks() > 0
        with open(f"{tmp}/generated.rank{rank}.jsonl", "a") as f:
            for sample_id, cond in zip(batch.sample_ids, batch.conditions, strict=True):
                f.write(json.dumps([sample_id, cond.value, steered]) + "\n")
        return out

    def logged_judge(self, *args, **kwargs):
        Path(f"{tmp}/judged.rank{rank}").touch()
        return judge(self, *args, **kwargs)

    HookedVLM.generate, PredicateJudge.judge = logged_generate, logged_judge


def worker(rank: int, world: int, tmp: str, jobs: tuple[str, ...], crash_at: int | None) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    name = "crashed" if crash_at else "-".join(jobs)
    dist.init_process_group(
        "gloo", init_method=f"file://{tmp}/rendezvous-{name}", rank=rank, world_size=world
    )
    try:
        log_calls(tmp, rank, crash_at)
        for job in jobs:
            run_job(job, Path(tmp) / "two" / job)
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """``(one-process outputs, two-process outputs, tmp)``: every job, and the crashed and resumed cmrm."""
    tmp = tmp_path_factory.mktemp("parallel")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the workers (thread counts may change float reductions)
    try:
        mp.spawn(worker, args=(2, str(tmp), JOBS, None), nprocs=2, join=True)
        _forget_calls(tmp)
        with pytest.raises(mp.ProcessRaisedException, match="simulated crash"):
            mp.spawn(worker, args=(2, str(tmp), ("crash",), CRASH_AT), nprocs=2, join=True)
        crashed = {p.name: p.read_text() for p in (tmp / "two" / "crash").glob("responses*.jsonl")}
        first = {rank: _generated(tmp, rank) for rank in (0, 1)}
        _forget_calls(tmp)
        mp.spawn(worker, args=(2, str(tmp), ("crash",), None), nprocs=2, join=True)
        for job in JOBS:
            run_job(job, tmp / "one" / job)
    finally:
        torch.set_num_threads(threads)
    return tmp / "one", tmp / "two", {"tmp": tmp, "crashed": crashed, "first": first}


def _forget_calls(tmp: Path) -> None:
    for rank in (0, 1):
        (tmp / f"generated.rank{rank}.jsonl").unlink(missing_ok=True)


def _generated(tmp: Path, rank: int) -> list[tuple]:
    path = tmp / f"generated.rank{rank}.jsonl"
    return [tuple(json.loads(line)) for line in path.read_text().splitlines()] if path.is_file() else []


def _responses(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "responses.jsonl").read_text().splitlines()]


def _timeless(rows: list[dict]) -> list[dict]:
    return [r for r in rows if r["metric"] != "seconds_per_response"]


def _assert_rows_close(got: list[dict], want: list[dict], rel: float = 1e-5) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert g.keys() == w.keys()
        for key, value in w.items():
            if isinstance(value, float):
                assert g[key] == pytest.approx(value, rel=rel, abs=1e-6), (key, g, w)
            else:
                assert g[key] == value, (key, g, w)


@pytest.mark.slow
def test_eval_two_processes_write_the_one_process_files(runs):
    one, two, info = runs
    assert _responses(two / "eval") == _responses(one / "eval")  # same rows, in sample order
    assert read_json(two / "eval" / "metrics.json") == read_json(one / "eval" / "metrics.json")
    assert (two / "eval" / "verdicts.jsonl").read_text() == (one / "eval" / "verdicts.jsonl").read_text()
    assert not list((two / "eval").glob("responses.rank*"))  # the parts were merged and removed
    # judged once, by rank 0 (every command of the run)
    assert (info["tmp"] / "judged.rank0").is_file() and not (info["tmp"] / "judged.rank1").exists()


@pytest.mark.slow
def test_steer_cmrm_two_processes_equal_one(runs):
    one, two, _ = runs
    assert _responses(two / "cmrm") == _responses(one / "cmrm")
    got, want = read_json(two / "cmrm" / "table.json"), read_json(one / "cmrm" / "table.json")
    assert _timeless(got) == _timeless(want)
    # device-seconds per response: one row per generated stage, over the same responses
    timing = [(r["condition"], r["method"], r["n"]) for r in got if r["metric"] == "seconds_per_response"]
    assert timing == [
        (r["condition"], r["method"], r["n"]) for r in want if r["metric"] == "seconds_per_response"
    ]
    assert all(r["value"] > 0 for r in got if r["metric"] == "seconds_per_response")
    # the dataset-level vectors: all-reduced statistics of the two shards vs one sequential pass
    a, b = (
        load_file(two / "cmrm" / "cmrm_vectors.safetensors"),
        load_file(one / "cmrm" / "cmrm_vectors.safetensors"),
    )
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_steer_shiftdc_two_processes_equal_one(runs):
    one, two, _ = runs
    assert _responses(two / "shiftdc") == _responses(one / "shiftdc")
    assert _timeless(read_json(two / "shiftdc" / "table.json")) == _timeless(
        read_json(one / "shiftdc" / "table.json")
    )
    # per-sample distortion rows, gathered in sample order; batches differ, so float rounding only
    _assert_rows_close(read_json(two / "shiftdc" / "shift.json"), read_json(one / "shiftdc" / "shift.json"))
    # the self-captions each rank made for its shard, merged into one cache
    assert read_json(two / "shiftdc" / "captions.json") == read_json(one / "shiftdc" / "captions.json")
    assert not list((two / "shiftdc").glob("captions.rank*"))


@pytest.mark.slow
def test_gap_two_processes_write_the_one_process_results(runs):
    one, two, _ = runs
    _assert_rows_close(
        read_json(two / "gap" / "results.json"), read_json(one / "gap" / "results.json"), rel=1e-4
    )
    assert sorted(p.name for p in (two / "gap").iterdir()) == sorted(p.name for p in (one / "gap").iterdir())


@pytest.mark.slow
def test_killed_run_resumes_without_generating_anything_twice(runs):
    one, two, info = runs
    # the crash left the first three stages merged and one finished batch per rank in its part file
    assert set(info["crashed"]) == {"responses.jsonl", "responses.rank0.jsonl", "responses.rank1.jsonl"}
    assert all(len(info["crashed"][f"responses.rank{r}.jsonl"].splitlines()) == 2 for r in (0, 1))
    calls = [c for rank in (0, 1) for c in info["first"][rank] + _generated(info["tmp"], rank)]
    twice = [c for c, n in Counter(calls).items() if n > 1]
    assert not twice and len(calls) == len(_responses(one / "cmrm"))
    key = lambda r: (r["id"], r["condition"], r["method"])  # noqa: E731
    assert sorted(_responses(two / "crash"), key=key) == sorted(_responses(one / "cmrm"), key=key)
    got, want = read_json(two / "crash" / "table.json"), read_json(one / "cmrm" / "table.json")
    assert _timeless(got) == _timeless(want)
    assert not list((two / "crash").glob("responses.rank*"))
