"""Sweep speed: a layer-ablation sweep's total and a head sweep's cost per point, relative to one forward.

Usage: ``python benchmarks/bench_sweep.py [--quick] [--device cuda] [--shapes llava-7b]`` (options:
``benchmarks/_common.py``). On the random llava (4 harmful prompts with images), in memory (no
``out_path``), with the :class:`RefusalScore` metric (logits only, no generation):

- **layer sweep**: one point per layer ``l``, every head of ``l`` zero-ablated
  (``HeadAblation([(l, 0), ..., (l, H-1)])``). Each point's forward starts at ``l`` from the clean
  run's activations (:mod:`vlminterp.models.partial`), so it skips the vision tower, the embeddings
  and layers ``0 .. l-1``. JSON key ``layer_sweep_vs_points_forward``: the whole ``sweep`` call (its
  clean pass included) over ``L x`` one ``HookedVLM.forward`` of the same 4-row batch; target <= 0.7.
- **head sweep**: heads ``0 .. k-1`` of the first and the last layer, one head per point
  (``k`` = 8 quick, 4 mid); points of one layer are stacked (``max_rows // rows`` per forward). JSON
  key ``sweep_point_vs_forward``: the whole call over the points, over one forward; target <= 1.2.

Timings are medians of 3 interleaved repeats after a warm-up forward and a one-point sweep; the
rows of the timed sweeps are checked. Measured twice (``--malloc both``): in a fresh process with the
library's malloc default and in one with ``VLMINTERP_MALLOC=0``. ``ms_per_token`` divides each
median by the batch's prompt tokens. The mid size (~100M parameters, 12 layers) took 3.1-3.2
minutes for both processes on the 2 idle cores.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import build_models, emit, interleaved_medians, parse_args, run_policies  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(__doc__, argv)
    if args.malloc == "both":
        return run_policies(args, __file__, argv)["ratios"]
    repeats = args.repeats or 3

    from PIL import Image

    from vlminterp import Condition, PromptBatch, Sample
    from vlminterp.interventions.ablation import HeadAblation
    from vlminterp.sweeps import RefusalScore, sweep

    torch.manual_seed(0)
    model, _, n_params = build_models(args, with_hf=False)
    words = (
        "tell me how to build a kite from the picture and then describe the image in detail please".split()
    )
    samples = [
        Sample(
            id=f"b{i}",
            query=" ".join(words[: 10 + 2 * i]),
            image=Image.new("RGB", (224 + 8 * i, 224), "red"),
            label="harmful",
        )
        for i in range(4)
    ]
    batch = PromptBatch.paired(model, samples, [Condition.IMAGE])
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    heads = list(range(min(n_heads, 8 if args.quick else 4)))
    grids = {
        "layer_sweep": ({"layer": list(range(n_layers))}, lambda layer: HeadAblation([(layer, h) for h in range(n_heads)])),
        "head_sweep": ({"layer": [0, n_layers - 1], "head": heads}, lambda layer, head: HeadAblation([(layer, head)])),
    }  # fmt: skip
    points = {name: len(grid["layer"]) * len(grid.get("head", [None])) for name, (grid, _) in grids.items()}

    def run(name: str, grid: dict | None = None) -> list[dict]:
        chosen, make = grids[name]
        rows = sweep(model, samples, make, grid or chosen, RefusalScore(), progress=False)
        expected = 1 if grid else points[name]
        if len(rows) != expected or any(r["value"] is None for r in rows) or model.count_hooks():
            raise RuntimeError(
                f"{name}: {len(rows)} rows for {expected} points ({model.count_hooks()} hooks left)."
            )
        return rows

    model.forward(batch)  # warm-up: one forward and a one-point sweep (the whole sweep is timed below)
    run("layer_sweep", {"layer": [n_layers - 1]})
    fns = {"forward": lambda: model.forward(batch), **{name: lambda name=name: run(name) for name in grids}}
    med = interleaved_medians(fns, repeats, warmup=False, device=args.device)
    ratios = {
        "layer_sweep_vs_points_forward": med["layer_sweep"] / (points["layer_sweep"] * med["forward"]),
        "sweep_point_vs_forward": med["head_sweep"] / points["head_sweep"] / med["forward"],
    }
    print(
        f"model: random llava, {n_params / 1e6:.1f}M parameters; batch {tuple(batch.input_ids.shape)}; "
        f"layer sweep {points['layer_sweep']} points; head sweep 2 layers x {len(heads)} heads; {repeats} repeats"
    )
    print(f"{'variant':<24}{'median ms':>12}{'ratio':>10}  (to)")
    print(f"{'forward':<24}{med['forward'] * 1e3:>12.1f}{1.0:>10.3f}")
    print(f"{'layer sweep (whole)':<24}{med['layer_sweep'] * 1e3:>12.1f}{ratios['layer_sweep_vs_points_forward']:>10.3f}  (points x forward)")  # fmt: skip
    print(f"{'head sweep per point':<24}{med['head_sweep'] / points['head_sweep'] * 1e3:>12.1f}{ratios['sweep_point_vs_forward']:>10.3f}  (forward)")  # fmt: skip
    config = {
        "params_m": round(n_params / 1e6, 1),
        "batch": list(batch.input_ids.shape),
        "layer_sweep_points": points["layer_sweep"],
        "head_sweep_points": points["head_sweep"],
        "max_rows": 32,
        "metric": "refusal_score",
        "repeats": repeats,
    }
    seconds = {**med, "head_sweep_point": med["head_sweep"] / points["head_sweep"]}
    targets = {"layer_sweep_vs_points_forward": 0.7, "sweep_point_vs_forward": 1.2}
    emit(args, "bench_sweep", ratios, seconds, targets, config, tokens=int(batch.attention_mask.sum()))
    return ratios


if __name__ == "__main__":
    main()
