"""Study: the representation gap between image and text inputs, and how it meets the safety direction.

Samples come from one labelled ``--dataset`` or from a ``--harmful`` and a ``--benign`` source
(:mod:`vlminterp.studies.sources`; ``--on-missing generate`` draws missing typographic images and
gives photos a grey placeholder). The classes are counted before anything is collected: a set with
one class runs every part that needs one class and says (a printed line, ``info.skipped`` in the
manifest) that the probes and the safety direction were skipped.

Stages (each result is a file in ``--out``; figures are drawn from those files, never from memory):

0. captions: a sample with an image but no caption gets the model's own, query-conditioned caption
   (:func:`vlminterp.interventions.captioning.caption_images`, cached in ``--out``/captions.json);
   rows get ``caption_source`` (``self``, ``dataset`` or ``self+dataset``) and the manifest the
   captioning prompt.
1. collect: paired prompts (IMAGE, BLANK, TEXT_ONLY, CAPTION by default) for every sample, last-token
   ``resid_post`` of every (chosen) layer, cached in batches with ``model.run_with_cache``.
2. analyse: PCA (fit on all conditions), gap metrics of each condition vs TEXT_ONLY, CMRM's candidate
   shift ``mean(text_only) − mean(blank)`` (and its first-PC variant) as "fraction of the IMAGE→TEXT_ONLY
   gap closed", harmful-vs-benign probes (text→text, image→image, text→image), ShiftDC's safety
   direction ``mean(benign) − mean(harmful)`` of TEXT_ONLY, the modality direction, projections and the
   per-sample distortion of ``m = x(image) − x(caption twin)``. Written as ``results.json`` /
   ``results.csv`` (tidy rows) plus ``manifest.json`` (config, its hash, the model's spec, versions) by
   :func:`vlminterp.results.write_results`. A run whose manifest matches is not recomputed
   (``--force`` recomputes). Every argument (``--layers`` against the model too) is checked before
   anything is written.
3. figures: every :data:`vlminterp.viz.FIGURES` figure whose rows exist, as HTML (+ PNG with kaleido).

Under ``torchrun --nproc-per-node N`` (or ``accelerate launch``) stages 0 and 1 are shared out: each
process captions and collects its shard of the samples (self-captions go through per-rank copies of
``captions.json``, :func:`vlminterp.parallel.json_cache`), rank 0 gathers the activations in sample
order, and stages 2 and 3 (analysis, ``results.json``, figures) run on rank 0 alone, so the files
equal a one-process run's.

Usage::

    vlminterp gap --model tiny:llava --out results/representation_gap
    vlminterp gap --model organism --dataset organism
    vlminterp gap --model tiny:llava --harmful figstep --harmful-root ../shared/data/figstep \
        --benign llava-bench-coco --benign-root ../shared/data/llava_bench_coco --on-missing generate --limit 8
    vlminterp gap --model llava-hf/llava-1.5-7b-hf --dataset mm-safetybench \\
        --data-root /work/shared/data --limit 200 --layers 8,16,24,31
    torchrun --nproc-per-node 8 -m vlminterp gap --model llava-hf/llava-1.5-7b-hf --device cuda \\
        --dataset mm-safetybench --data-root /work/shared/data --limit 200
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vlminterp import Condition, HookedVLM, PromptBatch, Sample, viz
from vlminterp.analysis import (
    ConditionActivations,
    diff_in_means,
    direction_rows,
    distortion_rows,
    first_pc_direction,
    gap_closed_rows,
    gap_rows,
    pca_rows,
    probe_rows,
    projection_rows,
    safety_direction,
)
from vlminterp.interventions.captioning import QUERY_CONDITIONED_PROMPT
from vlminterp.interventions.site import resolve_layers
from vlminterp.io import read_json
from vlminterp.parallel import gather, init_from_env, is_main, json_cache, on_main, shard
from vlminterp.results import MANIFEST, config_hash, write_results
from vlminterp.specs import DATASET_SPEC_HELP, MODEL_SPEC_HELP, ModelSpec, load_model, model_name
from vlminterp.studies.sources import (
    SourceOptions,
    add_source_arguments,
    caption_source,
    class_counts,
    fill_captions,
    one_class_note,
)

DEFAULT_CONDITIONS = ("image", "blank", "text_only", "caption")


@dataclass
class RepresentationGapConfig(SourceOptions):
    """Configuration of one run (validated on construction, no side effects).

    The sample-source fields (``dataset``, ``harmful``, ``benign``, their roots, ``on_missing``,
    ``limit``) and :meth:`sources` are :class:`~vlminterp.studies.sources.SourceOptions`'s
    (default dataset ``demo``).

    Attributes:
        model: ``tiny:FAMILY`` (``tiny`` = ``tiny:llava``), ``organism``, or a checkpoint name/dir.
        conditions: Conditions to collect; must include ``text_only``.
        layers: Layers to cache (None = all; negative ones count from the end, checked against the model).
        out: Output directory.
        caption_tokens: Length limit of a self-caption (CAPTION for samples without a caption).
        batch_size: Samples per forward pass (rows = samples x conditions).
        n_splits: Folds of every cross-validated probe.
        seed: Seed of folds and probes.
    """

    model: str = "tiny:llava"
    conditions: tuple[str, ...] = DEFAULT_CONDITIONS
    layers: tuple[int, ...] | None = None
    out: str = "results/representation_gap"
    caption_tokens: int = 64
    batch_size: int = 8
    n_splits: int = 5
    seed: int = 0

    def __post_init__(self) -> None:
        self.conditions = tuple(Condition.parse(c).value for c in self.conditions)
        if "text_only" not in self.conditions:
            raise ValueError(
                f"conditions must include 'text_only' (the reference), got {list(self.conditions)}."
            )
        if len(set(self.conditions)) != len(self.conditions):
            raise ValueError(f"conditions has duplicates: {list(self.conditions)}.")
        if self.layers is not None:
            self.layers = tuple(int(v) for v in self.layers)
            if not self.layers:
                raise ValueError("layers is empty; give layer indices or None (every layer).")
        for name in ("caption_tokens", "batch_size", "n_splits"):
            if int(getattr(self, name)) < (2 if name == "n_splits" else 1):
                raise ValueError(
                    f"{name} must be >= {2 if name == 'n_splits' else 1}, got {getattr(self, name)}."
                )
        if self.limit is not None and self.limit < self.n_splits:
            raise ValueError(
                f"limit={self.limit} leaves fewer than n_splits={self.n_splits} samples per class; "
                f"use --limit >= {self.n_splits} or lower --n-splits."
            )
        ModelSpec.parse(self.model)
        super().__post_init__()

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["conditions"] = list(self.conditions)
        d["layers"] = None if self.layers is None else list(self.layers)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RepresentationGapConfig:
        return cls(
            **{**d, "conditions": tuple(d["conditions"]), "layers": d["layers"] and tuple(d["layers"])}
        )

    def hash(self) -> str:
        """Hash of everything that changes the results (not ``out``): the manifest's ``config_hash``."""
        return config_hash({k: v for k, v in self.to_dict().items() if k != "out"})


