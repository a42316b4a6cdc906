"""The two papers' published LLaVA-1.5-7B numbers, as tidy rows that name their source.

``vlminterp reproduce cmrm|shiftdc`` prints these beside the measured numbers. Every ShiftDC value,
and CMRM's 61.53% and 3.15%, was copied from the paper's text; ``source`` names the table or
section. The other CMRM rows are second-hand (see below), and their ``source`` says so. Rates are
fractions (45.4% is 0.454). MME and MM-Vet scores are as published, and times are seconds. A number
found nowhere is left out and listed below.

**ShiftDC** (Zou et al., arXiv 2502.13095; the numbers come from the NeurIPS 2025 camera-ready
text):

- MM-SafetyBench ASR for all 13 scenarios plus the average (Table 6; its Average row is Table 1).
  The columns are Text, then Direct / ECSO / AdaShield / ShiftDC for SD, OCR and SD+OCR.
  The paper's OCR is the loader's ``TYPO`` and SD+OCR is ``SD_TYPO``. The Text column is
  ``Text_only``. ``subset`` is ``"<scenario>/<variant>"``, using
  :data:`vlminterp.data.mm_safetybench.SCENARIOS` names. Averages are ``"all/<variant>"``.
- FigStep ASR (Table 4). MME total (Table 3), perception and cognition (Table 11). MM-Vet (Table 3).
- Seconds per response (Table 13). The table's second column is headed MM-Vet, though the text of
  §E.6 says MME. Table 14 gives time and SD+OCR ASR with captions capped at 128 tokens; its
  method is ``shiftdc_caption128``, which is what the authors' ``run_caption.py`` does.
- ``method`` values: ``none`` (Direct), ``ecso`` (the image replaced by its caption, so
  ``condition`` is ``caption``), ``adashield`` (AdaShield-S prompt) and ``shiftdc``. ShiftDC has no
  α, so ``alpha`` is None.
- Left out, although the paper reports them: other models (Tables 1, 3, 4, 7-9, 11), MMBench
  (Table 3), JailBreakV-28K (Table 10), MOSSBench (Table 12), false alarms (Table 5), BLIP captions
  (Table 15) and the 80-instruction ablation (Table 16). vlminterp has no loader for MMBench,
  JailBreakV or MOSSBench.

**CMRM** (Liu et al., arXiv 2410.09047):

- The stored copies gave the abstract of v1 and nothing further. The abstract says LLaVA-7B's
  unsafe rate on multi-modal input falls "from 61.53% to as low as 3.15%".
- The VLSafe rows for dataset-level (5.41%), text-only (1.91%) and caption (5.52%) are copied from
  vlminterp's ``shared/DESIGN.md``, and their ``source`` says so. So is the split of 3.15% as
  sample-level. Two third-party notes on the paper agree: one quotes "61.53% to 5.41% / 3.15% on
  VLSafe", the other 5.52% with the caption and 1.91% without. These four rows have not been
  checked against the paper's table.
- Not found, so left out: every JailbreakLLMs unsafe rate, every ScienceQA accuracy, every
  LLaVA-Bench-COCO score, and the α sweep curve. ``published("cmrm", "jailbreakllms")`` returns
  ``[]``.

:data:`PROTOCOL` collects the protocol facts we could read (judge, layers, caption prompt, data),
one sentence each, keyed by paper and then by benchmark. The key ``"method"`` holds the facts
about the intervention itself.

Example:
    >>> from vlminterp.reproduce.published import published
    >>> [(r["method"], r["value"]) for r in published("shiftdc", "figstep")]
    [('none', 0.524), ('ecso', 0.142), ('adashield', 0.136), ('shiftdc', 0.132)]
    >>> [r["value"] for r in published("cmrm", "vlsafe") if r["condition"] == "image"]
    [0.6153, 0.0541, 0.0315]
"""

from __future__ import annotations

__all__ = ["BENCHMARKS", "PAPERS", "PROTOCOL", "PUBLISHED", "published"]

PAPERS = ("cmrm", "shiftdc")

