"""Steered generation speed (CMRM, ShiftDC) against unsteered raw transformers, in the same run.

Usage: ``python benchmarks/bench_steer.py [--quick] [--device cuda] [--shapes llava-7b]
[--max-new-tokens N]`` (options: ``benchmarks/_common.py``). On the random llava (batch 4, prompts
with images, greedy) every variant generates exactly ``max_new_tokens`` tokens per row (64 in mid
mode, 8 in quick): the tokenizer's EOS is set to a new id outside the model's vocabulary (it can
never be chosen), and HF ``generate`` gets the same EOS id with ``min_new_tokens=max_new_tokens``.
Ratios (median time / median time of raw HF ``generate``, unsteered, on the 4 samples: timed as
the first batch of ``raw_hf_runner``, the same inputs):

- ``hooked_generate_vs_hf``: ``HookedVLM.generate``, unsteered (no target; reported).
- ``cmrm_dataset_generate_vs_hf``: ``with CMRM(vectors, alpha=1.0).applied(model): model.generate``
  (vectors fitted on the 4 samples; every layer, every step). Target <= 1.10.
- ``cmrm_sample_vs_hf``: ``CMRM.sample_level(alpha=1.0).generate`` end to end, with KV reuse (the
  default): every row's prompt but its last token runs unsteered, the BLANK twins' shared template and
  blank image once, then the joined 3x batch generates (the twins read at every step). Target <= 1.5.
  Timed as the first batch of ``cmrm_sample_runner`` (the same 4 samples, the same work: the first
  chunk of ``generate_chunks`` is ``generate`` of that chunk; timed once, where the runner goes on).
- ``cmrm_sample_runner_vs_hf``: the eval runner's loop over three batches of 4
  (``SampleCMRM.generate_chunks``: the BLANK twins' shared head computed for the first batch only)
  over ``raw_hf_runner``. Target <= 1.5.
- ``cmrm_sample_one_batch_vs_hf``: the same with ``reuse_kv=False`` (the 3x batch from scratch; the
  path the KV reuse is tested equal to).
- ``cmrm_sample_prefill_vs_hf``: ``CMRM.sample_level(alpha=1.0, steps="prefill").generate`` (the twins
  run once, as their own prompt passes stopped after the last steered layer; steps: steered rows only).
- ``cmrm_sample_prefill_one_batch_vs_hf``: the same steering as one 3x batch (``applied`` + ``follow=``),
  the path the twin passes are tested equal to.
- ``shiftdc_excl_caption_vs_hf``: ``ShiftDC(..., caption_source="sample").generate`` with the
  captions given and KV reuse (the default): the caption twins' prompt pass stops after the last
  steered layer, the inputs' unsteered prompt pass is the steered generation's, only the last prompt
  token is recomputed with the correction. Target <= 1.25.
- ``shiftdc_excl_caption_one_batch_vs_hf``: the same with ``reuse_kv=False`` (one unsteered pass of
  inputs + caption twins padded together, then steered generation from scratch).
- ``shiftdc_incl_caption_vs_hf``: ``ShiftDC(..., caption_source="self").generate``: the model first
  captions its own images (``caption_max_new_tokens = max_new_tokens``, i.e. a caption as long as
  the response). Target <= 1.71 (the paper's 4.66 s / 2.73 s on LLaVA-1.5-7B).
- ``shiftdc_incl_caption_runner_vs_hf``: the eval runner's loop over three batches of 4
  (``ShiftDC.generate_chunks``: two batches' rows in every generation, the first two batches'
  captions, then batch 1's responses with batch 3's captions, then batches 2 and 3's responses)
  over raw HF ``generate`` on the same three batches, one after the other (``raw_hf_runner``).
  Target <= 1.71. The batches have the same image sizes and query lengths.
- ``raw_hf_one_batch_of_8_vs_two_batches``: raw HF on the first two batches' 8 prompts as one batch,
  over two of raw HF's batch of 4 (the same shapes): what a decode twice as wide costs HF itself,
  which the overlap above draws on; reported.
- ``caption_floor_vs_hf``: ``2 - raw_hf_prefill / raw_hf`` (``raw_hf_prefill``: HF ``generate`` with one
  new token, i.e. the prompt pass): what ShiftDC with self-captioning costs at least in one batch,
  unsteered generation plus a caption's decode steps (its image prefill reused, its own prompt
  tokens and the twin pass free), reported beside ``shiftdc_incl_caption_vs_hf``.
- ``*_vs_hooked`` (sample CMRM, ShiftDC excl. and incl. captioning): the same times over unsteered
  ``HookedVLM.generate``, whose KV cache grows in place (:mod:`vlminterp.models.kv_buffer`) where HF's
  ``DynamicLayer`` concatenates the whole cache at every step: the methods' own cost, reported.

The mid mode times only the variants with a target, and raw HF and ``HookedVLM.generate``
(``--all-variants``: every one, ``raw_hf_one_batch_of_8`` among them).

Timings are medians of interleaved repeats (3 in quick mode, 1 in mid mode) after one warm-up run
with 2 new tokens (quick: of every variant; mid: of raw HF's prompt pass and ``HookedVLM.generate``
only, whose first calls pay the one-time costs, so that the mid mode finishes in minutes on 2 CPU
cores). The last timed outputs are checked: every row has
``max_new_tokens`` tokens, no hook is left, and the unsteered HookedVLM tokens are compared with
HF's (printed).
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import build_models, emit, hf_inputs, interleaved_medians, parse_args, run_policies  # noqa: E402

#: What the mid mode times (with ``--all-variants``: every variant).
MID_VARIANTS = (
    "raw_hf_prefill",
    "hooked_generate",
    "cmrm_dataset_generate",
    "cmrm_sample_runner",
    "shiftdc_excl_caption",
    "shiftdc_incl_caption",
    "raw_hf_runner",
    "shiftdc_incl_caption_runner",
)
#: Batches of 4 in the runner variants.
RUNNER_BATCHES = 3
#: Baseline of each ratio that is not over ``raw_hf``, and the factor on its time.
BASELINES = {
    "cmrm_sample_runner": ("raw_hf_runner", 1),
    "shiftdc_incl_caption_runner": ("raw_hf_runner", 1),
    "raw_hf_one_batch_of_8": ("raw_hf", 2),
}
#: Reported against ``hooked_generate`` as well (no target).
VS_HOOKED = ("cmrm_sample", "shiftdc_excl_caption", "shiftdc_incl_caption")
TARGETS = {
    "cmrm_dataset_generate_vs_hf": 1.10,
    "cmrm_sample_vs_hf": 1.5,
    "cmrm_sample_runner_vs_hf": 1.5,
    "shiftdc_excl_caption_vs_hf": 1.25,
    "shiftdc_incl_caption_vs_hf": 1.71,
    "shiftdc_incl_caption_runner_vs_hf": 1.71,
}


def main(argv: list[str] | None = None) -> dict:
    def extra(parser):
        parser.add_argument("--max-new-tokens", type=int, default=None, help="default 8 quick, 64 mid")
        parser.add_argument("--all-variants", action="store_true", help="mid mode: time every variant")

    args = parse_args(__doc__, argv, extra)
    if args.malloc == "both":
        return run_policies(args, __file__, argv)["ratios"]
    repeats = args.repeats or (3 if args.quick else 1)
    max_new_tokens = args.max_new_tokens or (8 if args.quick else 64)

    from PIL import Image

    from vlminterp import Condition, PromptBatch, Sample
    from vlminterp.interventions import CMRM, SafetyDirection, ShiftDC

    torch.manual_seed(0)
    model, hf, n_params = build_models(args)
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
            query=" ".join(words[: 10 + 2 * (i % 4)]),
            image=Image.new("RGB", (224 + 8 * (i % 4), 224), colours[(i + i // 4) % 4]),
            caption=" ".join(words[i : i + 6]),
            label="harmful" if i % 2 else "benign",
        )
        for i in range(4 * RUNNER_BATCHES)
    ]
    samples, runner = samples[:4], [samples[i : i + 4] for i in range(0, len(samples), 4)]
    dtype = next(hf.parameters()).dtype
    batch = PromptBatch.paired(model, samples, [Condition.IMAGE])
    ids, kwargs = hf_inputs(batch, args.device, dtype)
    hf_runner = [
        hf_inputs(PromptBatch.paired(model, rows, [Condition.IMAGE]), args.device, dtype) for rows in runner
    ]
    hf_eight = hf_inputs(
        PromptBatch.paired(model, runner[0] + runner[1], [Condition.IMAGE]), args.device, dtype
    )

    vectors = CMRM.fit(model, samples, progress=False)
    direction = SafetyDirection.fit(model, samples[::2], samples[1::2], progress=False)
    cmrm = CMRM(vectors, alpha=1.0)
    sample_cmrm = CMRM.sample_level(alpha=1.0)
    sample_one_batch = CMRM.sample_level(alpha=1.0, reuse_kv=False)
    sample_prefill = CMRM.sample_level(alpha=1.0, steps="prefill")
    shiftdc_given = ShiftDC(direction, caption_source="sample")
    shiftdc_one_batch = ShiftDC(direction, caption_source="sample", reuse_kv=False)

    def variants(n: int, first_batch: dict[str, list[float]] | None = None) -> dict:
        """Every variant, each generating ``n`` tokens per row (captions of ``n`` tokens too).

        ``first_batch`` gets the seconds of the first batch of ``raw_hf_runner`` (as ``raw_hf``)
        and of ``cmrm_sample_runner`` (as ``cmrm_sample``), at each of their runs.
        """

        def first_of(name: str, batches) -> list:
            out, start = [], time.perf_counter()
            for generation in batches:  # each batch runs when it is asked for
                out.append(generation)
                if len(out) == 1 and first_batch is not None:
                    first_batch.setdefault(name, []).append(time.perf_counter() - start)
            return out

        shiftdc_self = ShiftDC(direction, caption_source="self", caption_max_new_tokens=n)

        def raw_hf(tokens: int = n, inputs: tuple = (ids, kwargs)):
            with torch.no_grad():
                out = hf.generate(
                    input_ids=inputs[0],
                    **inputs[1],
                    max_new_tokens=tokens,
                    min_new_tokens=tokens,
                    eos_token_id=eos,
                    do_sample=False,
                )
            return out[:, inputs[0].shape[1] :].cpu()

        def cmrm_dataset():
            with cmrm.applied(model):
                return model.generate(batch, max_new_tokens=n)

        def cmrm_sample_prefill_one_batch():
            with sample_prefill.applied(model, samples) as run:
                return run.output(model.generate(run.batch, max_new_tokens=n, follow=run.follow))

        return {
            "raw_hf_prefill": lambda: raw_hf(1),
            "hooked_generate": lambda: model.generate(batch, max_new_tokens=n),
            "cmrm_dataset_generate": cmrm_dataset,
            "cmrm_sample_runner": lambda: first_of(
                "cmrm_sample", sample_cmrm.generate_chunks(model, runner, max_new_tokens=n)
            ),
            "cmrm_sample_one_batch": lambda: sample_one_batch.generate(model, samples, n),
            "cmrm_sample_prefill": lambda: sample_prefill.generate(model, samples, n),
            "cmrm_sample_prefill_one_batch": cmrm_sample_prefill_one_batch,
            "shiftdc_excl_caption": lambda: shiftdc_given.generate(model, samples, n),
            "shiftdc_excl_caption_one_batch": lambda: shiftdc_one_batch.generate(model, samples, n),
            "shiftdc_incl_caption": lambda: shiftdc_self.generate(model, samples, n),
            "raw_hf_runner": lambda: first_of("raw_hf", (raw_hf(inputs=inputs) for inputs in hf_runner)),
            "raw_hf_one_batch_of_8": lambda: raw_hf(inputs=hf_eight),
            "shiftdc_incl_caption_runner": lambda: list(
                shiftdc_self.generate_chunks(model, runner, max_new_tokens=n)
            ),
        }

    warm = variants(2)
    for name in warm if args.quick else ("raw_hf_prefill", "hooked_generate"):  # warm-up at 2 tokens
        warm[name]()
    outputs: dict[str, object] = {}

    def keeping(name, fn):
        def run():
            outputs[name] = fn()

        return run

    first_batch: dict[str, list[float]] = {}
    timed = variants(max_new_tokens, first_batch)
    if not (args.quick or args.all_variants):
        timed = {name: timed[name] for name in MID_VARIANTS}
    fns = {name: keeping(name, fn) for name, fn in timed.items()}
    med = interleaved_medians(fns, repeats, warmup=False, device=args.device)
    med.update({name: statistics.median(seconds) for name, seconds in first_batch.items()})
    # Correctness and equal lengths, on the outputs of the last timed runs.
    same_tokens = outputs["hooked_generate"].tokens == outputs["raw_hf_runner"][0].tolist()
    for name, out in outputs.items():
        if name.startswith("raw_hf"):
            continue
        tokens = [t for g in (out if isinstance(out, list) else [out]) for t in g.tokens]
        lengths = sorted({len(t) for t in tokens})
        rows = len(samples) * (RUNNER_BATCHES if isinstance(out, list) else 1)
        if lengths != [max_new_tokens] or len(tokens) != rows:
            raise RuntimeError(f"{name} generated {lengths} tokens per row, expected {max_new_tokens}.")
    if model.count_hooks():
        raise RuntimeError(f"{model.count_hooks()} hooks were left on the model.")
    ratios = {
        f"{name}_vs_hf": med[name] / med["raw_hf"]
        for name in med
        if not name.startswith("raw_hf") and name not in BASELINES
    }
    ratios.update(
        {
            f"{name}_vs_{'two_batches' if name == 'raw_hf_one_batch_of_8' else 'hf'}": med[name]
            / (factor * med[base])
            for name, (base, factor) in BASELINES.items()
            if name in med
        }
    )
    # The least a caption as long as the response can add with the image prefill reused: its decode steps,
    # i.e. one more generation less its prompt pass (raw HF with 1 new token).
    ratios["caption_floor_vs_hf"] = 2 - med["raw_hf_prefill"] / med["raw_hf"]
    # Against our own unsteered generate too: HookedVLM's KV cache grows in place (models.kv_buffer), HF's
    # DynamicLayer copies it at every step, so this is each method's cost over the same decode loop.
    ratios.update(
        {f"{name}_vs_hooked": med[name] / med["hooked_generate"] for name in med if name in VS_HOOKED}
    )
    print(
        f"model: random llava, {n_params / 1e6:.1f}M parameters; batch {tuple(ids.shape)}; "
        f"{max_new_tokens} new tokens; {repeats} repeats; unsteered tokens equal HF: {same_tokens}"
    )
    print(f"{'variant':<32}{'median s':>10}{'ratio to HF':>14}{'target':>9}")
    for name, sec in med.items():
        target = TARGETS.get(f"{name}_vs_hf")
        base, factor = BASELINES.get(name, ("raw_hf", 1))
        ratio = sec / (factor * med[base])
        print(f"{name:<32}{sec:>10.3f}{ratio:>14.3f}{'' if target is None else target:>9}")
    config = {
        "params_m": round(n_params / 1e6, 1),
        "batch": list(ids.shape),
        "max_new_tokens": max_new_tokens,
        "caption_max_new_tokens": max_new_tokens,
        "runner_batches": RUNNER_BATCHES,
        "repeats": repeats,
        "variants": list(fns),
        "unsteered_tokens_equal_hf": same_tokens,
    }
    emit(args, "bench_steer", ratios, med, TARGETS, config)
    return ratios


if __name__ == "__main__":
    main()
