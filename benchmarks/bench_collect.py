"""Dataset-scale collection speed and memory: ActivationStore.collect against raw transformers.

Usage: ``python benchmarks/bench_collect.py [--quick] [--device cuda] [--shapes llava-7b]`` (options:
``benchmarks/_common.py``). Prints a table, then one JSON line with

- ``collect_vs_hf``: ``ActivationStore.collect(keep="stats", positions="last")`` with its default
  prompt building over N prompts (batches of 8) against the bare loop of raw HF forwards with
  ``output_hidden_states=True`` over the same, already built, batches. Target <= 1.05. The default
  builds the next batch's prompts in a background thread on an accelerator and between forwards on
  CPU: ``collect_prefetch_vs_hf`` (``prefetch=True``) and ``collect_sequential_vs_hf``
  (``prefetch=False``) time both, and ``prompts_vs_hf`` the prompt building alone (tokenizer, chat
  template, image processor), which the bare loop gets for free.
- ``rss_growth_8x``: peak RSS growth (fraction) when the dataset grows 8x with ``keep="stats"``
  (both runs in full batches). Target < 0.05 (memory independent of the dataset size).

Sizes: quick, 64 prompts of 112 px images (64 image tokens) and 16 -> 128 prompts for RSS; mid
(~100M), 32 prompts (256 image tokens each) and 8 -> 64 for RSS: each mid variant is 4 forwards of
8 x ~290 tokens. Timings are medians of interleaved repeats (3 quick, 2 mid; the RSS runs are the
warm-up); the mid-size run takes about 4 minutes on 2 idle cores.
"""

from __future__ import annotations

import resource
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import build_models, emit, hf_inputs, interleaved_medians, parse_args  # noqa: E402

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
    args = parse_args(__doc__, argv)
    if args.quick:  # 112 px: 64 image tokens per prompt
        args.sizes = {**args.sizes, "image_size": 112}
    n_prompts, rss_small = (64, 16) if args.quick else (32, 8)
    repeats = args.repeats or (3 if args.quick else 2)

    from vlminterp import Condition, PromptBatch
    from vlminterp.cache import ActivationStore

    torch.manual_seed(0)
    model, hf, n_params = build_models(args)
    image_size = args.sizes["image_size"]

    def collect(samples, prefetch: bool | None = None) -> None:
        ActivationStore.collect(
            model, samples, ["image"], batch_size=BATCH, positions="last", progress=False, prefetch=prefetch
        )

    # memory first (peak RSS is monotone): the same collect on an 8x larger dataset; also the warm-up
    collect(make_samples(rss_small, image_size))
    rss_a = peak_rss_mb()
    collect(make_samples(8 * rss_small, image_size))
    rss_b = peak_rss_mb()

    samples = make_samples(n_prompts, image_size)
    chunks = [samples[i : i + BATCH] for i in range(0, n_prompts, BATCH)]
    dtype = next(hf.parameters()).dtype
    inputs = [hf_inputs(PromptBatch.paired(model, c, [Condition.IMAGE]), args.device, dtype) for c in chunks]

    def raw_hf():
        with torch.no_grad():
            for ids, kwargs in inputs:
                hf(input_ids=ids, output_hidden_states=True, **kwargs)

    def prompts():
        for chunk in chunks:
            PromptBatch.paired(model, chunk, [Condition.IMAGE])

    fns = {
        "raw_hf": raw_hf,
        "collect_prefetch": lambda: collect(samples, prefetch=True),
        "collect_sequential": lambda: collect(samples, prefetch=False),
        "prompts": prompts,
    }
    raw_hf()
    med = interleaved_medians(fns, repeats, warmup=False, device=args.device)
    default = "collect_sequential" if model.device.type == "cpu" else "collect_prefetch"
    ratios = {
        "collect_vs_hf": med[default] / med["raw_hf"],
        "collect_prefetch_vs_hf": med["collect_prefetch"] / med["raw_hf"],
        "collect_sequential_vs_hf": med["collect_sequential"] / med["raw_hf"],
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
        "params_m": round(n_params / 1e6, 1),
        "prompts": n_prompts,
        "batch_size": BATCH,
        "rss_prompts": [rss_small, 8 * rss_small],
        "rss_mb": [round(rss_a), round(rss_b)],
        "repeats": repeats,
    }
    emit(args, "bench_collect", ratios, med, {"collect_vs_hf": 1.05, "rss_growth_8x": 0.05}, config)
    return ratios


if __name__ == "__main__":
    main()