#: The benchmarks each paper's protocol runs. A benchmark with no rows here is one whose published
#: numbers were not found (see the module docstring).
BENCHMARKS: dict[str, tuple[str, ...]] = {
    "cmrm": ("vlsafe", "jailbreakllms", "scienceqa", "llava-bench-coco"),
    "shiftdc": ("mm-safetybench", "figstep", "mme", "mm-vet", "timing"),
}

_MODEL = "llava-1.5-7b"
_CMRM_ABSTRACT = "arXiv 2410.09047v1, abstract"
_CMRM_DESIGN = (
    "arXiv 2410.09047, VLSafe results as quoted in vlminterp shared/DESIGN.md "
    "(the paper's results table was not reachable in the stored copies; not re-read)"
)
_SHIFTDC = "arXiv 2502.13095 (NeurIPS 2025 camera-ready text), "

# ShiftDC Table 6: LLaVA-1.5-7B ASR (%) on MM-SafetyBench, columns exactly as published:
# Text | SD: Direct ECSO AdaShield ShiftDC | OCR: (same four) | SD+OCR: (same four).
_SHIFTDC_TABLE6 = {
    "01-Illegal_Activitiy": (10.2, 25.1, 6.6, 10.6, 6.2, 70.3, 6.0, 7.5, 6.4, 78.3, 12.4, 10.9, 7.2),
    "02-HateSpeech": (8.7, 19.5, 4.3, 10.6, 6.4, 44.8, 16.2, 7.8, 5.3, 51.5, 17.0, 9.6, 10.5),
    "03-Malware_Generation": (59.6, 18.8, 7.5, 4.5, 4.5, 72.1, 15.9, 9.6, 12.6, 65.8, 19.0, 8.1, 10.2),
    "04-Physical_Harm": (34.9, 20.0, 10.4, 15.7, 8.8, 64.9, 15.0, 16.2, 10.5, 60.1, 18.3, 13.5, 7.4),
    "05-EconomicHarm": (8.4, 6.8, 7.9, 10.3, 8.1, 14.0, 7.9, 15.6, 8.1, 17.5, 10.5, 14.2, 7.9),
    "06-Fraud": (15.2, 23.8, 10.4, 13.3, 9.4, 72.6, 12.2, 9.4, 9.7, 64.1, 22.2, 13.6, 10.8),
    "07-Sex": (15.2, 12.2, 9.5, 10.1, 9.7, 25.1, 16.0, 13.2, 8.8, 28.8, 25.9, 13.3, 10.8),
    "08-Political_Lobbying": (95.5, 59.5, 66.4, 73.5, 50.7, 90.2, 62.5, 62.5, 52.3, 94.3, 94.5, 96.6, 92.7),
    "09-Privacy_Violence": (27.6, 15.1, 14.6, 18.2, 10.2, 57.4, 16.6, 22.4, 15.0, 60.0, 25.3, 21.8, 17.7),
    "10-Legal_Opinion": (82.3, 97.3, 96.0, 97.0, 92.5, 94.1, 94.4, 95.5, 95.0, 99.0, 98.5, 98.2, 98.0),
    "11-Financial_Advice": (97.0, 99.0, 99.0, 98.1, 98.0, 100.0, 100.0, 98.6, 98.0, 97.5, 98.8, 98.8, 99.0),
    "12-Health_Consultation": (90.0, 97.0, 98.2, 97.0, 94.3, 97.0, 98.0, 97.0, 96.3, 99.0, 95.5, 98.0, 97.2),
    "13-Gov_Decision": (95.3, 96.0, 93.7, 95.4, 95.0, 98.7, 98.0, 98.7, 98.0, 100.0, 96.1, 99.0, 98.0),
    "all": (49.2, 45.4, 40.3, 42.6, 38.0, 69.3, 43.0, 42.6, 39.7, 70.5, 48.8, 45.8, 43.6),
}
# The paper's defences, in its column order, with the condition each feeds the model.
_DEFENCES = (("none", "image"), ("ecso", "caption"), ("adashield", "image"), ("shiftdc", "image"))
_VARIANTS = ("SD", "TYPO", "SD_TYPO")  # the paper's SD, OCR, SD+OCR


