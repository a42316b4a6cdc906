"""Head-ablation sweep speed: time per grid point relative to one plain forward of the same batch.

Usage: ``python benchmarks/bench_sweep.py [--quick] [--device cuda] [--shapes llava-7b]`` (options:
``benchmarks/_common.py``). On the random llava (4 harmful prompts with
images), :func:`vlminterp.sweeps.sweep` zero-ablates heads 0-7 of the first and the last layer, one
head per grid point (``HeadAblation([(layer, head)])``), with the :class:`RefusalScore` metric
(logits only, no generation), in memory (no ``out_path``). The whole ``sweep`` call (its unsteered
reference pass included) is divided by the number of grid points and compared with
``HookedVLM.forward`` of the same 4-row batch. ``sweep`` stacks ``max_rows // rows`` points (8 with
the default ``max_rows=32``) into one forward of ``8 x 4`` rows.

JSON key ``sweep_point_vs_forward``, target <= 1.2. Both sizes sweep heads 0-7 of layers 0 and L-1
(16 points: two stacked forwards); the mid size (12 layers) used to sweep 36 points and took over
5 minutes on 2 cores. Timings are medians of interleaved repeats (3 quick, 2 mid) after a checked
warm-up sweep (CPU timing is noisy); the mid-size run takes about 3 minutes on 2 cores.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import build_models, emit, interleaved_medians, parse_args  # noqa: E402

HEADS = 8  # heads per swept layer: 16 points, two stacked forwards of 8 points x 4 rows


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(__doc__, argv)
    repeats = args.repeats or (3 if args.quick else 2)

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
    n_layers = model.cfg.n_layers
    layers = [0, n_layers - 1]
    grid = {"layer": layers, "head": list(range(HEADS))}
    n_points = len(layers) * HEADS

    def run_sweep():
        return sweep(
            model,
            samples,
            lambda layer, head: HeadAblation([(layer, head)]),
            grid=grid,
            metric=RefusalScore(),
            progress=False,
        )

    rows = run_sweep()  # the warm-up, checked
    if len(rows) != n_points or model.count_hooks():
        raise RuntimeError(
            f"sweep gave {len(rows)} rows for {n_points} points ({model.count_hooks()} hooks left)."
        )
    model.forward(batch)
    fns = {"forward": lambda: model.forward(batch), "sweep": run_sweep}
    med = interleaved_medians(fns, repeats, warmup=False, device=args.device)
    per_point = med["sweep"] / n_points
    ratios = {"sweep_point_vs_forward": per_point / med["forward"]}
    print(
        f"model: random llava, {n_params / 1e6:.1f}M parameters; batch {tuple(batch.input_ids.shape)}; "
        f"grid {len(layers)} layers x {HEADS} heads = {n_points} points; {repeats} repeats"
    )
    print(f"{'variant':<20}{'median ms':>12}{'ratio to forward':>18}")
    print(f"{'forward':<20}{med['forward'] * 1e3:>12.1f}{1.0:>18.3f}")
    print(f"{'sweep (whole)':<20}{med['sweep'] * 1e3:>12.1f}{med['sweep'] / med['forward']:>18.3f}")
    print(f"{'sweep per point':<20}{per_point * 1e3:>12.1f}{ratios['sweep_point_vs_forward']:>18.3f}")
    config = {
        "params_m": round(n_params / 1e6, 1),
        "batch": list(batch.input_ids.shape),
        "layers": layers,
        "points": n_points,
        "max_rows": 32,
        "metric": "refusal_score",
        "repeats": repeats,
    }
    seconds = {**med, "sweep_point": per_point}
    emit(args, "bench_sweep", ratios, seconds, {"sweep_point_vs_forward": 1.2}, config)
    return ratios


if __name__ == "__main__":
    main()
