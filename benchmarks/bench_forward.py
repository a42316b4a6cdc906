"""Forward and caching speed of HookedVLM against raw transformers, in the same run.

Usage: ``python benchmarks/bench_forward.py [--quick]``. Prints a table, then one JSON line with
``cache_filtered_vs_hf`` (run_with_cache of every resid_post) and ``cache_last_vs_hf`` (the same at
``positions="last"``), both relative to a raw HF forward with ``output_hidden_states=True``.
Targets: <= 1.05 for both. Timings are medians of interleaved repeats (CPU timing is noisy).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import LLAVA_100M, LLAVA_QUICK, build_models, emit, interleaved_medians, malloc_settings  # noqa: E402

FULL = LLAVA_100M
QUICK = LLAVA_QUICK


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a smaller model and fewer repeats (< 1 minute)")
    parser.add_argument("--repeats", type=int, default=None)
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    repeats = args.repeats or (5 if args.quick else 7)

    from PIL import Image

    from vlminterp import Condition, PromptBatch, Sample

    torch.manual_seed(0)
    model, hf, n_params = build_models(sizes)
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
    ids, kwargs = batch.input_ids, batch.model_kwargs()
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
    med = interleaved_medians(fns, repeats)
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
    config = {
        "quick": args.quick,
        "params_m": round(n_params / 1e6, 1),
        "batch": list(ids.shape),
        "repeats": repeats,
        "threads": torch.get_num_threads(),
        "malloc": malloc_settings(),
        **sizes,
    }
    emit(
        "bench_forward",
        {k: round(v, 4) for k, v in ratios.items()},
        {"cache_filtered_vs_hf": 1.05, "cache_last_vs_hf": 1.05},
        config,
    )
    return ratios


if __name__ == "__main__":
    main()