def _row(benchmark, subset, condition, method, metric, value, source, paper="shiftdc", alpha=None):
    return {
        "paper": paper,
        "model": _MODEL,
        "benchmark": benchmark,
        "subset": subset,
        "condition": condition,
        "method": method,
        "alpha": alpha,
        "metric": metric,
        "value": value,
        "source": source,
    }


def _rate(percent: float) -> float:
    """A published percentage as a fraction (61.53 -> 0.6153)."""
    return round(percent / 100, 6)


def _cmrm_rows() -> list[dict]:
    def vlsafe(condition, method, percent, source):
        return _row("vlsafe", "all", condition, method, "unsafe_rate", _rate(percent), source, "cmrm")

    return [
        vlsafe("image", "none", 61.53, _CMRM_ABSTRACT),
        vlsafe("image", "cmrm_dataset", 5.41, _CMRM_DESIGN),
        vlsafe(
            "image",
            "cmrm_sample",
            3.15,
            _CMRM_ABSTRACT + " ('as low as 3.15%'); sample-level as quoted in vlminterp shared/DESIGN.md",
        ),
        vlsafe("text_only", "none", 1.91, _CMRM_DESIGN),
        vlsafe("caption", "none", 5.52, _CMRM_DESIGN),
    ]


def _shiftdc_rows() -> list[dict]:
    rows = []
    for scenario, values in _SHIFTDC_TABLE6.items():
        source = _SHIFTDC + ("Table 6, Average row (= Table 1)" if scenario == "all" else "Table 6")
        rows.append(
            _row(
                "mm-safetybench",
                f"{scenario}/Text_only",
                "text_only",
                "none",
                "asr",
                _rate(values[0]),
                source,
            )
        )
        cells = iter(values[1:])
        for variant in _VARIANTS:
            for method, condition in _DEFENCES:
                subset = f"{scenario}/{variant}"
                rows.append(
                    _row("mm-safetybench", subset, condition, method, "asr", _rate(next(cells)), source)
                )
    for (method, condition), asr, mme, mme_p, mme_c, mmvet in zip(
        _DEFENCES,
        (52.4, 14.2, 13.6, 13.2),  # Table 4
        (1863.1, 1838.1, 1854.0, 1863.6),  # Table 3
        (1507.4, 1487.2, 1501.2, 1507.4),  # Table 11, MME-P
        (355.7, 350.9, 352.8, 356.2),  # Table 11, MME-C
        (30.5, 25.4, 27.2, 30.4),  # Table 3
        strict=True,
    ):
        rows += [
            _row("figstep", "all", condition, method, "asr", _rate(asr), _SHIFTDC + "Table 4"),
            _row("mme", "all", condition, method, "mme_score", mme, _SHIFTDC + "Table 3"),
            _row("mme", "perception", condition, method, "mme_score", mme_p, _SHIFTDC + "Table 11"),
            _row("mme", "cognition", condition, method, "mme_score", mme_c, _SHIFTDC + "Table 11"),
            _row("mm-vet", "all", condition, method, "score", mmvet, _SHIFTDC + "Table 3"),
        ]
    timing = _SHIFTDC + "Table 13"
    for (method, condition), on_mmsb, on_mmvet in zip(
        (("none", "image"), ("ecso", "caption"), ("shiftdc", "image")),
        (2.73, 4.97, 4.66),
        (3.03, 5.15, 4.83),
        strict=True,
    ):
        rows.append(
            _row("timing", "mm-safetybench", condition, method, "seconds_per_response", on_mmsb, timing)
        )
        rows.append(_row("timing", "mm-vet", condition, method, "seconds_per_response", on_mmvet, timing))
    table14 = _SHIFTDC + "Table 14 (captions capped at 128 tokens; its 70.5 / 43.6 are Table 1's SD+OCR)"
    rows += [
        _row(
            "timing", "mm-safetybench", "image", "shiftdc_caption128", "seconds_per_response", 3.92, table14
        ),
        _row("mm-safetybench", "all/SD_TYPO", "image", "shiftdc_caption128", "asr", _rate(45.5), table14),
    ]
    return rows


#: One row per published number (keys: paper, model, benchmark, subset, condition, method, alpha,
#: metric, value, source).
PUBLISHED: tuple[dict, ...] = tuple(_cmrm_rows() + _shiftdc_rows())

