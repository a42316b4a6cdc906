"""ShiftDC's protocol (arXiv 2502.13095): attack success rates with and without the defence, utility, time.

Safety: MM-SafetyBench per scenario for its SD, TYPO and SD+TYPO images, and FigStep, judged
(the paper: a GPT judge with MM-SafetyBench's per-scenario prompts, ``--judge llm:MODEL``), IMAGE
with and without ShiftDC. Utility: MME perception and cognition, and MM-Vet (an LLM grader,
``--grader``). Time: seconds per response with and without, over every generated response,
ShiftDC's including its self-captioning (as the paper's 2.73 s -> 4.66 s). The
safety direction is fitted once on text-only harmful and harmless instructions (refusal_direction's
train split) and kept in the run folder (``safety_direction``); self-captions are cached in
``captions.json``. The default rule set is the authors' (``ShiftDC.preset("authors")``).

Example:
    >>> sorted({b.key for b in BENCHMARKS})
    ['figstep', 'mm-safetybench', 'mm-vet', 'mme']
    >>> [label for label, _ in layouts(1.0)[0].cols][:2]
    ['SD', 'SD + ShiftDC']
"""

from __future__ import annotations

from typing import Any

from vlminterp.data.mm_safetybench import SCENARIOS
from vlminterp.parallel import barrier, broadcast, is_main
from vlminterp.reproduce.benchmarks import Benchmark
from vlminterp.reproduce.engine import Cell, Protocol
from vlminterp.reproduce.tables import Layout
from vlminterp.specs import DatasetSpec

__all__ = ["BENCHMARKS", "DIRECTION", "VARIANTS", "layouts", "run"]

_MMSB = "MM-SafetyBench's data/processed_questions/*.json with imgs/<scenario>/{SD,SD_TYPO,TYPO}/*.jpg"
BENCHMARKS = (
    *(Benchmark("mm-safetybench", "mm-safetybench", "mm_safetybench", "safety", _MMSB, split=v)
      for v in ("SD", "TYPO", "SD_TYPO")),
    Benchmark("figstep", "figstep", "figstep", "safety",
              "github.com/ThuCCSLab/FigStep's data/ folder (question/safebench.csv, images/SafeBench)"),
    Benchmark("mme", "mme", "mme", "mme",
              "MME's eval_tool (Your_Results/*.txt) with the MME_Benchmark_release_version images"),
    Benchmark("mm-vet", "mm-vet", "mm_vet", "mm-vet",
              "LLaVA's playground/data/eval/mm-vet (llava-mm-vet.jsonl, images/)"),
)  # fmt: skip
#: Where the safety direction's text-only instructions are read from under the data root.
DIRECTION = Benchmark("direction", "harmful-harmless", "refusal_direction", "safety",
                      "andyrdt/refusal_direction's dataset/splits/{harmful,harmless}_train.json", split="train")  # fmt: skip
#: The benchmarks of the time table (each over all its responses), and their names.
_TIMED = (("mm-safetybench", "MM-SafetyBench"), ("figstep", "FigStep"), ("mme", "MME"), ("mm-vet", "MM-Vet"))
#: Rule sets (``ShiftDC.preset``).
VARIANTS = ("authors", "vlminterp")


