"""Forward and caching speed of HookedVLM against raw transformers, in the same run.

Usage: ``python benchmarks/bench_forward.py [--quick] [--device cuda] [--shapes llava-7b]`` (options:
``benchmarks/_common.py``). Prints a table, then one JSON line with
``cache_filtered_vs_hf`` (run_with_cache of every resid_post) and ``cache_last_vs_hf`` (the same at
``positions="last"``), both relative to a raw HF forward with ``output_hidden_states=True``, and
``bridge_forward_vs_hf`` (the bridge's forward, no hooks). Targets: <= 1.05 for both caches.
``ms_per_token`` divides each median by the batch's real prompt tokens (4 prompts of ~290 tokens;
~640 with llava-7b's 576 image tokens): the figure to read on a GPU.

Timings are medians of interleaved repeats after one warm-up (5 quick, 3 mid, 5 on a GPU), measured
twice (``--malloc both``): in a fresh process with the library's malloc default and in one with
``VLMINTERP_MALLOC=0``. The mid-size (116M) run is 2 processes x 16 forwards of 4 x ~290 tokens,
sized for under 5 minutes on 2 idle cores; it took 8 minutes on the shared 2-core machine at load 5-10.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import build_models, emit, hf_inputs, interleaved_medians, parse_args, run_policies  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(__doc__, argv)
    if args.malloc == "both":
        return run_policies(args, __file__, argv)["ratios"]
    repeats = args.repeats or (3 if args.shapes == "mid" and args.device == "cpu" else 5)

    from PIL import Image

    from vlminterp import Condition, PromptBatch, Sample

    torch.manual_seed(0)
    model, hf, n_params = build_models(args)
    words = (
        "tell me how to build a kite from the picture and then describe the image in detail please".split()
    )
    samples = [
        Sample(
            id=f"b{i}",
            query=" ".join(words[: 10 + 2 * i] * 2),
            image=Image.new("RGB", (224 + 8 * i, 224), "red"),
        )
        for i in range(4)
    ]
    batch = PromptBatch.paired(model, samples, [Condition.IMAGE])
    ids, kwargs = hf_inputs(batch, args.device, next(hf.parameters()).dtype)
    names = model.hook_names("resid_post")

    def raw_hf():
        with torch.no_grad():
            hf(input_ids=ids, output_hidden_states=True, **kwargs)

    fns = {
        "raw_hf": raw_hf,
        "bridge_forward": lambda: model.forward(batch),
        "cache_filtered": lambda: model.run_with_cache(batch, names_filter=names),
        "cache_last": lambda: model.run_with_cache(batch, names_filter=names, positions="last"),
    }
    med = interleaved_medians(fns, repeats, device=args.device)
    ratios = {
        "bridge_forward_vs_hf": med["bridge_forward"] / med["raw_hf"],
        "cache_filtered_vs_hf": med["cache_filtered"] / med["raw_hf"],
        "cache_last_vs_hf": med["cache_last"] / med["raw_hf"],
    }
    print(
        f"model: random llava, {n_params / 1e6:.1f}M parameters; batch {tuple(ids.shape)}; {repeats} repeats"
    )
    print(f"{'variant':<18}{'median ms':>12}{'ratio to HF':>14}")
    for name, sec in med.items():
        print(f"{name:<18}{sec * 1e3:>12.1f}{sec / med['raw_hf']:>14.3f}")
    config = {"params_m": round(n_params / 1e6, 1), "batch": list(ids.shape), "repeats": repeats}
    targets = {"cache_filtered_vs_hf": 1.05, "cache_last_vs_hf": 1.05}
    tokens = int(batch.attention_mask.sum())
    emit(args, "bench_forward", ratios, med, targets, config, tokens=tokens)
    return ratios


if __name__ == "__main__":
    main()
