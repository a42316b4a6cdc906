"""CMRM's protocol (arXiv 2410.09047): unsafe rates with and without the defence, and its utility cost.

Safety: VLSafe and JailbreakLLMs, judged, under IMAGE, TEXT_ONLY, CAPTION (where the benchmark has
captions: VLSafe's COCO captions) and IMAGE with dataset-level and sample-level CMRM at every alpha
of the sweep. Utility: ScienceQA accuracy (its image questions) and the LLaVA-Bench-COCO relative
score (an LLM grader, ``--grader``), IMAGE with and without CMRM. The dataset-level shift vectors are
fitted once on the anchor set (refusal_direction's harmful and harmless train instructions, with a
white blank image) and kept in the run folder (``cmrm_vectors``); JailbreakLLMs questions are paired
with one seeded noise image for IMAGE (the question set is text-only).

Example:
    >>> [b.key for b in BENCHMARKS]
    ['vlsafe', 'jailbreakllms', 'scienceqa', 'llava-bench-coco']
    >>> [label for label, _ in layouts([1.0])[0].rows][:3]
    ['text-only', 'caption', 'image']
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from vlminterp.parallel import barrier, broadcast, is_main
from vlminterp.reproduce.benchmarks import Benchmark
from vlminterp.reproduce.engine import Cell, Protocol
from vlminterp.reproduce.tables import Layout
from vlminterp.specs import DatasetSpec

__all__ = ["BENCHMARKS", "ANCHOR", "ALPHAS", "layouts", "run"]

BENCHMARKS = (
    Benchmark("vlsafe", "vlsafe", "vlsafe", "safety",
              "VLSafe's harmlessness_examine.jsonl (DRESS release, huggingface.co/datasets/YangyiYY/LVLM_NLF, "
              "folder VLSafe) with COCO train2017 images in train2017/"),
    Benchmark("jailbreakllms", "jailbreakllms", "jailbreak_llms", "safety",
              "data/forbidden_question/forbidden_question_set.csv of github.com/verazuo/jailbreak_llms",
              options={"image": "noise"}),
    Benchmark("scienceqa", "scienceqa", "scienceqa", "scienceqa",
              "LLaVA's playground/data/eval/scienceqa (llava_test_CQM-A.json and images/test)",
              options={"subset": "image"}),
    Benchmark("llava-bench-coco", "llava-bench-coco", "llava_bench_coco", "llava-bench",
              "LLaVA's playground/data/coco2014_val_qa_eval (qa90 questions, GPT-4 answers, contexts, "
              "rule.json) with the COCO val2014 images"),
)  # fmt: skip
#: The anchor set of the dataset-level vectors: where it is read from under the data root.
ANCHOR = Benchmark("anchor", "harmful-harmless", "refusal_direction", "safety",
                   "andyrdt/refusal_direction's dataset/splits/{harmful,harmless}_train.json", split="train")  # fmt: skip
#: The paper's sweep: alpha from 0.1 to 1.0 in steps of 0.1.
ALPHAS = tuple(round(0.1 * k, 1) for k in range(1, 11))


def layouts(alphas: Sequence[float]) -> list[Layout]:
    """The paper's tables: unsafe rates (safety sets x settings) and utility (with and without CMRM)."""
    steered = [
        (
            f"image + CMRM {level} (α={a:g})",
            {"condition": "image", "method": f"cmrm_{level}", "alpha": float(a)},
        )
        for a in alphas
        for level in ("dataset", "sample")
    ]
    settings = [
        ("text-only", {"condition": "text_only", "method": "none"}),
        ("caption", {"condition": "caption", "method": "none"}),
        ("image", {"condition": "image", "method": "none"}),
        *steered,
    ]
    return [
        Layout(
            "Unsafe rate (%), measured (LLaVA-1.5-7B in the paper)",
            settings,
            [
                ("VLSafe", {"benchmark": "vlsafe", "subset": "all"}),
                ("JailbreakLLMs", {"benchmark": "jailbreakllms", "subset": "all"}),
            ],  # fmt: skip
            "unsafe_rate",
        ),
        Layout(
            "Utility, measured (LLaVA-1.5-7B in the paper)",
            settings[2:],
            [
                ("ScienceQA accuracy (%)", {"benchmark": "scienceqa", "subset": "all", "metric": "accuracy"}),
                (
                    "LLaVA-Bench-COCO relative score",
                    {"benchmark": "llava-bench-coco", "subset": "all", "metric": "relative_score"},
                ),
            ],  # fmt: skip
        ),
    ]


def run(
    protocol: Protocol, anchor: DatasetSpec | None, alphas: Sequence[float], options: dict[str, Any]
) -> None:
    """Generate every cell of the protocol (resumable); the caller scores and writes the tables.

    Args:
        protocol: The run (model, folder, benchmarks loaded).
        anchor: The anchor set's spec, or None (then dataset-level CMRM is skipped, with a note).
        alphas: The sweep.
        options: ``layers``, ``steps``, ``blank``, ``estimator`` of CMRM.
    """
    from vlminterp.interventions import CMRM
    from vlminterp.interventions.steering import SteeringVectors

    model, out = protocol.run.model, protocol.run.out
    vectors = None
    if anchor is not None:
        path = out / "cmrm_vectors.safetensors"
        if path.is_file():
            vectors = SteeringVectors.load(path, model)
        else:
            print(f"fitting dataset-level CMRM vectors on {anchor} ...")
            vectors = broadcast(
                CMRM.fit(
                    model,
                    anchor.load(),
                    layers=options["layers"],
                    estimator=options["estimator"],
                    blank=options["blank"],
                    progress=protocol.run.progress,
                )
            )  # fmt: skip  (every rank fits its shard of the anchors; all steer with rank 0's bits)
            if is_main():
                vectors.save(out / "cmrm_vectors")
            barrier()
    else:
        protocol.note(
            f"dataset-level CMRM skipped: no anchor set (download {ANCHOR.download} into DATA_ROOT/{ANCHOR.folder})."
        )
    for b, _ in protocol.benchmarks:
        samples = protocol.samples[b.name]
        plain = ["image"]
        if b.kind == "safety":
            plain += ["text_only"] + (["caption"] if samples and all(s.caption for s in samples) else [])
        for condition in plain:
            protocol.generate(b, Cell(b.key, condition, "none"))
        for alpha in alphas:
            alpha = float(alpha)
            if vectors is not None:
                cmrm = CMRM(vectors, alpha=alpha, layers=options["layers"], steps=options["steps"])
                protocol.generate(b, Cell(b.key, "image", "cmrm_dataset", alpha), cmrm)
            sample = CMRM.sample_level(alpha=alpha, layers=options["layers"], steps=options["steps"],
                                       blank=options["blank"])  # fmt: skip
            protocol.generate(b, Cell(b.key, "image", "cmrm_sample", alpha), sample)
