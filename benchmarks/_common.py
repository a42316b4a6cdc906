"""Shared helpers of the benchmarks: timing, the JSON result line, the malloc note."""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

#: Sizes of the benchmark llava: about 100M parameters (full) and a quick variant (< 1 minute).
LLAVA_100M = dict(
    d_model=768,
    n_layers=12,
    n_heads=12,
    n_kv_heads=12,
    d_mlp=3072,
    vision_d_model=256,
    image_size=224,
    patch_size=14,
)
LLAVA_QUICK = dict(
    d_model=256,
    n_layers=4,
    n_heads=8,
    n_kv_heads=8,
    d_mlp=1024,
    vision_d_model=64,
    image_size=224,
    patch_size=14,
)


def median_seconds(fn: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    """Median wall time of ``fn`` over ``repeats`` runs after ``warmup`` untimed runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def interleaved_medians(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median seconds per function, timing them round-robin so machine noise hits all alike."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in times.items()}


def malloc_settings() -> dict:
    """The glibc malloc settings this run used: environment and vlminterp's mallopt (up to 40% of CPU time)."""
    from vlminterp.malloc import malloc_settings as settings

    return settings()


def emit(benchmark: str, ratios: dict[str, float], targets: dict[str, float], config: dict) -> None:
    """Print the convention's last line: one JSON object."""
    print(json.dumps({"benchmark": benchmark, "ratios": ratios, "targets": targets, "config": config}))


def build_models(sizes: dict, with_hf: bool = True):
    """A random llava of ``sizes`` loaded as HookedVLM and (optionally) as an independent HF model.

    Returns:
        ``(model, hf_or_None, n_params)``; the HF model uses eager attention, like the bridge.
    """
    from transformers import LlavaForConditionalGeneration

    from vlminterp import HookedVLM
    from vlminterp.testing import build_tiny_vlm

    with tempfile.TemporaryDirectory() as tmp:
        path = build_tiny_vlm("llava", Path(tmp) / "bench", seed=0, **sizes)
        model = HookedVLM.from_pretrained(path)
        hf = (
            LlavaForConditionalGeneration.from_pretrained(path, attn_implementation="eager").eval()
            if with_hf
            else None
        )
    return model, hf, sum(p.numel() for p in model.hf_model.parameters())
