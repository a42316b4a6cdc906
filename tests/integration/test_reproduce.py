"""``vlminterp reproduce cmrm|shiftdc`` end to end on the real files in shared/data.

The default suite runs both protocols small on the organism (limit 2, one alpha, 8 tokens): every
table is written in the paper's layout with the published numbers beside, VLSafe (absent here) is
skipped with its download line, a killed run resumes to the same table without generating anything
twice, and bad arguments exit 2 before anything is written. The slow tests are the acceptance smoke
runs: ``--limit 8`` on tiny llava and the organism, each under 3 minutes on 2 cores.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.conftest import SHARED_DATA
from vlminterp.cli import reproduce
from vlminterp.reproduce.engine import Protocol
from vlminterp.results import read_results

# make test's --dist loadscope runs the module on one worker: its two runs (module fixture) once.
pytestmark = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"no benchmark copies at {SHARED_DATA}")

SMALL = {
    "cmrm": ["--alphas", "1", "--anchor-limit", "4"],
    "shiftdc": ["--direction-limit", "4"],
}


@pytest.fixture(scope="module", autouse=True)
def _generated_images(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VLMINTERP_CACHE", str(tmp_path_factory.mktemp("vlminterp-cache")))
        yield


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, tuple[Path, str]]:
    """One small run of each protocol on the organism: its folder and what it printed."""
    import contextlib
    import io

    done = {}
    generate = Protocol.generate

    def recorded(self, b, cell, intervention=None):
        """Each cell generated, with the captions in captions.json before and after it."""
        path = self.run.out / "captions.json"
        before = len(json.loads(path.read_text())) if path.is_file() else 0
        generate(self, b, cell, intervention)
        after = len(json.loads(path.read_text())) if path.is_file() else 0
        CELLS.append((b.name, cell.method, before, after))

    for paper in ("cmrm", "shiftdc"):
        out = tmp_path_factory.mktemp("reproduce") / paper
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed), pytest.MonkeyPatch.context() as mp:
            mp.setattr(Protocol, "generate", recorded)
            assert reproduce.main(_argv(paper, out)) == 0
        done[paper] = (out, printed.getvalue())
    return done


#: (dataset, method, captions before, captions after) of every cell the ``runs`` fixture generated.
CELLS: list[tuple[str, str, int, int]] = []


def test_shiftdc_cells_make_their_self_captions_inside_their_timed_generation(runs):
    """The paper's ShiftDC time includes captioning, so the timed cell must make the captions."""
    shiftdc = [(name, before, after) for name, method, before, after in CELLS if method == "shiftdc"]
    assert shiftdc and all(after > before for _, before, after in shiftdc)
    assert all(before == after for _, method, before, after in CELLS if method != "shiftdc")


def _argv(paper: str, out: Path, model: str = "organism", limit: int = 2, tokens: int = 8) -> list[str]:
    return [paper, "--model", model, "--data-root", str(SHARED_DATA), "--out", str(out), "--limit", str(limit),
            "--max-new-tokens", str(tokens), "--no-progress", *SMALL[paper]]  # fmt: skip


def _responses(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "responses.jsonl").read_text().splitlines()]


def _values(out: Path) -> dict[tuple, float | None]:
    """Every measured number of the table but the timings, keyed by what it measures."""
    keys = ("benchmark", "subset", "condition", "method", "alpha", "metric")
    return {
        tuple(r.get(k) for k in keys): r["value"]
        for r in read_results(out, "tables")
        if r["metric"] != "seconds_per_response"
    }


