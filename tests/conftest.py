"""Shared fixtures: one read-only tiny model per session, sample sets, and a hook-leak check.

Tiers: ``tests/unit`` (no model), ``tests/integration`` (tiny random VLMs and the shipped organism,
offline), ``-m slow`` (retraining the organism, large configs).
"""

from __future__ import annotations

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

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


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


def noise_image(size: tuple[int, int], seed: int) -> Image.Image:
    """A seeded RGB noise image of ``size`` (width, height): every patch differs, unlike a flat colour."""
    g = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (size[1], size[0], 3), generator=g, dtype=torch.uint8)
    return Image.fromarray(pixels.numpy(), "RGB")


@pytest.fixture(scope="session")
def noise_pair():
    """Two samples with noise images of different aspect ratios (40x56, 70x30) and query lengths."""
    from vlminterp import Sample

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


def hf_decoder_layers(hf) -> torch.nn.ModuleList:
    """The text decoder's layer list of a plain HF VLM (not the vision tower's)."""
    n_layers = getattr(hf.config, "text_config", hf.config).num_hidden_layers
    found = [
        m
        for name, m in hf.named_modules()
        if isinstance(m, torch.nn.ModuleList)
        and len(m) == n_layers
        and name.endswith("layers")
        and not any(v in name for v in ("vision", "visual"))
    ]
    assert len(found) == 1, f"expected one decoder layer list, found {len(found)}"
    return found[0]


def hf_forward(hf, batch, **kwargs):
    """Plain transformers on ``batch``: ``(output, [every decoder layer's output])``, hooks removed after.

    ``kwargs`` override ``batch.model_kwargs()``; a None value drops that argument.
    """
    layers = hf_decoder_layers(hf)
    outputs = {}
    handles = [
        layer.register_forward_hook(
            lambda m, i, o, k=k: outputs.__setitem__(k, o[0] if isinstance(o, tuple) else o)
        )
        for k, layer in enumerate(layers)
    ]
    merged = {**batch.model_kwargs(), **kwargs}
    try:
        with torch.no_grad():
            out = hf(input_ids=batch.input_ids, **{k: v for k, v in merged.items() if v is not None})
    finally:
        for h in handles:
            h.remove()
    return out, [outputs[k] for k in range(len(layers))]


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