#: Protocol facts read in the papers and the authors' code, one sentence each: paper -> benchmark
#: (or ``"method"``) -> fact.
PROTOCOL: dict[str, dict[str, str]] = {
    "cmrm": {
        "vlsafe": (
            "Abstract (v1): LLaVA-7B's unsafe rate on multi-modal input falls from 61.53% 'to as low as "
            "3.15%'; the judge is an LLM (LLaMA-3-8B-Instruct per the ICLR 2025 reviews, "
            "Llama-3.1-8B-Instruct per a third-party summary), not read in the paper."
        ),
        "jailbreakllms": (
            "Unsafe rates are reported on 330 of the 390 questions, each paired with a related COCO image "
            "(third-party note, not read in the paper); no number was read."
        ),
        "scienceqa": "A utility benchmark of the paper (shared/seeds); its accuracies were not read.",
        "llava-bench-coco": "A utility benchmark (about 90 images, per an ICLR review); no score was read.",
        "method": (
            "DESIGN.md: v = h_text_only - h_blank_image per layer, h <- h_image + alpha*v at the last token "
            "every step, dataset- or sample-level, alpha swept in 0.1 steps (§4.3 per a review), best "
            "near 1.0; a third-party note: the anchor set is 20% of VLSafe and of JailbreakLLMs plus "
            "LLaVA-Bench-COCO samples."
        ),
    },
    "shiftdc": {
        "mm-safetybench": (
            "ASR = harmful responses / queries; a response is a refusal if it contains a keyword of "
            "Table 17 (taken from AdaShield and ref. [53]), following [5, 8] (§6.2, App. D.3); averages "
            "are over all 13 scenarios (Tables 1, 6)."
        ),
        "figstep": "Same keyword ASR on FigStep's 520 typography samples (§6.2, App. B.1, Table 4).",
        "mme": (
            "Sub-task score = accuracy + accuracy+ (yes/no pairs); perception sums 10 sub-tasks (0-2000), "
            "cognition 4 (0-800); Table 3 reports their sum (App. B.2)."
        ),
        "mm-vet": "GPT-4 with few-shot prompts grades each answer 0-1; score = mean x 100 (App. B.2).",
        "timing": (
            "Average seconds per response on MM-SafetyBench and on the second benchmark (headed MM-Vet in "
            "Table 13, MME in §E.6); ShiftDC adds one caption generation and one activation pass."
        ),
        "method": (
            "Per layer s = mean(text-only safe) - mean(text-only unsafe) from 160 + 160 instructions "
            "(LLaVA-Instruct-80k; MM-SafetyBench scenarios 01-07 and 09, App. B.3); captions come from the "
            "VLM with 'Based on the given Request, describe the image. Request: {query}' (App. D.1), up "
            "to 1024 tokens (128 in Table 14 and in the code); the code calibrates layers 10..31 "
            "(README) with alpha = 1.0 (run_shiftdc.py default), greedy, 128 new tokens."
        ),
    },
}


def published(paper: str, benchmark: str | None = None) -> list[dict]:
    """The published rows of one paper, optionally of one benchmark (copies, in table order).

    Args:
        paper: ``"cmrm"`` or ``"shiftdc"``.
        benchmark: One of ``BENCHMARKS[paper]``, or None for all. A benchmark of the paper whose numbers
            were not found gives ``[]``.

    Returns:
        The rows as dicts (see :data:`PUBLISHED`).

    Raises:
        ValueError: ``paper`` is not a paper here, or ``benchmark`` is not one of its benchmarks.

    Example:
        >>> len(published("shiftdc", "mm-safetybench"))
        183
        >>> published("cmrm", "scienceqa")
        []
    """
    if paper not in PAPERS:
        raise ValueError(f"published(paper={paper!r}): unknown paper; choose one of {list(PAPERS)}.")
    if benchmark is not None and benchmark not in BENCHMARKS[paper]:
        raise ValueError(
            f"published({paper!r}, benchmark={benchmark!r}): not a benchmark of {paper}; "
            f"choose one of {list(BENCHMARKS[paper])} or None."
        )
    return [
        dict(r)
        for r in PUBLISHED
        if r["paper"] == paper and (benchmark is None or r["benchmark"] == benchmark)
    ]