@pytest.mark.parametrize("paper", ["cmrm", "shiftdc"])
def test_reproduce_writes_the_papers_tables(paper, runs):
    out, printed = runs[paper]
    md = (out / "tables.md").read_text()
    rows = read_results(out, "tables")
    responses = _responses(out)
    # nothing generated twice, and every response of the grid is there
    keys = Counter((r["id"], r["dataset"], r["condition"], r["method"]) for r in responses)
    assert max(keys.values()) == 1
    if paper == "cmrm":
        assert "skipped vlsafe: no folder" in printed and "Download VLSafe" in printed
        assert json.loads((out / "skipped.json").read_text())[0].startswith("skipped vlsafe")
        # the published VLSafe numbers sit in the table although VLSafe was not measured here
        assert "| image | - (61.53) |" in md and "| image + CMRM sample (α=1) | - (3.15) |" in md
        cells = {(r["dataset"], r["condition"], r["method"]) for r in responses}
        assert ("jailbreakllms", "text_only", "none") in cells
        assert ("jailbreakllms", "image", "cmrm_dataset(alpha=1)") in cells
        assert ("scienceqa", "image", "cmrm_sample(alpha=1)") in cells
        assert len(responses) == 2 * 4 + 2 * 3 + 2 * 3  # jailbreakllms 4 cells, scienceqa and llava-bench 3
        unsafe = [r for r in rows if r["benchmark"] == "jailbreakllms" and r["metric"] == "unsafe_rate"]
        assert {(r["condition"], r["method"]) for r in unsafe} >= {
            ("image", "none"),
            ("image", "cmrm_sample"),
        }
        assert (out / "cmrm_vectors.safetensors").is_file()
    else:
        assert "| average | " in md and "(45.40)" in md and "(43.60)" in md  # Table 1 averages
        assert "| ShiftDC | " in md and "(13.20)" in md  # FigStep, Table 4
        datasets = Counter(r["dataset"] for r in responses)
        assert set(datasets) == {"mm-safetybench:SD", "mm-safetybench:TYPO", "mm-safetybench:SD_TYPO",
                                 "figstep", "mme", "mm-vet"}  # fmt: skip
        asr = {r["subset"] for r in rows if r["metric"] == "asr" and r["value"] is not None}
        assert {"01-Illegal_Activitiy/SD", "all/SD", "all/TYPO", "all/SD_TYPO", "all"} <= asr
        timing = [r for r in rows if r["benchmark"] == "timing" and r["value"] is not None]
        assert {r["method"] for r in timing} == {"none", "shiftdc"}
        assert (out / "safety_direction.safetensors").is_file() and (out / "captions.json").is_file()
        assert "not graded; pass --grader" in md  # MM-Vet needs an LLM grader
    assert all(r["model"] == "organism" for r in rows)
    figures = ["vs_paper.html"] + (["alpha_sweep.html"] if paper == "cmrm" else [])
    assert all((out / f).is_file() for f in figures)


def _judged_by_hand(out: Path, benchmark_prefix: str) -> dict[tuple, float]:
    """Unsafe shares recomputed from verdicts.jsonl (independent of the table code), per dataset/condition/method."""
    groups: dict[tuple, list[bool]] = {}
    for line in (out / "verdicts.jsonl").read_text().splitlines():
        v = json.loads(line)
        if v["dataset"].startswith(benchmark_prefix):
            groups.setdefault((v["dataset"], v["condition"], v["method"]), []).append(bool(v["unsafe"]))
    return {k: sum(v) / len(v) for k, v in groups.items()}


def test_mm_safetybench_averages_are_the_share_of_unsafe_verdicts(runs):
    out = runs["shiftdc"][0]
    by_hand = _judged_by_hand(out, "mm-safetybench")
    rows = read_results(out, "tables")
    for (dataset, condition, method), share in by_hand.items():
        variant = dataset.split(":")[1]
        (row,) = [r for r in rows if r["metric"] == "asr" and r["subset"] == f"all/{variant}"
                  and r["condition"] == condition and r["method"] == method.split("(")[0]]  # fmt: skip
        assert row["value"] == pytest.approx(share)
        assert row["published"] is not None  # Table 1's average for that column


def test_killed_run_resumes_to_the_same_table(runs, tmp_path, monkeypatch):
    whole, killed = runs["cmrm"][0], tmp_path / "killed"

    real = Protocol.generate
    calls = {"n": 0}

    def dies_after_three(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 3:
            raise KeyboardInterrupt("killed")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Protocol, "generate", dies_after_three)
    with pytest.raises(KeyboardInterrupt):
        reproduce.main(_argv("cmrm", killed))
    monkeypatch.setattr(Protocol, "generate", real)
    before = _responses(killed)
    assert 0 < len(before) < len(_responses(whole))
    assert not (killed / "tables.json").exists()
    assert reproduce.main(_argv("cmrm", killed)) == 0
    after = _responses(killed)
    assert after[: len(before)] == before  # finished work kept, not regenerated
    assert sorted(json.dumps(r, sort_keys=True) for r in after) == sorted(
        json.dumps(r, sort_keys=True) for r in _responses(whole)
    )
    assert _values(killed) == _values(whole)
    # a third run generates nothing: the timing file is unchanged
    timing = (killed / "timing.json").read_text()
    assert reproduce.main(_argv("cmrm", killed)) == 0
    assert (killed / "timing.json").read_text() == timing and len(_responses(killed)) == len(after)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--root", "nope=/tmp"], "this protocol does not read"),
        (["--root", "vlsafe"], "use BENCHMARK=PATH"),
        (["--judge", "none"], "give a judge"),
        (["--alphas", "nan"], "not a finite number"),
        (["--layers", "99"], "--layers"),
    ],
)
def test_bad_arguments_exit_2_and_write_nothing(extra, message, tmp_path, capsys):
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as e:
        reproduce.main(_argv("cmrm", out) + extra)
    assert e.value.code == 2 and message in capsys.readouterr().err
    assert not out.exists()


