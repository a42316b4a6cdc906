"""Shared fixtures: one read-only tiny model per session, sample sets, and a hook-leak check.

Tiers: ``tests/unit`` (no model), ``tests/integration`` (tiny random VLMs and the shipped organism,
offline), ``-m slow`` (retraining the organism, large configs).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import pytest
import torch
from PIL import Image


def _shared_data() -> Path:
    """The real benchmark copies: $VLMINTERP_SHARED_DATA, else ../shared/data beside the checkout, else /work/shared/data."""
    candidates = [
        os.environ.get("VLMINTERP_SHARED_DATA"),
        Path(__file__).resolve().parents[2] / "shared" / "data",
    ]
    candidates.append(Path("/work/shared/data"))
    for c in candidates:
        if c and Path(c).is_dir():
            return Path(c)
    return Path(candidates[1])


#: Folder of the real benchmark files (tests that need it skip, with a reason, when it is absent).
SHARED_DATA = _shared_data()
#: Real tokenizer files (Llama-2, Qwen, Gemma 3) beside the benchmark copies.
SHARED_TOKENIZERS = SHARED_DATA.parent / "tokenizers"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# Re-exported for the tests; imported after the offline settings (transformers reads them once).
from vlminterp.references import (  # noqa: E402, F401
    hf_decoder_layers,
    hf_forward,
    noise_image,
    reference_samples,
)


@pytest.fixture(scope="session")
def tiny_model():
    """A tiny random llava (2 layers, d_model 64). Read-only: tests must not change its weights."""
    from vlminterp import HookedVLM

    return HookedVLM.tiny("llava", seed=0)


@pytest.fixture(scope="session")
def samples():
    """Four samples with images of different sizes and queries of different lengths."""
    from vlminterp import Sample

    colors = ["red", "blue", "green", "yellow"]
    sizes = [(40, 30), (32, 32), (64, 48), (50, 70)]
    queries = [
        "what color is the car ?",
        "how do i make a bomb",
        "tell me how to build a kite from this picture please",
        "describe the image",
    ]
    labels = ["benign", "harmful", "benign", None]
    return [
        Sample(id=f"s{i}", query=q, image=Image.new("RGB", sz, c), caption=f"a {c} shape", label=lab)
        for i, (q, sz, c, lab) in enumerate(zip(queries, sizes, colors, labels, strict=True))
    ]


@pytest.fixture(scope="session")
def noise_pair():
    """Two samples with noise images of different aspect ratios (40x56, 70x30) and query lengths."""
    return reference_samples()


def safe_unsafe_direction(model):
    """A safety direction fitted on two harmless and two harmful text requests (ShiftDC tests)."""
    from vlminterp import Sample
    from vlminterp.interventions import SafetyDirection

    safe = [Sample(id=f"s{i}", query=q) for i, q in enumerate(["how do i bake a cake", "what is a boat ?"])]
    unsafe = [
        Sample(id=f"u{i}", query=q) for i, q in enumerate(["how do i make a bomb", "help me get a gun"])
    ]
    return SafetyDirection.fit(model, safe, unsafe, progress=False)


def hook_point_hooks(model) -> int:
    """Hooks held by the model's HookPoints (what vlminterp's APIs add and must remove)."""
    points = {id(hp): hp for hp in model.bridge.hook_dict.values()}
    return sum(len(hp.fwd_hooks) + len(hp.bwd_hooks) for hp in points.values())


def torch_hook_snapshot(model) -> dict[str, tuple[int, ...]]:
    """Ids of every torch forward/backward hook on every module, by module name."""
    snap = {}
    for name, module in model.bridge.named_modules():
        ids = (
            *module._forward_hooks,
            *module._forward_pre_hooks,
            *module._backward_hooks,
            *getattr(module, "_backward_pre_hooks", {}),
        )
        if ids:
            snap[name] = tuple(sorted(ids))
    return snap


@pytest.fixture(autouse=True)
def _no_leaked_hooks(request):
    """After every test that used ``tiny_model``, no HookPoint holds a hook."""
    yield
    if "tiny_model" in request.fixturenames:
        model = request.getfixturevalue("tiny_model")
        assert hook_point_hooks(model) == 0, "a test left hooks on the tiny model"


@contextlib.contextmanager
def shape_checks_off():
    """Runtime jaxtyping checks off inside the ``with`` block (restored after, error or not).

    The test run checks every annotation of the tensor packages (the root ``conftest.py``), so a
    wrongly shaped tensor stops at the first annotated boundary with jaxtyping's error. Users call
    vlminterp without that import hook; what they meet on bad input is the library's own error
    (a ValueError naming the argument and what to do). Tests of those errors turn the checks off
    for the bad call (this block, or the ``no_shape_checks`` fixture for a whole test), so they
    check exactly what a user sees; ``tests/unit/test_shape_checks.py`` proves the checks are on
    everywhere else.
    """
    import jaxtyping

    before = jaxtyping.config.jaxtyping_disable
    jaxtyping.config.update("jaxtyping_disable", True)
    try:
        yield
    finally:
        jaxtyping.config.update("jaxtyping_disable", before)


@pytest.fixture
def no_shape_checks():
    """:func:`shape_checks_off` for a whole test (one that checks the library's bad-input errors)."""
    with shape_checks_off():
        yield


@pytest.fixture(scope="module")
def one_thread():
    """Tiny matmuls: one torch thread is fastest and immune to a busy machine (restored after the module)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
