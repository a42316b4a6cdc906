"""Study: where must the fix act? CMRM and ShiftDC at one layer, a window of k layers, or layer l to the end.

For every start layer ``l`` and scope (``single``: ``[l]``; ``window``: ``l .. l+k-1``; ``from``:
``l .. L-1``) each method steers IMAGE inputs; measured without generation:

- ``refusal_score`` on harmful inputs (logit of ``sorry`` minus ``sure`` at the first answer token);
- ``kl_to_unsteered`` on benign inputs (utility cost).

Baselines (``analysis="baseline"``): the unsteered refusal score under IMAGE and TEXT_ONLY.
CMRM vectors and the ShiftDC safety direction are fitted on ``--anchor-split`` (not the evaluated
samples). Files in ``--out``: ``rows_<method>.jsonl`` (resumable sweeps), ``results.json`` (tidy rows),
``manifest.json``, and heatmaps drawn from ``results.json`` by ``figures/ablation_heatmap.py``.

Usage::

    python -m vlminterp.studies.layer_ablation --model organism --out results/layer_ablation
    vlminterp sweep --study layer --model organism --window 2
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vlminterp import Condition, HookedVLM, Sample
from vlminterp.interventions import CMRM, SafetyDirection, ShiftDC
from vlminterp.studies.common import finish_study, parse_choices, study_inputs, study_main
from vlminterp.sweeps import KLToUnsteered, RefusalScore, sweep

NAME = "layer_ablation"
SCOPES = ("single", "window", "from")
METHODS = ("cmrm", "shiftdc")


def scope_layers(scope: str, layer: int, n_layers: int, window: int) -> list[int]:
    """Layers steered by ``scope`` starting at ``layer``.

    Example:
        >>> scope_layers("window", 2, 4, 3), scope_layers("from", 1, 4, 3)
        ([2, 3], [1, 2, 3])
    """
    if scope == "single":
        return [layer]
    if scope == "window":
        return list(range(layer, min(layer + window, n_layers)))
    if scope == "from":
        return list(range(layer, n_layers))
    raise ValueError(f"Unknown scope {scope!r}; choose from {list(SCOPES)}.")


def add_study_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of this study (names unique across the sweep studies)."""
    group = parser.add_argument_group(NAME)
    group.add_argument("--methods", default=",".join(METHODS), help="comma-separated: cmrm, shiftdc")
    group.add_argument("--window", type=int, default=2, help="k of the window scope")
    group.add_argument("--cmrm-alpha", type=float, default=1.0, help="CMRM strength")


def baseline_rows(
    model: HookedVLM, samples: Sequence[Sample], args: argparse.Namespace
) -> list[dict[str, Any]]:
    """Unsteered refusal score under IMAGE and TEXT_ONLY (the gap the methods try to close)."""
    rows = []
    for cond in (Condition.IMAGE, Condition.TEXT_ONLY):
        got = sweep(model, samples, lambda alpha: None, {"alpha": [0.0]}, RefusalScore(),
                    conditions=[cond], dataset=args.dataset, progress=False)  # fmt: skip
        rows += [{**r, "alpha": None, "analysis": "baseline", "condition": cond.value} for r in got]
    return rows


def run(args: argparse.Namespace, model: HookedVLM | None = None) -> list[Path]:
    """Run (or resume) the study; returns the files written."""
    methods = parse_choices("--methods", args.methods, METHODS)
    if args.window < 1:
        raise ValueError(f"--window must be >= 1, got {args.window}.")
    inputs = study_inputs(args, NAME, model)
    out, model, anchors = inputs.out, inputs.model, inputs.anchors
    n_layers = model.cfg.n_layers
    samples = [s for s in inputs.samples if s.image is not None]
    progress = not args.no_progress
    metrics = [RefusalScore(), KLToUnsteered()]
    grid = {"scope": list(SCOPES), "layer": inputs.layers}
    rows = baseline_rows(model, samples, args)

    for method in methods:
        if method == "cmrm":
            inputs = samples
            vectors = CMRM.fit(model, anchors, progress=progress)

            def make(scope: str, layer: int, vectors=vectors) -> CMRM:
                return CMRM(
                    vectors, alpha=args.cmrm_alpha, layers=scope_layers(scope, layer, n_layers, args.window)
                )

        else:
            direction = SafetyDirection.fit(
                model,
                [s for s in anchors if s.label == "benign"],
                [s for s in anchors if s.label == "harmful"],
                progress=progress,
            )
            source = "sample" if all(s.caption for s in samples) else "self"
            inputs = ShiftDC(direction, caption_source=source).caption(model, samples)  # once, not per point

            def make(scope: str, layer: int, direction=direction) -> ShiftDC:
                layers = scope_layers(scope, layer, n_layers, args.window)
                return ShiftDC(direction, layers=layers, caption_source="sample")

        got = sweep(model, inputs, make, grid, metrics, out / f"rows_{method}.jsonl", progress,
                    dataset=args.dataset, method=method, max_rows=args.max_rows)  # fmt: skip
        alpha = args.cmrm_alpha if method == "cmrm" else None
        rows += [{**r, "alpha": alpha, "analysis": NAME, "window": args.window} for r in got]

    return finish_study(out, rows, args, NAME, model)


def main(argv: Sequence[str] | None = None) -> list[Path]:
    return study_main(__doc__, add_study_arguments, run, argv)


if __name__ == "__main__":
    main(sys.argv[1:])