def test_missing_data_root_and_other_settings_are_refused(runs, tmp_path, capsys):
    argv = _argv("cmrm", tmp_path / "out")
    with pytest.raises(SystemExit):
        reproduce.main([a if a != str(SHARED_DATA) else str(tmp_path / "none") for a in argv])
    assert "--data-root" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SystemExit):
        reproduce.main([a if a != str(SHARED_DATA) else str(empty) for a in argv])
    err = capsys.readouterr().err
    assert "no benchmark folder found" in err and "Download VLSafe" in err
    out = tmp_path / "file"
    out.write_text("x")
    with pytest.raises(SystemExit):
        reproduce.main(_argv("cmrm", out))
    assert "is a file" in capsys.readouterr().err
    done = runs["shiftdc"][0]
    config = (done / "config.json").read_text()
    with pytest.raises(SystemExit):
        reproduce.main(_argv("shiftdc", done) + ["--alpha", "0.5"])
    assert "other settings (alpha)" in capsys.readouterr().err
    assert (done / "config.json").read_text() == config


@pytest.mark.slow
@pytest.mark.parametrize("model", ["tiny:llava", "organism"])
@pytest.mark.parametrize("paper", ["cmrm", "shiftdc"])
def test_limit_8_smoke_run_under_three_minutes(paper, model, tmp_path):
    """The acceptance smoke run: ``--limit 8`` on the real files (32 tokens per response; CMRM two alphas,
    ShiftDC 16-token self-captions), under 3 minutes on 2 cores."""
    argv = [paper, "--model", model, "--data-root", str(SHARED_DATA), "--out", str(tmp_path / "o"),
            "--limit", "8", "--max-new-tokens", "32", "--no-progress"]  # fmt: skip
    argv += ["--alphas", "0.5,1"] if paper == "cmrm" else ["--caption-tokens", "16"]
    start = time.perf_counter()
    assert reproduce.main(argv) == 0
    seconds = time.perf_counter() - start
    assert seconds < 180, f"reproduce {paper} --limit 8 on {model} took {seconds:.0f} s"
    assert (tmp_path / "o" / "tables.md").is_file()


def test_mme_scores_leave_out_a_question_whose_pair_the_limit_cut():
    from types import SimpleNamespace

    from vlminterp.eval.metrics import mme_scores
    from vlminterp.reproduce.shiftdc import BENCHMARKS

    mme = next(b for b in BENCHMARKS if b.key == "mme")
    meta = [("OCR", "1.jpg", "Yes"), ("OCR", "1.jpg", "No"), ("OCR", "2.jpg", "Yes")]
    rows = [{"response": "Yes", "meta": {"subtask": t, "image_name": i, "gt_answer": a}} for t, i, a in meta]
    holder = SimpleNamespace(notes=[])
    holder.note = lambda text: Protocol.note(holder, text)
    measured, _ = Protocol._mme(holder, mme, rows)
    ocr = {r["metric"]: r["value"] for r in measured if r["subset"] == "OCR"}
    # the complete pair alone: one of two right (acc 50), the pair not both right (acc+ 0)
    assert ocr == {"mme_acc": 50.0, "mme_acc_plus": 0.0, "mme_score": 50.0}
    expected = mme_scores([{"response": "Yes", "subtask": "OCR", "image_name": "1.jpg", "gt_answer": a}
                           for a in ("Yes", "No")])  # fmt: skip
    assert ocr["mme_score"] == next(r["value"] for r in expected if r["metric"] == "score")
    assert any("left out of the scores" in n for n in holder.notes)
