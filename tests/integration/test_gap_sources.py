"""The gap study and ``vlminterp collect`` on real benchmark files: a harmful and a benign source,
``--on-missing generate``, self-captions for CAPTION, one-class sets, and bad options that write nothing."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch

from tests.conftest import SHARED_DATA
from vlminterp import HookedVLM, PromptBatch, Sample, data, viz
from vlminterp.cache import ActivationStore
from vlminterp.cli import collect as collect_cli
from vlminterp.interventions.captioning import QUERY_CONDITIONED_PROMPT
from vlminterp.studies import representation_gap as study
from vlminterp.studies.collect import add_arguments
from vlminterp.studies.collect import run as collect_run
from vlminterp.studies.sources import Sources

FIGSTEP, LLAVA = SHARED_DATA / "figstep", SHARED_DATA / "llava_bench_coco"
SOURCES = ["--harmful", "figstep", "--harmful-root", str(FIGSTEP)]
SOURCES += ["--benign", "llava-bench-coco", "--benign-root", str(LLAVA), "--on-missing", "generate"]
pytestmark = pytest.mark.skipif(not FIGSTEP.is_dir(), reason=f"no shared benchmark files at {SHARED_DATA}")


@pytest.fixture(autouse=True)
def generated_here(tmp_path, monkeypatch):
    """Generated and placeholder images go to the test's folder, not ~/.cache; no PNG export (speed)."""
    monkeypatch.setenv("VLMINTERP_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(viz.export, "png_unavailable_reason", lambda: "disabled in tests (speed)")


def gap_config(out: Path, **kwargs) -> study.RepresentationGapConfig:
    settings = dict(
        harmful="figstep",
        harmful_root=str(FIGSTEP),
        benign="llava-bench-coco",
        benign_root=str(LLAVA),
        on_missing="generate",
        limit=2,
        n_splits=2,
        caption_tokens=8,
        out=str(out),
    )
    return study.RepresentationGapConfig(**{**settings, **kwargs})


@pytest.mark.filterwarnings("ignore:llava-bench-coco.*placeholder")
def test_gap_on_figstep_and_llava_bench_writes_rows_and_figures(tiny_model, tmp_path):
    assert not any(s.caption for s in data.load("figstep", FIGSTEP, on_missing="keep"))  # nothing to read
    out = tmp_path / "gap"
    study.run(gap_config(out), model=tiny_model)

    rows = json.loads((out / "results.json").read_text())
    assert {r["dataset"] for r in rows} == {"figstep+llava-bench-coco"}
    assert {"pca", "gap", "gap_closed", "probe", "direction", "projection", "distortion"} <= {
        r["analysis"] for r in rows
    }
    # FigStep captions are the model's own, LLaVA-Bench's are its COCO captions.
    assert {r["caption_source"] for r in rows} == {"self+dataset"}
    info = json.loads((out / "manifest.json").read_text())["info"]
    assert info["classes"] == {"harmful": 2, "benign": 2} and info["skipped"] is None
    assert info["placeholder_images"] == 2  # no COCO photos in shared/data
    # Only the chosen samples' images were made: FigStep 1/2 drawn, two LLaVA-Bench placeholders.
    assert len(list((tmp_path / "cache").rglob("*.png"))) == 3
    assert info["captions"] == {
        "source": "self+dataset",
        "self_prompt": QUERY_CONDITIONED_PROMPT,
        "max_new_tokens": 8,
        "cache": "captions.json",
    }
    cached = json.loads((out / "captions.json").read_text())
    assert sorted(json.loads(k)[-1] for k in cached) == ["harmful:figstep/1/1", "harmful:figstep/1/2"]
    assert all(text.strip() for text in cached.values())
    for name in viz.FIGURES:
        assert "plotly" in (out / f"{name}.html").read_text()[:5000].lower()


def hand_built_caption_state(hf_model, model, sample: Sample, caption: str) -> torch.Tensor:
    """Layer 0's last-token residual of the caption twin typed out by hand, from plain transformers."""
    twin = Sample(id="hand", query=f"{sample.query} Image Caption: {caption}")
    batch = PromptBatch.paired(model, [twin], ["text_only"])
    with torch.no_grad():
        out = hf_model(input_ids=batch.input_ids, output_hidden_states=True, **batch.model_kwargs())
    return out.hidden_states[1][0, -1]


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(argv)


@pytest.mark.filterwarnings("ignore:llava-bench-coco.*placeholder")
def test_collect_two_sources_self_captions_equal_hand_built_and_resume(
    tiny_model, tmp_path, capsys, monkeypatch
):
    from transformers import LlavaForConditionalGeneration

    out = tmp_path / "col"
    argv = [*SOURCES, "--limit", "2", "--conditions", "image,text_only,caption", "--layers", "0"]
    argv += ["--caption-tokens", "8"]
    argv += ["--keep", "vectors", "--shard-size", "1", "--no-progress", "--out", str(out)]
    assert collect_run(parse(argv)) == 0
    printed = capsys.readouterr().out
    assert "classes: 2 harmful, 2 benign, 4 samples" in printed and "captions: 2 of 4" in printed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "col"]  # the pending cache moved in
    store = ActivationStore.load(out)
    assert store.labels == ["harmful", "harmful", "benign", "benign"]
    captions = {json.loads(k)[-1]: v for k, v in json.loads((out / "captions.json").read_text()).items()}

    # The CAPTION rows are the model's own caption put after the query, as a hand-built text prompt.
    hf_model = LlavaForConditionalGeneration.from_pretrained(tiny_model.cfg.model_id).eval()
    samples = Sources.parse(None, "figstep", "llava-bench-coco", None, FIGSTEP, LLAVA, 2, "generate").load()
    caption_rows = store.vectors("caption", 0)
    for i, s in enumerate(samples):
        own = tiny_model.generate(
            PromptBatch.paired(
                tiny_model,
                [Sample(id=s.id, query=QUERY_CONDITIONED_PROMPT.format(query=s.query), image=s.image)],
                ["image"],
            ),
            max_new_tokens=8,
        ).texts[0]
        caption = captions[s.id] if s.label == "harmful" else s.caption
        if s.label == "harmful":
            assert caption == own
        ref = hand_built_caption_state(hf_model, tiny_model, s, caption)
        torch.testing.assert_close(caption_rows[i].float(), ref, atol=1e-4, rtol=1e-4)

    # Interrupted after three shards: --resume recomputes the last one only, bit for bit.
    before = {c: store.vectors(c, 0).clone() for c in ("image", "text_only", "caption")}
    last = sorted((out / "shards").glob("shard-*"))[-2:]
    for path in last:
        path.unlink()
    with monkeypatch.context() as m:  # the captions come from --out/captions.json, not from the model
        m.setattr(HookedVLM, "generate", lambda *a, **k: pytest.fail("captioned again on resume"))
        assert collect_run(parse([*argv, "--resume"])) == 0
    resumed = ActivationStore.load(out, checksum=True)
    for cond, value in before.items():
        assert torch.equal(resumed.vectors(cond, 0), value)


