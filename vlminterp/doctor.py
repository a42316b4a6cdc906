"""``vlminterp doctor``: check the installed versions against independent references, per family.

A new release of transformers or TransformerLens can change every number vlminterp reports without
an error (transformers 5.24 silently broke the bridge's KV cache). The doctor loads a tiny random
checkpoint of each family through the same code path as a real one, and compares it with plain
``transformers`` loaded separately: logits and every ``resid_post`` (eager attention), then greedy
generation against HF ``generate`` and a full-recompute loop with no KV cache, and steered
generation (dataset / sample CMRM, ShiftDC, head ablation) against the steering rule written with
plain torch hooks (:mod:`vlminterp.references`). It prints one verdict per family with the
versions, and exits 1 when any check fails.

Example:
    >>> from vlminterp.doctor import main
    >>> main(["--families", "llava"])  # doctest: +SKIP
    torch 2.13.0 | transformers 5.23.0 | transformer-lens 4.3.0 | ...
    llava            PASS  8/8 checks  1.9 s
    0
"""

from __future__ import annotations

import argparse
import logging
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from vlminterp.references import ReferenceResult, hf_forward, load_reference_model, run_references
from vlminterp.versions import key_versions

__all__ = ["FamilyVerdict", "check_family", "forward_check", "main"]

_FORWARD_CHECK = "logits + resid_post == HF"
_TOLERANCE = 1e-4


@dataclass
class FamilyVerdict:
    """The doctor's result for one family.

    Attributes:
        family: Family name.
        results: One :class:`~vlminterp.references.ReferenceResult` per check.
        seconds: Wall time of the family's checks.
    """

    family: str
    results: list[ReferenceResult] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return bool(self.results) and all(r.passed for r in self.results)

    def line(self) -> str:
        """One line: family, PASS/FAIL, counts, time, and the failed checks with their details."""
        ok = sum(r.passed for r in self.results)
        head = f"{self.family:16s} {'PASS' if self.passed else 'FAIL'}  {ok}/{len(self.results)} checks  {self.seconds:.1f} s"
        failed = [f"\n    - {r.name}: {r.detail}" for r in self.results if not r.passed]
        return head + "".join(failed)


def forward_check(model, hf_model) -> ReferenceResult:
    """Logits and every ``blocks.{l}.hook_resid_post`` of ``model`` equal ``hf_model``'s on IMAGE / TEXT_ONLY rows."""
    from vlminterp.prompts import Condition, PromptBatch
    from vlminterp.references import reference_samples

    batch = PromptBatch.paired(model, reference_samples(), [Condition.IMAGE, Condition.TEXT_ONLY])
    names = model.hook_names("resid_post")
    logits, cache = model.run_with_cache(batch, names_filter=names)
    ref, ref_resid = hf_forward(hf_model, batch)
    real = batch.attention_mask.bool()
    worst = (logits[real] - ref.logits[real]).abs().max().item()
    for name, expected in zip(names, ref_resid, strict=True):
        worst = max(worst, (cache[name][real] - expected[real]).abs().max().item())
    return ReferenceResult(
        _FORWARD_CHECK, worst <= _TOLERANCE, f"max |diff| {worst:.2e} (tolerance {_TOLERANCE:g})"
    )


def check_family(family: str, max_new_tokens: int = 5) -> FamilyVerdict:
    """Every check on a tiny random ``family`` checkpoint; a crash is reported as a failed check."""
    from vlminterp.models.hooked_vlm import HookedVLM
    from vlminterp.specs import model_name

    verdict = FamilyVerdict(family)
    start = time.perf_counter()
    try:
        model = HookedVLM.tiny(family)
        verdict.results.append(ReferenceResult("load", True, model_name(model)))
        hf_model = load_reference_model(model)
        verdict.results.append(forward_check(model, hf_model))
        verdict.results.extend(run_references(model, hf_model, max_new_tokens=max_new_tokens))
    except Exception as err:  # the verdict names the crash instead of stopping the other families
        step = "load" if not verdict.results else "run"
        verdict.results.append(ReferenceResult(step, False, f"{type(err).__name__}: {err}"))
    verdict.seconds = time.perf_counter() - start
    return verdict


def main(argv: Sequence[str] | None = None) -> int:
    """``vlminterp doctor [--families a,b] [--max-new-tokens N]``; returns 0 when every family passes."""
    from vlminterp.testing import tiny_families

    available = tiny_families()
    parser = argparse.ArgumentParser(prog="vlminterp doctor", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--families", default=",".join(available), help=f"comma-separated; default all: {available}"
    )
    parser.add_argument("--max-new-tokens", type=int, default=5, help="greedy tokens per generation check")
    args = parser.parse_args(argv)
    families = [f.strip() for f in args.families.split(",") if f.strip()]
    unknown = sorted(set(families) - set(available))
    if unknown:
        parser.error(f"no tiny build for {unknown}; choose from {available}")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning)  # deprecation notes, not verdicts
    for noisy in ("transformers", "transformer_lens"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    torch.manual_seed(0)
    print(" | ".join(f"{k} {v}" for k, v in key_versions().items()), flush=True)
    verdicts = []
    for family in families:
        verdicts.append(check_family(family, args.max_new_tokens))
        print(verdicts[-1].line(), flush=True)
    broken = [v.family for v in verdicts if not v.passed]
    if broken:
        print(
            f"BROKEN with these versions: {', '.join(broken)}. Install the tested lock (README, Installs) "
            "or report the versions above."
        )
        return 1
    print(f"all {len(verdicts)} of {len(verdicts)} families pass")
    return 0