# ---------------------------------------------------------------------- stages
def chosen_layers(cfg: RepresentationGapConfig, n_layers: int) -> list[int]:
    """``cfg.layers`` checked against an ``n_layers`` model (every layer when None).

    Example:
        >>> chosen_layers(RepresentationGapConfig(layers=(0, -1)), 4)
        [0, 3]
    """
    return (
        list(range(n_layers))
        if cfg.layers is None
        else list(resolve_layers(cfg.layers, n_layers, "--layers"))
    )


def collect(
    model: HookedVLM, samples: Sequence[Sample], cfg: RepresentationGapConfig
) -> ConditionActivations:
    """Last-token ``resid_post`` of every condition, batch by batch, as :class:`ConditionActivations`.

    The CAPTION condition needs ``Sample.caption`` (:func:`vlminterp.studies.sources.fill_captions`).
    """
    names = model.hook_names("resid_post", chosen_layers(cfg, model.cfg.n_layers))
    caches = []
    for start in range(0, len(samples), cfg.batch_size):
        chunk = samples[start : start + cfg.batch_size]
        batch = PromptBatch.paired(model, chunk, cfg.conditions)
        _, cache = model.run_with_cache(batch, names_filter=names, positions="last")
        caches.append(cache)
    return ConditionActivations.from_cache(
        caches, "resid_post", model=model_name(model), dataset=str(cfg.sources())
    )


