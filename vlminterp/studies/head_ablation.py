"""Study: where does the degradation live? Per-head ablation and TEXT_ONLY → IMAGE patching.

On IMAGE inputs of harmful requests (the inputs where refusal breaks):

1. Head ablation (``analysis="head_ablation"``): zero- or mean-ablate one head ``(layer, head)`` at
   ``attn.hook_z`` and measure the change in refusal score (``sorry`` minus ``sure`` logit at the first
   answer token) against the unsteered IMAGE run. Means are per-token head outputs over IMAGE inputs
   of ``--anchor-split`` (harmful and benign). The ``--top-k`` heads by absolute change are listed
   (``analysis="top_heads"``: every head ranked, so the selection can be audited).
2. Patching (``analysis="head_patching"``): copy the TEXT_ONLY run's last-token activation into the
   IMAGE run, per layer for the residual stream (``resid_post``, ``head=None``) and per head output
   (``attn.hook_z``), and report the fraction of the IMAGE → TEXT_ONLY refusal gap it recovers.

Grid points are stacked into shared forwards (see :mod:`vlminterp.sweeps`). Files in ``--out``:
``rows_*.jsonl`` (resumable), ``results.json``, ``manifest.json``, heatmaps by ``figures/ablation_heatmap.py``.

Usage::

    python -m vlminterp.studies.head_ablation --model organism --out results/head_ablation
    vlminterp sweep --study head --model organism --modes zero,mean --top-k 5
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vlminterp import Condition, HookedVLM, PromptBatch
from vlminterp.interventions import ActivationPatch, HeadAblation, mean_z
from vlminterp.parallel import is_main
from vlminterp.specs import model_name
from vlminterp.studies.common import finish_study, parse_choices, study_inputs, study_main
from vlminterp.sweeps import RefusalScore, sweep

NAME = "head_ablation"
MODES = ("zero", "mean")


def add_study_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of this study (names unique across the sweep studies)."""
    group = parser.add_argument_group(NAME)
    group.add_argument("--modes", default=",".join(MODES), help="comma-separated: zero, mean")
    group.add_argument(
        "--top-k", type=int, default=5, help="heads listed by absolute change in refusal score"
    )
    group.add_argument("--no-patching", action="store_true", help="skip TEXT_ONLY -> IMAGE patching")


def _score(model: HookedVLM, samples, condition: Condition, dataset: str) -> float:
    rows = sweep(model, samples, lambda alpha: None, {"alpha": [0.0]}, RefusalScore(), conditions=[condition],
                 dataset=dataset, progress=False)  # fmt: skip
    return rows[0]["value"]


def top_heads(rows: list[dict[str, Any]], k: int) -> list[dict[str, Any]]:
    """Every ablated head ranked by ``|change in refusal score|`` per mode; ``selected`` marks the top ``k``.

    Example:
        >>> rows = [{"mode": "zero", "layer": 0, "head": h, "value": v, "model": "m", "dataset": "d"}
        ...         for h, v in enumerate([0.1, -2.0, 1.0])]
        >>> [(r["head"], r["rank"], r["selected"]) for r in top_heads(rows, 2)]
        [(1, 1, True), (2, 2, True), (0, 3, False)]
    """
    out = []
    for mode in sorted({r["mode"] for r in rows}):
        ranked = sorted((r for r in rows if r["mode"] == mode), key=lambda r: -abs(r["value"]))
        for rank, r in enumerate(ranked, start=1):
            out.append({
                "model": r["model"], "dataset": r["dataset"], "analysis": "top_heads", "mode": mode,
                "layer": r["layer"], "head": r["head"], "metric": "abs_refusal_score_change",
                "value": abs(r["value"]), "rank": rank, "selected": rank <= k,
                "reason": f"rank {rank} of {len(ranked)} by |change|" + ("" if rank <= k else f"; below top {k}"),
            })  # fmt: skip
    return out


def run(args: argparse.Namespace, model: HookedVLM | None = None) -> list[Path]:
    """Run (or resume) the study; returns the files written."""
    modes = parse_choices("--modes", args.modes, MODES)
    if args.top_k < 1:
        raise ValueError(f"--top-k must be >= 1, got {args.top_k}.")
    inputs = study_inputs(args, NAME, model, n_benign=0)
    out, model = inputs.out, inputs.model
    c = model.cfg
    samples = [s for s in inputs.samples if s.image is not None and s.label == "harmful"]
    progress = not args.no_progress
    image_score = _score(model, samples, Condition.IMAGE, args.dataset)
    text_score = _score(model, samples, Condition.TEXT_ONLY, args.dataset)
    rows: list[dict[str, Any]] = [
        {"model": model_name(model), "dataset": args.dataset, "analysis": "baseline", "condition": cond, "method": "none",
         "layer": None, "head": None, "alpha": None, "metric": "refusal_score", "value": v, "n": len(samples)}
        for cond, v in (("image", image_score), ("text_only", text_score))
    ]  # fmt: skip

    means = None
    if "mean" in modes:
        anchors = [s for s in inputs.anchors if s.image is not None]
        means = mean_z(model, PromptBatch.paired(model, anchors, [Condition.IMAGE]))

    def ablate(mode: str, layer: int, head: int) -> HeadAblation:
        return HeadAblation([(layer, head)], mode=mode, mean_from=means if mode == "mean" else None)

    grid = {"mode": modes, "layer": inputs.layers, "head": list(range(c.n_heads))}
    got = sweep(model, samples, ablate, grid, RefusalScore(), out / "rows_ablation.jsonl", progress,
                dataset=args.dataset, method="head_ablation", max_rows=args.max_rows)  # fmt: skip
    changes = [
        {**r, "analysis": NAME, "metric": "refusal_score_change", "value": r["value"] - image_score}
        for r in got
    ]
    rows += [{**r, "analysis": NAME} for r in got] + changes
    ranked = top_heads(changes, args.top_k)
    rows += ranked
    for r in (r for r in ranked if r["selected"]):
        if is_main():
            print(f"top head ({r['mode']}): L{r['layer']}H{r['head']}  |change| = {r['value']:.3f}")

    if not args.no_patching:
        text = PromptBatch.paired(model, samples, [Condition.TEXT_ONLY])
        names = model.hook_names("resid_post") + model.hook_names("z")
        _, cache = model.run_with_cache(text, names_filter=names, positions="last")

        def patch(layer: int, head: int | None) -> ActivationPatch:
            kind = "resid_post" if head is None else "z"
            heads = None if head is None else [head]
            return ActivationPatch(cache, hook=kind, layers=layer, positions="last", heads=heads)

        grid = {"layer": inputs.layers, "head": [None, *range(c.n_heads)]}
        got = sweep(model, samples, patch, grid, RefusalScore(), out / "rows_patching.jsonl", progress,
                    dataset=args.dataset, method="patch_text_only", max_rows=args.max_rows)  # fmt: skip
        gap = text_score - image_score
        rows += [{**r, "analysis": "head_patching"} for r in got]
        rows += [
            {**r, "analysis": "head_patching", "metric": "refusal_gap_recovered",
             "value": (r["value"] - image_score) / gap if gap else None}
            for r in got
        ]  # fmt: skip

    return finish_study(out, rows, args, NAME, model)


def main(argv: Sequence[str] | None = None) -> list[Path]:
    return study_main(__doc__, add_study_arguments, run, argv)


if __name__ == "__main__":
    main(sys.argv[1:])
