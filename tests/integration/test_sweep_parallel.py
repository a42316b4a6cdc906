"""Data-parallel sweeps: two gloo processes give a one-process run's files; part files merge and resume.

The merge and the resume of a killed data-parallel run are tested without processes (part files
written as the ranks write them); the two-process run of every study is marked slow (each spawned
process imports transformers and TransformerLens).
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch.multiprocessing as mp

from vlminterp import viz
from vlminterp.interventions import HeadAblation
from vlminterp.parallel import part_path, part_paths, shard
from vlminterp.sweeps import KLToUnsteered, RefusalScore, sweep
from vlminterp.sweeps.rows_file import append_rows

GRID = {"layer": [0, 1], "head": [0, 1, 2, 3]}
METRICS = [RefusalScore(), KLToUnsteered()]
STUDIES = {
    "layer": ["rows_cmrm.jsonl", "rows_shiftdc.jsonl"],
    "head": ["rows_ablation.jsonl", "rows_patching.jsonl"],
    "alpha-layer": ["rows.jsonl"],
}


def _study_argv(study, out):
    return ["--study", study, "--model", "tiny", "--out", str(out), "--n-harmful", "2", "--n-benign", "1",
            "--no-progress", "--max-rows", "6", "--alphas", "0,1"]  # fmt: skip


def _lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def _same_rows(got, expected):
    assert [{k: v for k, v in r.items() if k != "value"} for r in got] == [
        {k: v for k, v in r.items() if k != "value"} for r in expected
    ]
    for g, e in zip(got, expected, strict=True):
        assert g["value"] == pytest.approx(e["value"], abs=1e-6, nan_ok=True)


def test_parts_of_a_killed_two_rank_run_are_merged_and_not_recomputed(tiny_model, samples, tmp_path):
    single = tmp_path / "single" / "rows.jsonl"
    expected = sweep(tiny_model, samples, lambda layer, head: HeadAblation([(layer, head)]), GRID, METRICS,
                     single, progress=False, max_rows=8)  # fmt: skip
    rows = _lines(single)
    # What two ranks had appended when killed: rank 0 its first two groups (of 2 points), rank 1 its first
    # and a torn line.
    by_point: dict[str, list] = {}
    for r in rows:
        by_point.setdefault(r["point"], []).append(r)
    points = list(by_point)
    groups = [points[i : i + 2] for i in range(0, len(points), 2)]
    resumed = tmp_path / "resumed" / "rows.jsonl"
    resumed.parent.mkdir()
    shutil.copy(single.with_name("rows.jsonl.manifest.json"), resumed.with_name("rows.jsonl.manifest.json"))
    finished = []
    for rank, n_done in ((0, 2), (1, 1)):
        for group in shard(groups, rank, 2)[:n_done]:
            append_rows(part_path(resumed, rank), [r for p in group for r in by_point[p]])
            finished += group
    with open(part_path(resumed, 1), "a") as f:
        f.write('{"point": "torn')
    made = []

    def make(layer, head):
        made.append({"layer": layer, "head": head})
        return HeadAblation([(layer, head)])

    got = sweep(tiny_model, samples, make, GRID, METRICS, resumed, progress=False, max_rows=8)
    assert sorted(json.dumps(p, sort_keys=True) for p in made) == sorted(set(points) - set(finished))
    assert not part_paths(resumed)
    _same_rows(_lines(resumed), rows)
    _same_rows(got, expected)


def test_device_map_under_several_processes_is_refused_before_anything_is_written(
    tmp_path, monkeypatch, capsys
):
    from vlminterp.cli import sweep as sweep_cli

    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(SystemExit) as exit_info:
        sweep_cli.main([*_study_argv("head", tmp_path / "out"), "--device-map", "auto"])
    assert exit_info.value.code == 2 and "--device-map 'auto'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def _worker(rank, world, tmp):
    import torch
    import torch.distributed as dist

    from vlminterp.cli import sweep as sweep_cli

    torch.set_num_threads(1)
    viz.export.png_unavailable_reason = lambda: "disabled in tests"
    from vlminterp.sweeps import engine

    groups = []
    engine.shard = lambda items: groups.append(len(shard(items))) or shard(items)  # count this rank's share
    dist.init_process_group("gloo", init_method=f"file://{tmp}/rendezvous", rank=rank, world_size=world)
    try:
        for study in STUDIES:
            assert sweep_cli.main(_study_argv(study, f"{tmp}/parallel/{study}")) == 0
    finally:
        dist.destroy_process_group()
    with open(f"{tmp}/groups{rank}.json", "w") as f:
        json.dump(groups, f)


@pytest.mark.slow
def test_two_gloo_processes_write_the_one_process_files(tmp_path, monkeypatch):
    from vlminterp.cli import sweep as sweep_cli

    mp.spawn(_worker, args=(2, str(tmp_path)), nprocs=2, join=True)
    shares = [json.loads((tmp_path / f"groups{rank}.json").read_text()) for rank in (0, 1)]
    assert sum(shares[1]) > 0 and all(
        a - b in (0, 1) for a, b in zip(*shares, strict=True)
    )  # both ranks work
    monkeypatch.setattr(viz.export, "png_unavailable_reason", lambda: "disabled in tests")
    for study, files in STUDIES.items():
        sweep_cli.main(_study_argv(study, tmp_path / "single" / study))
        single, parallel = tmp_path / "single" / study, tmp_path / "parallel" / study
        for name in files:
            _same_rows(_lines(parallel / name), _lines(single / name))
        _same_rows(
            json.loads((parallel / "results.json").read_text()),
            json.loads((single / "results.json").read_text()),
        )
        assert not list(parallel.glob("*.rank*"))
