"""vlminterp's generation, plain and steered, against independent references (``vlminterp.references``).

Every tiny family and the shipped organism: KV-cached ``HookedVLM.generate`` equals HF ``generate``
and a full-recompute greedy loop on a separately loaded HF model; dataset- and sample-level CMRM,
ShiftDC and head ablation, through their public entry points, equal the same rules written as
plain torch hooks on that HF model. The full-recompute loop is itself checked against HF
``generate``, and on the organism every steered reference changes the tokens (so the steered
comparisons are not vacuous).

These tests catch the transformers >= 5.24 KV-cache keyword bug: with ``VLMINTERP_KV_CACHE_FIX=0``
under ``.venv-latest`` the vlminterp-vs-reference tests fail.
"""

from __future__ import annotations

import pytest

from vlminterp import Condition, HookedVLM, PromptBatch
from vlminterp.references import (
    greedy_no_cache,
    hf_generate,
    load_reference_model,
    reference_checks,
    reference_samples,
    run_references,
)
from vlminterp.testing import tiny_families

pytestmark = [pytest.mark.reference, pytest.mark.usefixtures("one_thread")]

NAMES = [
    "generate == HF generate",
    "generate == full recompute",
    "cmrm dataset (steps=all)",
    "cmrm sample",
    "shiftdc",
    "head ablation (all steps)",
]


@pytest.fixture(scope="module", params=[*tiny_families(), "organism"])
def pair(request):
    """``(HookedVLM, independent HF model)`` of one tiny family or the organism."""
    model = HookedVLM.from_organism() if request.param == "organism" else HookedVLM.tiny(request.param)
    return model, load_reference_model(model)


def test_vlminterp_generation_equals_every_reference(pair):
    model, hf = pair
    results = run_references(model, hf)
    assert [r.name for r in results] == NAMES
    failed = [f"{r.name}: {r.detail}" for r in results if not r.passed]
    assert not failed, f"{model.family}: " + "; ".join(failed)
    assert model.count_hooks() == 0


def test_full_recompute_equals_hf_generate(pair):
    """The reference loop itself: no cache, whole sequence every step == HF's cached ``generate``."""
    model, hf = pair
    batch = PromptBatch.paired(
        model, reference_samples(), [Condition.IMAGE, Condition.TEXT_ONLY, Condition.CAPTION]
    )
    tok = model.tokenizer
    ours = greedy_no_cache(hf, batch, 8, tok.eos_token_id)
    assert ours == hf_generate(hf, batch, 8, tok.eos_token_id, tok.pad_token_id)
    assert any(ours), "nothing was generated"


def test_every_steered_reference_changes_the_organism_tokens():
    model = HookedVLM.from_organism()
    checks = [c for c in reference_checks(model) if c.unsteered is not None]
    assert [c.name for c in checks] == NAMES[2:]
    unsteered = checks[0].unsteered()
    for check in checks:
        assert check.reference() != unsteered, f"{check.name}: the steering changed no token"
