"""Dataset-scale collection speed and memory: ActivationStore.collect against raw transformers.

Usage: ``python benchmarks/bench_collect.py [--quick] [--device cuda] [--shapes llava-7b]`` (options:
``benchmarks/_common.py``). Prints a table, then one JSON line with

- ``collect_vs_hf``: ``ActivationStore.collect(keep="stats", positions="last")`` of every layer
  with its default prompt building over N prompts against the bare loop of raw HF forwards with
  ``output_hidden_states=True`` over the same, already built, batches (what a plain transformers
  script does: HF's defaults, so it also fills the KV cache and unembeds every position). Target
  <= 1.05. Collect does less, legitimately: no KV cache (``use_cache=False``) and no final norm or
  unembedding (its forwards stop after the last collected layer); ``collect_vs_hf_no_cache``
  compares it with the raw loop that passes ``use_cache=False`` too (no target). The default
  builds the next batch's prompts in a background thread on an accelerator and between forwards on
  CPU: ``collect_prefetch_vs_hf`` (``prefetch=True``; quick and GPU runs) and
  ``collect_sequential_vs_hf`` (``prefetch=False``) time both, and ``prompts_vs_hf`` the prompt
  building alone (tokenizer, chat template, image processor), which the bare loop gets for free.
- ``collect_half_layers_vs_hf``: collect of the first half of the layers against the same full
  raw forward (no target): its forwards stop after the last collected layer, so it costs about
  half a forward plus the vision tower.
- ``rss_growth_8x``: peak RSS growth (fraction) when the dataset grows 8x with ``keep="stats"``
  (both runs in full batches of the same shapes: query lengths cycle within each batch). Target
  < 0.05 (memory independent of the dataset size).

``ms_per_token`` divides each median by the N prompts' real tokens. Sizes: quick, 64 prompts of
112 px images (64 image tokens), batches of 8, 16 -> 128 prompts for RSS; mid (116M), 16 prompts
of 224 px images (256 image tokens, ~270 tokens each), batches of 4, 4 -> 32 prompts for RSS;
llava-7b, 16 prompts of 336 px (576 image tokens), batches of 4. Timings are medians of 3 interleaved
repeats (the RSS runs are the warm-up), measured twice (``--malloc both``): in a fresh process with
the library's malloc default and in one with ``VLMINTERP_MALLOC=0``. The mid-size run is 2
processes x about 58 forwards of 4 x ~270 tokens (9 for the RSS runs, 16 per repeat), 3.4-3.6
minutes on 2 idle cores, sized for under 5 minutes.
"""

from __future__ import annotations