def merged(parts: Sequence[ConditionActivations], order: Sequence[str]) -> ConditionActivations:
    """The processes' activations as one, every condition's rows in the sample ``order`` of one process.

    Example:
        >>> one = lambda ids: ConditionActivations({"text_only": np.ones((len(ids), 1, 2))}, {"text_only": ids})
        >>> merged([one(["a", "c"]), one(["b"])], ["a", "b", "c"]).sample_ids["text_only"]
        ('a', 'b', 'c')
    """
    first, rank = parts[0], {sample_id: i for i, sample_id in enumerate(order)}
    x, ids, labels = {}, {}, {}
    for cond in first.conditions:
        got = [i for p in parts for i in p.sample_ids[cond]]
        rows = sorted(range(len(got)), key=lambda r: rank[got[r]])
        x[cond] = np.concatenate([p.x[cond] for p in parts])[rows]
        ids[cond] = [got[r] for r in rows]
        every = [lab for p in parts for lab in p.labels[cond]]
        labels[cond] = [every[r] for r in rows]
    return ConditionActivations(x, ids, labels, first.layers, first.model, first.dataset)


def analyse(
    acts: ConditionActivations,
    cfg: RepresentationGapConfig,
    variant_of: dict[str, str],
    two_classes: bool = True,
) -> list[dict[str, Any]]:
    """Every analysis of the study as tidy rows (``two_classes=False``: no probes, no safety direction)."""
    conds = acts.conditions
    others = [c for c in conds if c != "text_only"]
    rows = pca_rows(acts)
    rows += gap_rows(acts, [(c, "text_only") for c in others], n_splits=cfg.n_splits, seed=cfg.seed)
    if {"image", "blank"} <= set(conds):
        _, text, blank = acts.paired("text_only", "blank")
        shifts = {
            "cmrm_mean": diff_in_means(text, blank),
            "cmrm_first_pc": first_pc_direction(text - blank, center=True, scale=False),
        }
        rows += gap_closed_rows(acts, shifts, source="image", target="text_only")
    directions = {}
    if two_classes:
        pairs = [(c, c) for c in ("text_only", "image") if c in conds]
        pairs += [("text_only", c) for c in others if c in ("image", "caption")]
        rows += probe_rows(acts, pairs, n_splits=cfg.n_splits, seed=cfg.seed)
        directions["safety"] = safety_direction(acts, "text_only")
    if "image" in conds:
        directions["modality"] = diff_in_means(acts.get("image"), acts.get("text_only"))
        if two_classes:
            twin = "caption" if "caption" in conds else "text_only"
            rows += distortion_rows(
                acts, directions["safety"], image="image", twin=twin, variant_of=variant_of
            )
    rows += direction_rows(acts, directions)
    if two_classes:
        rows += projection_rows(acts, "safety", directions["safety"])
    return rows


def run(
    cfg: RepresentationGapConfig,
    *,
    force: bool = False,
    model: HookedVLM | None = None,
    device: str = "cpu",
    device_map: str | None = None,
) -> Path:
    """Run (or resume) the study; returns the output directory.

    Args:
        cfg: The configuration.
        force: Recompute even when ``manifest.json`` matches ``cfg``.
        model: An already loaded model to use instead of loading ``cfg.model`` (tests, notebooks).
        device: Where ``cfg.model`` is loaded (``cuda`` under a launcher: each rank's own GPU).
        device_map: Accelerate placement of one large checkpoint (``auto``), for a one-process run.
    """
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {cfg.out!r} is a file; give a folder (it is created).")
    results, manifest_path = out / "results.json", out / MANIFEST
    manifest = read_json(manifest_path) if manifest_path.is_file() else {}
    if not force and results.is_file() and manifest.get("config_hash") == cfg.hash():
        if is_main():
            print(
                f"{results} is up to date (config {cfg.hash()}); drawing figures only. Use --force to recompute."
            )
    else:
        t0 = time.perf_counter()
        samples = cfg.sources().load()
        counts = class_counts(samples)
        skipped = one_class_note(counts)
        if min([n for n in counts.values() if n] or [len(samples)]) < cfg.n_splits:
            raise ValueError(
                f"The samples have {counts} per class ({len(samples)} in all): fewer than "
                f"n_splits={cfg.n_splits} in a group. Raise --limit, lower --n-splits, or use a larger source."
            )
        if skipped and is_main():
            print(skipped)
        device = init_from_env(device, device_map)
        model = model if model is not None else load_model(cfg.model, device=device, device_map=device_map)
        chosen_layers(cfg, model.cfg.n_layers)  # checked before captions are written
        if "caption" in cfg.conditions:
            with json_cache(out / "captions.json") as mine:  # each process captions its shard
                fill_captions(model, shard(samples), mine, cfg.caption_tokens)
            samples = fill_captions(model, samples, out / "captions.json", cfg.caption_tokens)
        mine = shard(samples)
        parts = [p for p in gather(collect(model, mine, cfg) if mine else None) if p is not None]
        acts = merged(parts, [s.id for s in samples])
        on_main(lambda: _analyse_and_write(out, acts, cfg, samples, counts, skipped, model_name(model), t0))
    if is_main():
        for path in viz.draw(results, out):
            print(path)
    return out


