"""Dataset-scale collection speed and memory: ActivationStore.collect against raw transformers.

Usage: ``python benchmarks/bench_collect.py [--quick]``. Prints a table, then one JSON line with

- ``collect_vs_hf``: ``ActivationStore.collect(keep="stats", positions="last")`` over N prompts
  (batches of 8) against the bare loop of raw HF forwards with ``output_hidden_states=True`` over
  the same, already built, batches. Target <= 1.1. collect also builds its prompts (tokenizer and
  image processor), which the bare loop gets for free; ``prompts_vs_hf`` reports that part alone,
  and ``collect_vs_run_with_cache`` compares with ``HookedVLM.run_with_cache`` over the built
  batches (the store's own overhead: prompts, selection, statistics).
- ``rss_growth_8x``: peak RSS growth (fraction) when the dataset grows 8x with ``keep="stats"``.
  Target < 0.05 (memory independent of the dataset size).

Timings are medians of interleaved repeats (CPU timing is noisy).
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import LLAVA_100M, LLAVA_QUICK, emit, interleaved_medians, malloc_settings  # noqa: E402

FULL = LLAVA_100M
QUICK = {**LLAVA_QUICK, "image_size": 112}
BATCH = 8


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def make_samples(n: int, image_size: int) -> list:
    """``n`` samples of varied query length; images are shared objects so the dataset itself is small."""
    from PIL import Image

    from vlminterp import Sample

    words = (
        "tell me how to build a kite from the picture and then describe the image in detail please".split()
    )
    images = [
        Image.new("RGB", (image_size + 8 * k, image_size), c) for k, c in enumerate(("red", "blue", "green"))
    ]
    return [
        Sample(id=f"b{i}", query=" ".join(words[: 4 + i % 12]), image=images[i % 3], label="benign")
        for i in range(n)
    ]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a smaller model and dataset (< 1 minute)")
    parser.add_argument("--repeats", type=int, default=None)
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    n_prompts, repeats = (64, args.repeats or 3) if args.quick else (256, args.repeats or 3)
    rss_small = 16 if args.quick else 64

    from transformers import LlavaForConditionalGeneration

    from vlminterp import Condition, HookedVLM, PromptBatch
    from vlminterp.cache import ActivationStore

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench"
        from vlminterp.testing import build_tiny_vlm

        build_tiny_vlm("llava", path, seed=0, **sizes)
        model = HookedVLM.from_pretrained(path)
        hf = LlavaForConditionalGeneration.from_pretrained(path, attn_implementation="eager").eval()
    n_params = sum(p.numel() for p in hf.parameters())

    # memory first (peak RSS is monotone): the same collect on an 8x larger dataset
    def stats_run(n: int) -> None:
        ActivationStore.collect(
            model, make_samples(n, sizes["image_size"]), ["image"], batch_size=BATCH, progress=False
        )

    stats_run(rss_small)
    rss_a = peak_rss_mb()
    stats_run(8 * rss_small)
    rss_b = peak_rss_mb()

    samples = make_samples(n_prompts, sizes["image_size"])
    chunks = [samples[i : i + BATCH] for i in range(0, n_prompts, BATCH)]
    batches = [PromptBatch.paired(model, chunk, [Condition.IMAGE]) for chunk in chunks]
    inputs = [(b.input_ids, b.model_kwargs()) for b in batches]

    def raw_hf():
        with torch.no_grad():
            for ids, kwargs in inputs:
                hf(input_ids=ids, output_hidden_states=True, **kwargs)

    names = model.hook_names("resid_post")

    def cache_only():
        for batch in batches:
            model.run_with_cache(batch, names_filter=names, positions="last")

    def prompts():
        for chunk in chunks:
            PromptBatch.paired(model, chunk, [Condition.IMAGE])

    def collect():
        ActivationStore.collect(model, samples, ["image"], batch_size=BATCH, positions="last", progress=False)

    fns = {"raw_hf": raw_hf, "collect": collect, "run_with_cache": cache_only, "prompts": prompts}
    med = interleaved_medians(fns, repeats)
    ratios = {
        "collect_vs_hf": med["collect"] / med["raw_hf"],
        "collect_vs_run_with_cache": med["collect"] / med["run_with_cache"],
        "prompts_vs_hf": med["prompts"] / med["raw_hf"],
        "rss_growth_8x": (rss_b - rss_a) / rss_a,
    }
    print(f"model: random llava, {n_params / 1e6:.1f}M parameters; {n_prompts} prompts, batches of {BATCH}")
    print(f"{'variant':<22}{'median s':>10}{'ratio to HF':>14}")
    for name, sec in med.items():
        print(f"{name:<22}{sec:>10.2f}{sec / med['raw_hf']:>14.3f}")
    print(f"peak RSS: {rss_a:.0f} MB after {rss_small} prompts, {rss_b:.0f} MB after {8 * rss_small} prompts")
    print(f"rss_growth_8x: {ratios['rss_growth_8x']:.4f}")
    config = {
        "quick": args.quick,
        "params_m": round(n_params / 1e6, 1),
        "prompts": n_prompts,
        "batch_size": BATCH,
        "rss_prompts": [rss_small, 8 * rss_small],
        "repeats": repeats,
        "threads": torch.get_num_threads(),
        "malloc": malloc_settings(),
        **sizes,
    }
    emit(
        "bench_collect",
        {k: round(v, 4) for k, v in ratios.items()},
        {"collect_vs_hf": 1.1, "rss_growth_8x": 0.05},
        config,
    )
    return ratios


if __name__ == "__main__":
    main()