import resource
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import build_models, emit, hf_inputs, interleaved_medians, parse_args, run_policies  # noqa: E402


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def make_samples(n: int, image_size: int, batch_size: int) -> list:
    """``n`` samples whose query lengths cycle within each batch (every full batch has the same shapes).

    Images are shared objects, so the dataset itself is small.
    """
    from PIL import Image

    from vlminterp import Sample

    words = (
        "tell me how to build a kite from the picture and then describe the image in detail please".split()
    )
    images = [
        Image.new("RGB", (image_size + 8 * k, image_size), c) for k, c in enumerate(("red", "blue", "green"))
    ]
    return [
        Sample(id=f"b{i}", query=" ".join(words[: 4 + i % batch_size]), image=images[i % 3], label="benign")
        for i in range(n)
    ]


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(__doc__, argv)
    if args.malloc == "both":
        return run_policies(args, __file__, argv)["ratios"]
    if args.quick:  # 112 px: 64 image tokens per prompt
        args.sizes = {**args.sizes, "image_size": 112}
    batch_size, n_prompts, rss_small = (8, 64, 16) if args.quick else (4, 16, 4)
    repeats = args.repeats or 3
    gpu = str(args.device).startswith("cuda")

    from vlminterp import Condition, PromptBatch
    from vlminterp.cache import ActivationStore

    torch.manual_seed(0)
    model, hf, n_params = build_models(args)
    image_size = args.sizes["image_size"]

    def collect(samples, prefetch: bool | None = None, layers: list[int] | None = None) -> None:
        ActivationStore.collect(
            model,
            samples,
            ["image"],
            layers=layers,
            batch_size=batch_size,
            positions="last",
            progress=False,
            prefetch=prefetch,
        )

    # memory first (peak RSS is monotone): the same collect on an 8x larger dataset; also the warm-up
    collect(make_samples(rss_small, image_size, batch_size))
    rss_a = peak_rss_mb()
    collect(make_samples(8 * rss_small, image_size, batch_size))
    rss_b = peak_rss_mb()

    samples = make_samples(n_prompts, image_size, batch_size)
    chunks = [samples[i : i + batch_size] for i in range(0, n_prompts, batch_size)]
    dtype = next(hf.parameters()).dtype
    batches = [PromptBatch.paired(model, c, [Condition.IMAGE]) for c in chunks]
    inputs = [hf_inputs(b, args.device, dtype) for b in batches]
    tokens = sum(int(b.attention_mask.sum()) for b in batches)

    def raw_hf(**options):
        with torch.no_grad():
            for ids, kwargs in inputs:
                hf(input_ids=ids, output_hidden_states=True, **kwargs, **options)

    def prompts():
        for chunk in chunks:
            PromptBatch.paired(model, chunk, [Condition.IMAGE])

    half = list(range(model.cfg.n_layers // 2))
    fns = {
        "raw_hf": raw_hf,
        "raw_hf_no_cache": lambda: raw_hf(use_cache=False),
        "collect_sequential": lambda: collect(samples, prefetch=False),
        "collect_half_layers": lambda: collect(samples, layers=half),
        "prompts": prompts,
    }
    if args.quick or gpu:  # on a mid CPU run prompt building is ~0.5% of a forward: nothing to overlap
        fns["collect_prefetch"] = lambda: collect(samples, prefetch=True)
    with torch.no_grad():  # the raw model's warm-up (the RSS runs warmed up the bridge)
        hf(input_ids=inputs[0][0], output_hidden_states=True, **inputs[0][1])
    med = interleaved_medians(fns, repeats, warmup=False, device=args.device)
    default = "collect_sequential" if model.device.type == "cpu" else "collect_prefetch"
    ratios = {
        "collect_vs_hf": med[default] / med["raw_hf"],
        "collect_vs_hf_no_cache": med[default] / med["raw_hf_no_cache"],
        **{f"{k}_vs_hf": v / med["raw_hf"] for k, v in med.items() if k.startswith("collect_")},
        "prompts_vs_hf": med["prompts"] / med["raw_hf"],
        "rss_growth_8x": (rss_b - rss_a) / rss_a,
    }
    print(
        f"model: random llava, {n_params / 1e6:.1f}M parameters; {n_prompts} prompts, batches of {batch_size}"
    )
    print(f"{'variant':<22}{'median s':>10}{'ratio to HF':>14}")
    for name, sec in med.items():
        print(f"{name:<22}{sec:>10.2f}{sec / med['raw_hf']:>14.3f}")
    print(f"peak RSS: {rss_a:.0f} MB after {rss_small} prompts, {rss_b:.0f} MB after {8 * rss_small} prompts")
    print(f"rss_growth_8x: {ratios['rss_growth_8x']:.4f}")
    config = {
        "params_m": round(n_params / 1e6, 1),
        "prompts": n_prompts,
        "batch_size": batch_size,
        "rss_prompts": [rss_small, 8 * rss_small],
        "rss_mb": [round(rss_a), round(rss_b)],
        "repeats": repeats,
        "half_layers": len(half),
    }
    targets = {"collect_vs_hf": 1.05, "rss_growth_8x": 0.05}
    emit(args, "bench_collect", ratios, med, targets, config, tokens=tokens)
    return ratios


if __name__ == "__main__":
    main()