def test_one_class_set_runs_and_says_what_it_skipped(tiny_model, tmp_path, capsys):
    out = tmp_path / "one"
    cfg = gap_config(out, benign=None, benign_root=None, conditions=("image", "blank", "text_only"))
    study.run(cfg, model=tiny_model)
    note = "only harmful samples (2 harmful, 0 benign): skipped probes, safety direction (they need both classes)"
    assert note in capsys.readouterr().out
    rows = json.loads((out / "results.json").read_text())
    analyses = {r["analysis"] for r in rows}
    assert {"pca", "gap", "gap_closed", "direction"} <= analyses
    assert not analyses & {"probe", "projection", "distortion"}
    assert {r["direction"] for r in rows if r["analysis"] == "direction"} == {"modality"}
    assert json.loads((out / "manifest.json").read_text())["info"]["skipped"] == note
    assert (out / "pca_scatter.html").is_file() and not (out / "probe_accuracy.html").exists()


def test_too_few_of_a_class_fails_before_the_model_is_loaded(tmp_path, monkeypatch):
    few = [Sample(id=f"h{i}", query="q", label="harmful") for i in range(3)]
    monkeypatch.setattr(Sources, "load", lambda self: [*few, Sample(id="b", query="q", label="benign")])

    def no_model(spec):
        raise AssertionError("the model was loaded before the class counts were checked")

    monkeypatch.setattr(study, "load_model", no_model)
    out = tmp_path / "few"
    with pytest.raises(
        ValueError, match=r"\{'harmful': 3, 'benign': 1\} per class \(4 in all\): fewer than n_splits=2"
    ):
        study.run(gap_config(out))
    assert not out.exists()


BAD = [
    (["--dataset", "demo", "--harmful", "figstep"], "are alternatives"),
    (["--harmful", "figstep"], "pass --harmful-root or --data-root"),
    (["--benign-root", str(LLAVA)], "--benign-root is given without --benign"),
    (["--harmful", "nope", "--data-root", str(FIGSTEP)], "unknown dataset 'nope'"),
    (["--on-missing", "keep"], "invalid choice: 'keep'"),
    # FigStep 1/2 has no image file in shared/data: --on-missing raise stops before any work.
    (["--harmful", "figstep", "--harmful-root", str(FIGSTEP), "--limit", "2"], "image files are missing"),
    # Layers are checked against the model before any self-caption is written.
    ([*SOURCES, "--limit", "2", "--layers", "9"], "--layers [9] are out of range"),
]


@pytest.mark.parametrize(("argv", "match"), BAD)
@pytest.mark.parametrize("command", ["gap", "collect"])
def test_bad_options_write_nothing(command, argv, match, tmp_path, capsys):
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as e:
        if command == "gap":
            study.main([*argv, "--n-splits", "2", "--out", str(out)])
        else:
            collect_cli.main([*argv, "--out", str(out)])
    assert e.value.code == 2 and match in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) in ([], ["cache"])  # generated images only
