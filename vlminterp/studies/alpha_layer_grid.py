"""Study: CMRM strength α × starting layer (steering layers ``l .. L-1``).

Dataset-level CMRM vectors are fitted on ``--anchor-split``; for every (α, start layer) the IMAGE
inputs are steered and measured without generation: ``refusal_score`` on harmful inputs and
``kl_to_unsteered`` on benign inputs (utility cost). The notes on the organism report that α's
useful window can be narrow; this grid shows where it is and how it moves with the start layer.
Files in ``--out``: ``rows.jsonl`` (resumable), ``results.json``, ``manifest.json``, heatmaps by
``figures/ablation_heatmap.py``.

Usage::

    python -m vlminterp.studies.alpha_layer_grid --model organism --alphas 0,0.5,1,1.5,2
    vlminterp sweep --study alpha-layer --model organism
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from pathlib import Path

from vlminterp import HookedVLM
from vlminterp.interventions import CMRM
from vlminterp.studies.common import finish_study, study_inputs, study_main
from vlminterp.sweeps import KLToUnsteered, RefusalScore, sweep

NAME = "alpha_layer_grid"


def add_study_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of this study (names unique across the sweep studies)."""
    group = parser.add_argument_group(NAME)
    group.add_argument("--alphas", default="0,0.5,1,1.5,2", help="comma-separated CMRM strengths")


def parse_alphas(text: str) -> list[float]:
    """``"0,0.5,1"`` -> ``[0.0, 0.5, 1.0]``; a bad entry raises naming it."""
    try:
        alphas = [float(a) for a in text.split(",") if a.strip()]
    except ValueError:
        raise ValueError(f"--alphas {text!r} must be comma-separated numbers, e.g. 0,0.5,1.") from None
    if not alphas:
        raise ValueError("--alphas is empty; give at least one strength.")
    bad = [a for a in alphas if not math.isfinite(a)]
    if bad:
        raise ValueError(
            f"--alphas {text!r}: {bad} are not finite numbers; give finite strengths, e.g. 0,0.5,1."
        )
    return alphas


def run(args: argparse.Namespace, model: HookedVLM | None = None) -> list[Path]:
    """Run (or resume) the study; returns the files written."""
    alphas = parse_alphas(args.alphas)
    inputs = study_inputs(args, NAME, model)
    out, model = inputs.out, inputs.model
    n_layers = model.cfg.n_layers
    samples = [s for s in inputs.samples if s.image is not None]
    progress = not args.no_progress
    vectors = CMRM.fit(model, inputs.anchors, progress=progress)

    def make(alpha: float, layer: int) -> CMRM:
        return CMRM(vectors, alpha=alpha, layers=range(layer, n_layers))

    grid = {"alpha": alphas, "layer": inputs.layers}
    got = sweep(model, samples, make, grid, [RefusalScore(), KLToUnsteered()], out / "rows.jsonl", progress,
                dataset=args.dataset, method="cmrm", max_rows=args.max_rows)  # fmt: skip
    rows = [{**r, "analysis": NAME, "scope": "from"} for r in got]
    return finish_study(out, rows, args, NAME, model)


def main(argv: Sequence[str] | None = None) -> list[Path]:
    return study_main(__doc__, add_study_arguments, run, argv)


if __name__ == "__main__":
    main(sys.argv[1:])
