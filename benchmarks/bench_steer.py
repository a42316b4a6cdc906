"""Steered generation speed (CMRM, ShiftDC) against unsteered raw transformers, in the same run.

Usage: ``python benchmarks/bench_steer.py [--quick]``. On the mid-size random llava (batch 4, prompts
with images, greedy) every variant generates exactly ``max_new_tokens`` tokens per row (64 in full
mode, 8 in quick): the tokenizer's EOS is set to a new id outside the model's vocabulary (it can
never be chosen), and HF ``generate`` gets the same EOS id with ``min_new_tokens=max_new_tokens``.
Ratios (median time / median time of raw HF ``generate``, unsteered):

- ``hooked_generate_vs_hf``: ``HookedVLM.generate``, unsteered (no target; reported).
- ``cmrm_dataset_generate_vs_hf``: ``with CMRM(vectors, alpha=1.0).applied(model): model.generate``
  (vectors fitted on the 4 samples; every layer, every step). Target <= 1.10.
- ``cmrm_sample_vs_hf``: ``CMRM.sample_level(alpha=1.0).generate`` end to end (3x batch: the TEXT_ONLY
  and BLANK twins run alongside at every step). Target <= 1.5.
- ``shiftdc_excl_caption_vs_hf``: ``ShiftDC(..., caption_source="sample").generate`` with the
  captions given (one unsteered pass of inputs + caption twins, then steered generation). Target <= 1.25.
- ``shiftdc_incl_caption_vs_hf``: ``ShiftDC(..., caption_source="self").generate``: the model first
  captions its own images (``caption_max_new_tokens = max_new_tokens``, i.e. a caption as long as
  the response). Target <= 1.71 (the paper's 4.66 s / 2.73 s on LLaVA-1.5-7B).

Timings are medians of interleaved repeats after one warm-up run each (3 repeats in quick mode, 2 in
full mode: a full run with 3 repeats and a separate check pass had not finished after 15 minutes
on 2 shared CPU cores; 2 repeats, checks on the timed outputs, is the reduced full config). The last timed outputs are checked: every row has ``max_new_tokens`` tokens, no
hook is left, and the unsteered HookedVLM tokens are compared with HF's (printed).
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
TARGETS = {
    "cmrm_dataset_generate_vs_hf": 1.10,
    "cmrm_sample_vs_hf": 1.5,
    "shiftdc_excl_caption_vs_hf": 1.25,
    "shiftdc_incl_caption_vs_hf": 1.71,
}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a smaller model and fewer tokens (< 1 minute)")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--max-new-tokens", type=int, default=None)
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    repeats = args.repeats or (3 if args.quick else 2)
    max_new_tokens = args.max_new_tokens or (8 if args.quick else 64)

    from PIL import Image

    from vlminterp import Condition, PromptBatch, Sample
    from vlminterp.interventions import CMRM, SafetyDirection, ShiftDC

    torch.manual_seed(0)
    model, hf, n_params = build_models(sizes)
    # An EOS id outside the vocabulary: no row can stop early, so every variant makes the same tokens.
    model.tokenizer.add_special_tokens({"eos_token": "<bench_eos>"})
    eos = model.tokenizer.eos_token_id
    if eos < model.cfg.d_vocab:
        raise RuntimeError(f"The benchmark EOS id {eos} is inside the vocabulary ({model.cfg.d_vocab}).")

    words = (
        "tell me how to build a kite from the picture and then describe the image in detail please".split()
    )
    colours = ["red", "blue", "green", "white"]
    samples = [
        Sample(
            id=f"b{i}",
            query=" ".join(words[: 10 + 2 * i]),
            image=Image.new("RGB", (224 + 8 * i, 224), colours[i]),
            caption=" ".join(words[i : i + 6]),
            label="harmful" if i % 2 else "benign",
        )
        for i in range(4)
    ]
    batch = PromptBatch.paired(model, samples, [Condition.IMAGE])
    ids, kwargs = batch.input_ids, batch.model_kwargs()

    vectors = CMRM.fit(model, samples, progress=False)
    direction = SafetyDirection.fit(model, samples[::2], samples[1::2], progress=False)
    cmrm = CMRM(vectors, alpha=1.0)
    sample_cmrm = CMRM.sample_level(alpha=1.0)
    shiftdc_given = ShiftDC(direction, caption_source="sample")
    shiftdc_self = ShiftDC(direction, caption_source="self", caption_max_new_tokens=max_new_tokens)

    def raw_hf():
        with torch.no_grad():
            return hf.generate(
                input_ids=ids,
                **kwargs,
                max_new_tokens=max_new_tokens,
                min_new_tokens=max_new_tokens,
                eos_token_id=eos,
                do_sample=False,
            )[:, ids.shape[1] :]

    def cmrm_dataset():
        with cmrm.applied(model):
            return model.generate(batch, max_new_tokens=max_new_tokens)

    variants = {
        "raw_hf": raw_hf,
        "hooked_generate": lambda: model.generate(batch, max_new_tokens=max_new_tokens),
        "cmrm_dataset_generate": cmrm_dataset,
        "cmrm_sample": lambda: sample_cmrm.generate(model, samples, max_new_tokens),
        "shiftdc_excl_caption": lambda: shiftdc_given.generate(model, samples, max_new_tokens),
        "shiftdc_incl_caption": lambda: shiftdc_self.generate(model, samples, max_new_tokens),
    }
    outputs: dict[str, object] = {}

    def keeping(name, fn):
        def run():
            outputs[name] = fn()

        return run

    fns = {name: keeping(name, fn) for name, fn in variants.items()}
    med = interleaved_medians(fns, repeats)
    # Correctness and equal lengths, on the outputs of the last timed runs.
    same_tokens = outputs["hooked_generate"].tokens == outputs["raw_hf"].tolist()
    for name, out in outputs.items():
        if name == "raw_hf":
            continue
        lengths = sorted({len(t) for t in out.tokens})
        if lengths != [max_new_tokens] or len(out.tokens) != len(samples):
            raise RuntimeError(f"{name} generated {lengths} tokens per row, expected {max_new_tokens}.")
    if model.count_hooks():
        raise RuntimeError(f"{model.count_hooks()} hooks were left on the model.")
    ratios = {f"{name}_vs_hf": med[name] / med["raw_hf"] for name in fns if name != "raw_hf"}
    print(
        f"model: random llava, {n_params / 1e6:.1f}M parameters; batch {tuple(ids.shape)}; "
        f"{max_new_tokens} new tokens; {repeats} repeats; unsteered tokens equal HF: {same_tokens}"
    )
    print(f"{'variant':<24}{'median s':>10}{'ratio to HF':>14}{'target':>9}")
    for name, sec in med.items():
        target = TARGETS.get(f"{name}_vs_hf")
        print(f"{name:<24}{sec:>10.3f}{sec / med['raw_hf']:>14.3f}{'' if target is None else target:>9}")
    config = {
        "quick": args.quick,
        "params_m": round(n_params / 1e6, 1),
        "batch": list(ids.shape),
        "max_new_tokens": max_new_tokens,
        "caption_max_new_tokens": max_new_tokens,
        "repeats": repeats,
        "unsteered_tokens_equal_hf": same_tokens,
        "threads": torch.get_num_threads(),
        "malloc": malloc_settings(),
        **sizes,
    }
    emit("bench_steer", {k: round(v, 4) for k, v in ratios.items()}, TARGETS, config)
    return ratios


if __name__ == "__main__":
    main()