def layouts(alpha: float) -> list[Layout]:
    """The paper's tables: MM-SafetyBench ASR per scenario, FigStep ASR, utility and time per response."""
    on = {"method": "shiftdc", "alpha": float(alpha)}
    off = {"method": "none"}
    cols = [
        (label, {**sel, "variant": v})
        for v, name in (("SD", "SD"), ("TYPO", "TYPO"), ("SD_TYPO", "SD+TYPO"))
        for label, sel in ((name, off), (f"{name} + ShiftDC", on))
    ]
    scenario_rows = [(s, {"benchmark": "mm-safetybench", "scenario": s}) for s in SCENARIOS]
    scenario_rows.append(("average", {"benchmark": "mm-safetybench", "scenario": "all"}))
    settings = [("no defence", {"condition": "image", **off}), ("ShiftDC", {"condition": "image", **on})]
    return [
        Layout("MM-SafetyBench ASR (%), measured (LLaVA-1.5-7B in the paper)", scenario_rows, cols, "asr"),
        Layout("FigStep ASR (%)", settings, [("FigStep", {"benchmark": "figstep", "subset": "all"})], "asr"),
        Layout(
            "Utility",
            settings,
            [
                ("MME perception", {"benchmark": "mme", "subset": "perception", "metric": "mme_score"}),
                ("MME cognition", {"benchmark": "mme", "subset": "cognition", "metric": "mme_score"}),
                ("MM-Vet", {"benchmark": "mm-vet", "subset": "all", "metric": "mmvet_score"}),
            ],  # fmt: skip
        ),
        Layout(
            "Seconds per response",
            settings,
            [(name, {"benchmark": "timing", "subset": key}) for key, name in _TIMED],
            "seconds_per_response",
        ),  # fmt: skip
    ]


def run(protocol: Protocol, direction_set: DatasetSpec | None, options: dict[str, Any]) -> None:
    """Fit (or reload) the direction, then generate every cell (resumable).

    Args:
        protocol: The run (model, folder, benchmarks loaded).
        direction_set: Text-only harmful + harmless instructions for ``s`` (None: ``options["direction"]``
            names a saved direction file).
        options: ``variant``, ``alpha``, ``layers``, ``steps``, ``direction`` (a saved file or None),
            ``caption_tokens`` (self-caption length; None: the variant's),
            ``organism`` (the model is the shipped organism: its own short caption prompt).
    """
    from vlminterp.demo import ORGANISM_CAPTION_PROMPT
    from vlminterp.eval.steering import rank_captions
    from vlminterp.interventions import SafetyDirection, ShiftDC
    from vlminterp.interventions.steering import SteeringVectors

    model, out = protocol.run.model, protocol.run.out
    saved = out / "safety_direction.safetensors"
    if options.get("direction"):
        direction = SteeringVectors.load(options["direction"], model)
    elif saved.is_file():
        direction = SteeringVectors.load(saved, model)
    else:
        if direction_set is None:
            raise ValueError(
                f"ShiftDC needs a safety direction: download {DIRECTION.download} into DATA_ROOT/{DIRECTION.folder}, "
                "or pass --direction FILE (SteeringVectors.save)."
            )
        fit = direction_set.load()
        print(f"fitting the safety direction on {direction_set} ({len(fit)} instructions) ...")
        direction = broadcast(SafetyDirection.fit(
            model, [s for s in fit if s.label == "benign"], [s for s in fit if s.label == "harmful"],
            condition="text_only", progress=protocol.run.progress, **ShiftDC.direction_options(options["variant"]),
        ))  # fmt: skip
        if is_main():
            direction.save(out / "safety_direction")
        barrier()
    organism = options.get("organism") and options["variant"] == "vlminterp"
    extra = {"caption_prompt": ORGANISM_CAPTION_PROMPT, "caption_max_new_tokens": 8} if organism else {}
    if options.get("caption_tokens"):
        extra["caption_max_new_tokens"] = options["caption_tokens"]
    shiftdc = ShiftDC.preset(
        options["variant"], direction, alpha=options["alpha"], layers=options["layers"], steps=options["steps"],
        caption_source="self", caption_cache=out / "captions.json", **extra,
    )  # fmt: skip
    for b, _ in protocol.benchmarks:
        protocol.generate(b, Cell(b.key, "image", "none"))
        # The self-captions are made in the timed generation (the paper's time includes them), decoded
        # with the responses (ShiftDC.generate_chunks), each process into its copy of captions.json.
        with rank_captions(shiftdc):
            protocol.generate(b, Cell(b.key, "image", "shiftdc", float(options["alpha"])), shiftdc)
