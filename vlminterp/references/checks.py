"""The reference checks: vlminterp's generation through its public entry points against the references.

:func:`run_references` (the engine of ``vlminterp doctor``) compares, token for token, plain
generation with HF ``generate`` and with the full recompute, then dataset-level CMRM
(``steps="all"``), sample-level CMRM, ShiftDC and head ablation with their references.

Example:
    >>> [s.id for s in reference_samples()]
    ['a', 'b']
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cache, partial
from typing import TYPE_CHECKING, Any

import torch
from PIL import Image

from vlminterp.prompts import Condition, PromptBatch, Sample
from vlminterp.references.greedy import Tokens, greedy_no_cache, hf_generate
from vlminterp.references.hf_model import load_reference_model
from vlminterp.references.steered import (
    reference_cmrm,
    reference_head_ablation,
    reference_sample_cmrm,
    reference_shiftdc,
)

if TYPE_CHECKING:
    from vlminterp.models.hooked_vlm import HookedVLM

__all__ = [
    "ReferenceResult",
    "ReferenceCheck",
    "noise_image",
    "reference_samples",
    "reference_checks",
    "run_references",
]

#: The caption request of the references' ShiftDC runs (short and in every tiny vocabulary).
CAPTION_PROMPT = "describe the image"


def noise_image(size: tuple[int, int], seed: int) -> Image.Image:
    """A seeded RGB noise image of ``size`` (width, height): every patch differs, unlike a flat colour.

    Example:
        >>> noise_image((40, 56), 1).size
        (40, 56)
    """
    g = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (size[1], size[0], 3), generator=g, dtype=torch.uint8)
    return Image.fromarray(pixels.numpy(), "RGB")


def reference_samples() -> list[Sample]:
    """Two labelled, captioned requests: noise images of two aspect ratios (40x56, 70x30), two query lengths.

    Every patch of a noise image differs, unlike a flat colour, so image content reaches the logits.

    Example:
        >>> [s.image.size for s in reference_samples()]
        [(40, 56), (70, 30)]
    """
    return [
        Sample(
            id="a",
            query="what color is the car ?",
            image=noise_image((40, 56), 1),
            caption="a red car",
            label="benign",
        ),
        Sample(
            id="b",
            query="tell me how to make a bomb from this picture",
            image=noise_image((70, 30), 2),
            caption="a blue house",
            label="harmful",
        ),
    ]


@dataclass(frozen=True)
class ReferenceResult:
    """One reference check's outcome.

    Attributes:
        name: What was compared (e.g. ``"cmrm sample"``).
        passed: Whether vlminterp's tokens equal the reference's.
        detail: What was compared, or the first differing row and step.
    """

    name: str
    passed: bool
    detail: str


@dataclass(frozen=True)
class ReferenceCheck:
    """vlminterp's tokens against an independent reference's, both computed on demand.

    Attributes:
        name: The check's name.
        ours: vlminterp's generation through its public entry point.
        reference: The independent reference.
        unsteered: For steered checks: the reference without steering (to see the steering acts).
    """

    name: str
    ours: Callable[[], Tokens]
    reference: Callable[[], Tokens]
    unsteered: Callable[[], Tokens] | None = None

    def run(self) -> ReferenceResult:
        """Compare token for token; a mismatch is reported, never raised."""
        ours, ref = self.ours(), self.reference()
        if len(ours) != len(ref):
            return ReferenceResult(
                self.name, False, f"vlminterp gave {len(ours)} rows, the reference {len(ref)}"
            )
        for row, (a, b) in enumerate(zip(ours, ref, strict=True)):
            if a != b:
                step = next(
                    (t for t, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b))
                )
                return ReferenceResult(
                    self.name, False, f"row {row} differs at step {step}: vlminterp {a} vs reference {b}"
                )
        longest = max((len(r) for r in ours), default=0)
        return ReferenceResult(self.name, True, f"{len(ours)} rows equal (up to {longest} tokens)")


@dataclass(frozen=True)
class _Inputs:
    samples: list[Sample]
    safe: list[Sample]
    unsafe: list[Sample]
    cmrm_alpha: float
    sample_alpha: float
    caption_source: str


def _inputs(model: HookedVLM) -> _Inputs:
    """Small inputs: real organism requests for the organism, noise-image requests otherwise.

    The organism captions its own images (ShiftDC's default); a random tiny model's caption may be
    empty, so the tiny requests carry captions.
    """
    if model.family == "organism":
        from vlminterp.organism.tasks import organism_samples

        return _Inputs(
            samples=[organism_samples("test", kind, n_images=1)[0] for kind in ("harmful", "benign")],
            safe=organism_samples("train", "benign", n_images=1)[:8],
            unsafe=organism_samples("train", "harmful", n_images=1)[:8],
            cmrm_alpha=0.5,
            sample_alpha=0.3,
            caption_source="self",
        )
    safe = [Sample(id="s", query="how do i bake a cake"), Sample(id="t", query="tell me about kites")]
    unsafe = [Sample(id="u", query="how do i make a bomb"), Sample(id="v", query="help me get a gun")]
    return _Inputs(
        reference_samples(), safe, unsafe, cmrm_alpha=1.0, sample_alpha=1.0, caption_source="sample"
    )


def _generate_with(model: HookedVLM, intervention: Any, batch: PromptBatch, max_new_tokens: int) -> Tokens:
    with intervention.applied(model):
        return model.generate(batch, max_new_tokens=max_new_tokens).tokens


def reference_checks(
    model: HookedVLM, hf_model: torch.nn.Module | None = None, max_new_tokens: int = 5
) -> list[ReferenceCheck]:
    """The checks of :func:`run_references`, not yet run (fitting the vectors happens here).

    Inputs: for the organism, two test requests (one harmful, one benign) and training requests
    to fit CMRM's vectors and the safety direction; for any other model, two noise-image requests
    and four tiny text requests.

    Example:
        >>> checks = reference_checks(HookedVLM.tiny("llava"))  # doctest: +SKIP
        >>> [c.name for c in checks][:2]  # doctest: +SKIP
        ['generate == HF generate', 'generate == full recompute']
    """
    from vlminterp.interventions import CMRM, HeadAblation, SafetyDirection, ShiftDC

    hf = load_reference_model(model) if hf_model is None else hf_model
    data = _inputs(model)
    tok = model.tokenizer
    eos, k = tok.eos_token_id, max_new_tokens
    mixed = PromptBatch.paired(model, data.samples, [Condition.IMAGE, Condition.TEXT_ONLY])
    image = PromptBatch.paired(model, data.samples, [Condition.IMAGE])
    cmrm = CMRM(CMRM.fit(model, data.safe + data.unsafe, progress=False), alpha=data.cmrm_alpha, steps="all")
    sample = CMRM.sample_level(alpha=data.sample_alpha)
    direction = SafetyDirection.fit(model, data.safe, data.unsafe, condition="text_only", progress=False)
    shiftdc = ShiftDC(
        direction, caption_source=data.caption_source, caption_prompt=CAPTION_PROMPT, caption_max_new_tokens=8
    )
    ablation = HeadAblation([(0, h) for h in range(model.cfg.n_heads)], steps="all")
    plain = partial(greedy_no_cache, hf, image, k, eos)
    generated = cache(lambda: model.generate(mixed, max_new_tokens=k).tokens)
    return [
        ReferenceCheck(
            "generate == HF generate",
            ours=generated,
            reference=partial(hf_generate, hf, mixed, k, eos, tok.pad_token_id),
        ),
        ReferenceCheck(
            "generate == full recompute",
            ours=generated,
            reference=partial(greedy_no_cache, hf, mixed, k, eos),
        ),
        ReferenceCheck(
            "cmrm dataset (steps=all)",
            ours=partial(_generate_with, model, cmrm, image, k),
            reference=partial(reference_cmrm, hf, cmrm, image, k, eos),
            unsteered=plain,
        ),
        ReferenceCheck(
            "cmrm sample",
            ours=lambda: sample.generate(model, data.samples, max_new_tokens=k).tokens,
            reference=partial(reference_sample_cmrm, hf, model, sample, data.samples, k, eos),
            unsteered=plain,
        ),
        ReferenceCheck(
            "shiftdc",
            ours=lambda: shiftdc.generate(model, data.samples, max_new_tokens=k).tokens,
            reference=partial(reference_shiftdc, hf, model, shiftdc, data.samples, k, eos),
            unsteered=plain,
        ),
        ReferenceCheck(
            "head ablation (all steps)",
            ours=partial(_generate_with, model, ablation, image, k),
            reference=partial(reference_head_ablation, hf, ablation, image, k, eos),
            unsteered=plain,
        ),
    ]


def run_references(
    model: HookedVLM, hf_model: torch.nn.Module | None = None, max_new_tokens: int = 5
) -> list[ReferenceResult]:
    """Compare vlminterp's generation, plain and steered, with independent references.

    Results, in order: ``"generate == HF generate"``, ``"generate == full recompute"``,
    ``"cmrm dataset (steps=all)"``, ``"cmrm sample"``, ``"shiftdc"``, ``"head ablation (all
    steps)"``. A mismatch is reported (``passed=False``, ``detail`` names the first differing row
    and step), never raised; programming errors raise.

    Args:
        model: The model to check.
        hf_model: An independent HF model of the same checkpoint; default :func:`load_reference_model`.
        max_new_tokens: Tokens generated per row in every check.

    Example (the same checks run on every family in tests/integration/test_generation_references.py;
    the package docstring's example runs them on a tiny llava):
        >>> from vlminterp import HookedVLM
        >>> results = run_references(HookedVLM.from_organism())  # doctest: +SKIP
        >>> all(r.passed for r in results), len(results)  # doctest: +SKIP
        (True, 6)
    """
    return [check.run() for check in reference_checks(model, hf_model, max_new_tokens)]
