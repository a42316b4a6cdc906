"""The merge logic of data-parallel runs, without processes: part files, shared caches, rank 0's step.

The runs themselves (two gloo processes vs one) are in ``tests/integration/test_parallel_runs.py``.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from vlminterp import parallel
from vlminterp.analysis import ConditionActivations
from vlminterp.eval.runner import merge_parts, read_responses
from vlminterp.parallel import part_paths
from vlminterp.studies.representation_gap import merged


def _row(sample_id: str, method: str = "none") -> dict:
    return {
        "id": sample_id,
        "dataset": "d",
        "condition": "image",
        "method": method,
        "response": sample_id * 2,
    }


def _write(path, rows) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_parts_are_read_then_merged_in_sample_order(tmp_path):
    path = tmp_path / "responses.jsonl"
    _write(path, [_row("a")])
    # a strided shard of [a, b, c, d, e] over 2 ranks, one batch each written before the merge
    _write(tmp_path / "responses.rank0.jsonl", [_row("c"), _row("e")])
    _write(tmp_path / "responses.rank1.jsonl", [_row("b"), _row("d"), _row("a")])  # a: already in the file
    (tmp_path / "responses.rankx.jsonl").write_text("not a part\n")
    assert [p.name for p in part_paths(path)] == ["responses.rank0.jsonl", "responses.rank1.jsonl"]
    assert [r["id"] for r in read_responses(path)] == ["a", "c", "e", "b", "d"]
    before = path.read_text()
    assert merge_parts(path, order=list("abcde")) == 4
    assert path.read_text().startswith(before)  # finished lines are kept as they were
    assert [r["id"] for r in read_responses(path)] == list("abcde")
    assert part_paths(path) == [] and (tmp_path / "responses.rankx.jsonl").is_file()


def test_rows_of_other_runs_are_kept_apart(tmp_path):
    path = tmp_path / "responses.jsonl"
    _write(tmp_path / "responses.rank0.jsonl", [_row("a", "m1"), _row("a", "m2")])
    assert merge_parts(path) == 2 and [r["method"] for r in read_responses(path)] == ["m1", "m2"]
    assert merge_parts(path) == 0  # no parts: the file is left alone


def test_a_bad_part_line_names_its_file(tmp_path):
    (tmp_path / "responses.rank1.jsonl").write_text('{"id": ')
    with pytest.raises(ValueError, match=r"responses.rank1.jsonl, line 1: not valid JSON"):
        read_responses(tmp_path / "responses.jsonl")


def test_json_cache_in_one_process_is_the_file_itself(tmp_path):
    with parallel.json_cache(tmp_path / "c.json") as mine:
        assert mine == tmp_path / "c.json"
    with parallel.json_cache(None) as mine:
        assert mine is None


def test_on_main_hands_rank_0s_error_to_the_other_ranks(monkeypatch):
    calls = []
    monkeypatch.setattr(parallel, "rank_world", lambda: (1, 2))
    monkeypatch.setattr(parallel, "broadcast", lambda obj: (None, ValueError("--out holds another run")))
    with pytest.raises(ValueError, match="--out holds another run"):
        parallel.on_main(lambda: calls.append("rank 1 ran it"))
    assert calls == []  # only rank 0 runs the step
    monkeypatch.setattr(parallel, "broadcast", lambda obj: ("checked", None))
    assert parallel.on_main(lambda: calls.append("rank 1 ran it")) == "checked" and calls == []


def test_on_main_on_rank_0_runs_the_step_and_raises_its_error(monkeypatch):
    monkeypatch.setattr(parallel, "rank_world", lambda: (0, 2))
    monkeypatch.setattr(parallel, "broadcast", lambda obj: obj)
    assert parallel.on_main(lambda: 7) == 7

    def refuse():
        raise FileExistsError("used")

    with pytest.raises(FileExistsError, match="used"):
        parallel.on_main(refuse)


def test_gathered_activations_are_put_back_in_sample_order():
    rng = np.random.default_rng(0)
    ids = [f"s{i}" for i in range(5)]
    labels = ["harmful", "benign", "harmful", "benign", "benign"]
    full = {c: rng.normal(size=(5, 2, 3)) for c in ("image", "text_only")}

    def part(rank: int) -> ConditionActivations:  # what rank `rank` of 2 collects: every 2nd sample
        return ConditionActivations(
            {c: x[rank::2] for c, x in full.items()},
            {c: ids[rank::2] for c in full},
            {c: labels[rank::2] for c in full},
            layers=[1, 3],
            model="m",
            dataset="d",
        )

    got = merged([part(0), part(1)], ids)
    for c, x in full.items():
        np.testing.assert_array_equal(got.x[c], x)
        assert list(got.sample_ids[c]) == ids and list(got.labels[c]) == labels
    assert list(got.layers) == [1, 3] and (got.model, got.dataset) == ("m", "d")


def test_device_map_with_several_processes_is_refused(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match="--device-map 'auto' places one model over all visible GPUs"):
        parallel.init_from_env("cuda", "auto")
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert parallel.init_from_env("cpu", "auto") == "cpu"  # one process: placement is the loader's
