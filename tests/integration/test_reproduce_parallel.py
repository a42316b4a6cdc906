"""``vlminterp reproduce`` under torch.distributed: two gloo CPU processes write the one-process tables.

The reference is a one-process run of the same command line in this process; the two-process run
is spawned (``torch.multiprocessing``, as a launcher would start it). Marked slow: each spawned
process imports transformers and TransformerLens and runs both protocols on the shipped organism.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from tests.conftest import SHARED_DATA
from vlminterp.results import read_results

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"no benchmark copies at {SHARED_DATA}"),
]

ARGS = {
    "cmrm": ["--alphas", "1", "--anchor-limit", "4"],
    "shiftdc": ["--direction-limit", "4"],
}


def _run(paper: str, out: Path) -> None:
    from vlminterp.cli.reproduce import main

    argv = [paper, "--model", "organism", "--data-root", str(SHARED_DATA), "--out", str(out), "--limit", "3",
            "--max-new-tokens", "8", "--batch-size", "2", "--no-progress", *ARGS[paper]]  # fmt: skip
    assert main(argv) == 0


def worker(rank: int, world: int, tmp: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{tmp}/rendezvous", rank=rank, world_size=world)
    try:
        for paper in ARGS:
            _run(paper, Path(tmp) / "two" / paper)
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("reproduce-parallel")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with pytest.MonkeyPatch.context() as mp_env:
            mp_env.setenv("VLMINTERP_CACHE", str(tmp / "cache"))
            mp.spawn(worker, args=(2, str(tmp)), nprocs=2, join=True)
            for paper in ARGS:
                _run(paper, tmp / "one" / paper)
    finally:
        torch.set_num_threads(threads)
    return tmp / "one", tmp / "two"


def _responses(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "responses.jsonl").read_text().splitlines()]


def _timeless(out: Path) -> list[dict]:
    return [r for r in read_results(out, "tables") if r["metric"] != "seconds_per_response"]


@pytest.mark.parametrize("paper", list(ARGS))
def test_two_processes_write_the_one_process_tables(paper, runs):
    one, two = runs
    assert _responses(two / paper) == _responses(one / paper)  # same rows, in sample order
    assert _timeless(two / paper) == _timeless(one / paper)
    assert (two / paper / "tables.md").read_text().split("### Seconds")[0] == (
        (one / paper / "tables.md").read_text().split("### Seconds")[0]
    )
    assert not list((two / paper).glob("*.rank*"))  # every part merged and removed