def _analyse_and_write(
    out: Path,
    acts: ConditionActivations,
    cfg: RepresentationGapConfig,
    samples: Sequence[Sample],
    counts: dict[str, int],
    skipped: str | None,
    model: str,
    t0: float,
) -> None:
    """Stage 2 on rank 0: the analysis rows, ``results.json`` / ``.csv`` and the manifest."""
    rows = analyse(acts, cfg, {s.id: str(s.meta.get("variant", "all")) for s in samples}, not skipped)
    info = {
        "study": "representation_gap",
        "model": model,
        "hook": "resid_post",
        "positions": "last",
        "layers": list(acts.layers),
        "n_samples": len(samples),
        "classes": counts,
        "skipped": skipped,
        "placeholder_images": sum(bool(s.meta.get("placeholder_image")) for s in samples),
        "n_rows": len(rows),
        "seconds": round(time.perf_counter() - t0, 2),
    }
    if "caption" in cfg.conditions:
        source = caption_source(samples)
        rows = [{**r, "caption_source": source} for r in rows]
        info["captions"] = {
            "source": source,
            "self_prompt": QUERY_CONDITIONED_PROMPT,
            "max_new_tokens": cfg.caption_tokens,
            "cache": "captions.json",
        }
    write_results(out, rows, cfg.to_dict(), info=info)
    print(f"wrote {len(rows)} rows to {out / 'results.json'} in {time.perf_counter() - t0:.1f} s")


def _parse(
    argv: Sequence[str] | None,
) -> tuple[RepresentationGapConfig, argparse.Namespace, argparse.ArgumentParser]:
    p = argparse.ArgumentParser(prog="vlminterp gap", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="tiny:llava", help=MODEL_SPEC_HELP)
    p.add_argument("--dataset", default=None, help=f"{DATASET_SPEC_HELP} (default demo)")
    add_source_arguments(p)
    p.add_argument("--limit", type=int, default=None, help="first N samples of each label")
    p.add_argument("--conditions", default=",".join(DEFAULT_CONDITIONS), help="comma-separated conditions")
    p.add_argument(
        "--layers", default=None, help="comma-separated layer indices (default all; negative: from the end)"
    )
    p.add_argument("--out", default="results/representation_gap", help="output directory")
    p.add_argument("--caption-tokens", type=int, default=64, help="length limit of a self-caption")
    p.add_argument("--batch-size", type=int, default=8, help="samples per forward pass")
    p.add_argument("--n-splits", type=int, default=5, help="cross-validation folds")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--force", action="store_true", help="recompute even if the manifest matches")
    p.add_argument("--device", default="cpu", help="cpu, cuda (under torchrun: each rank's own GPU), cuda:1")
    p.add_argument(
        "--device-map",
        default=None,
        help="accelerate placement of one large checkpoint over the visible GPUs, e.g. auto (one process)",
    )
    a = p.parse_args(argv)
    try:
        layers = None if a.layers is None else tuple(int(v) for v in a.layers.split(",") if v)
    except ValueError:
        p.error(f"--layers {a.layers!r}: give comma-separated layer indices (8,16,-1).")
    try:
        cfg = RepresentationGapConfig(
            model=a.model,
            **SourceOptions.values_from(a),
            conditions=tuple(c for c in a.conditions.split(",") if c),
            layers=layers,
            out=a.out,
            caption_tokens=a.caption_tokens,
            batch_size=a.batch_size,
            n_splits=a.n_splits,
            seed=a.seed,
        )
    except ValueError as e:
        p.error(str(e))
    return cfg, a, p


def main(argv: Sequence[str] | None = None) -> Path:
    """Command-line entry point (importable for tests)."""
    cfg, args, parser = _parse(argv)
    try:
        return run(cfg, force=args.force, device=args.device, device_map=args.device_map)
    except (ValueError, FileNotFoundError) as e:  # a bad dataset file, a missing image (--on-missing raise)
        parser.error(str(e))


if __name__ == "__main__":
    main(sys.argv[1:])
