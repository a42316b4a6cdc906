"""``vlminterp collect``: cache paired-condition activations of a dataset into an ActivationStore dir.

Example (shell)::

    vlminterp collect --model tiny --dataset tiny --conditions image,blank,text_only \\
        --layers all --positions last --out runs/tiny-collect
    torchrun --nproc_per_node 4 -m vlminterp collect --model llava-hf/llava-1.5-7b-hf \\
        --dataset mm-safetybench --data-root ../shared/data/mm-safetybench --out runs/mmsb --resume
    vlminterp collect --model tiny --harmful figstep --harmful-root ../shared/data/figstep \\
        --benign llava-bench-coco --benign-root ../shared/data/llava_bench_coco --on-missing generate \\
        --conditions image,text_only,caption --limit 8 --out runs/figstep-llava

``--model`` is a model spec (:mod:`vlminterp.specs`: ``organism``, ``tiny``, ``tiny:FAMILY``, a
checkpoint). ``--dataset`` is a dataset spec (:class:`vlminterp.specs.DatasetSpec`): ``tiny`` (a few
synthetic samples, the default), ``organism[:split]``, or a name of :func:`vlminterp.data.names` read
from ``--data-root``; or ``--harmful`` / ``--benign`` give one source per class
(:mod:`vlminterp.studies.sources`). ``--limit N`` keeps the first N samples of each label;
``--on-missing`` says what a missing image file does. The CAPTION condition uses the model's own
caption where a sample has none, cached in ``--out``/captions.json. Every argument (``--layers``
against the model too) is checked before anything is written. Under ``torchrun`` / ``accelerate launch`` the process group is set up
here (gloo on CPU, nccl on GPU) and every rank collects its own shards into ``--out``.

Example:
    >>> import argparse
    >>> parser = argparse.ArgumentParser(); add_arguments(parser)
    >>> cfg = CollectConfig.from_args(parser.parse_args(["--out", "x", "--layers", "0,2-3"]))
    >>> cfg.layers, cfg.conditions
    ([0, 2, 3], ['image', 'blank', 'text_only'])
    >>> CollectConfig.from_dict(cfg.to_dict()) == cfg
    True
"""

from __future__ import annotations

import argparse
import contextlib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

from vlminterp.cache.manifest import MANIFEST_NAME
from vlminterp.cache.store import KEEP_CHOICES, ActivationStore
from vlminterp.interventions.site import resolve_layers
from vlminterp.parallel import init_from_env
from vlminterp.positions import POSITION_NAMES, check_positions, positions_from_text
from vlminterp.prompts import Condition
from vlminterp.specs import DATASET_SPEC_HELP, MODEL_SPEC_HELP, ModelSpec
from vlminterp.studies.sources import SourceOptions, add_source_arguments, class_counts, fill_captions

__all__ = ["CAPTIONS", "CollectConfig", "add_arguments", "run", "parse_layers"]

#: The self-caption cache in ``--out`` (:func:`vlminterp.studies.sources.fill_captions`).
CAPTIONS = "captions.json"


def parse_layers(text: str) -> list[int] | None:
    """``"all"`` -> None; ``"0,2,5-7"`` -> ``[0, 2, 5, 6, 7]``."""
    if text.strip().lower() == "all":
        return None
    layers: list[int] = []
    try:
        for part in text.split(","):
            lo, _, hi = part.strip().partition("-")
            layers.extend(range(int(lo), int(hi) + 1) if hi else [int(lo)])
    except ValueError:
        raise ValueError(
            f"--layers {text!r}: give 'all' or comma-separated layers and ranges like '0,2,5-7'."
        ) from None
    return layers


@dataclass
class CollectConfig(SourceOptions):
    """Arguments of one ``vlminterp collect`` run, validated on construction (no side effects).

    The sample-source fields and :meth:`sources` are :class:`~vlminterp.studies.sources.SourceOptions`'s
    (default dataset ``tiny``; ``split`` is added to ``dataset``).
    """

    default_dataset: ClassVar[str] = "tiny"

    out: str
    model: str = "tiny"
    caption_tokens: int = 64
    split: str | None = None
    conditions: list[str] = field(default_factory=lambda: ["image", "blank", "text_only"])
    hooks: list[str] = field(default_factory=lambda: ["resid_post"])
    layers: list[int] | None = None
    positions: str | int = "last"
    batch_size: int = 8
    shard_size: int = 256
    keep: str = "stats"
    covariance: bool = False
    vector_dtype: str = "float32"
    device: str = "cpu"
    device_map: str | None = None
    resume: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        ModelSpec.parse(self.model)
        self.conditions = [Condition.parse(c).value for c in self.conditions]
        self.positions = check_positions(self.positions, per_row=True)
        if self.keep not in KEEP_CHOICES:
            raise ValueError(f"--keep {self.keep!r}: choose from {list(KEEP_CHOICES)}.")
        if self.caption_tokens < 1:
            raise ValueError(f"--caption-tokens must be >= 1, got {self.caption_tokens}.")
        if self.split and (self.harmful or self.benign):
            raise ValueError("--split applies to --dataset; give --harmful / --benign as NAME:split instead.")
        super().__post_init__()

    def dataset_text(self) -> str | None:
        """``dataset`` with ``split`` appended (to ``tiny`` when only ``--split`` is given)."""
        return f"{self.dataset or self.default_dataset}:{self.split}" if self.split else self.dataset

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CollectConfig:
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"Unknown collect config fields {sorted(unknown)}.")
        return cls(**d)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> CollectConfig:
        return cls(
            out=args.out,
            model=args.model,
            **SourceOptions.values_from(args),
            caption_tokens=args.caption_tokens,
            split=args.split,
            conditions=[c for c in args.conditions.split(",") if c],
            hooks=[h for h in args.hooks.split(",") if h],
            layers=parse_layers(args.layers),
            positions=positions_from_text(args.positions),
            batch_size=args.batch_size,
            shard_size=args.shard_size,
            keep=args.keep,
            covariance=args.covariance,
            vector_dtype=args.vector_dtype,
            device=args.device,
            device_map=args.device_map,
            resume=args.resume,
            progress=not args.no_progress,
        )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``collect`` options to ``parser``."""
    d = CollectConfig(out="")
    parser.add_argument("--out", required=True, help="output directory (manifest + shards)")
    parser.add_argument("--model", default=d.model, help=MODEL_SPEC_HELP)
    parser.add_argument("--dataset", default=None, help=f"{DATASET_SPEC_HELP} (default tiny)")
    add_source_arguments(parser)
    parser.add_argument(
        "--caption-tokens", type=int, default=d.caption_tokens, help="self-caption length limit"
    )
    parser.add_argument("--split", default=None)
    parser.add_argument("--limit", type=int, default=None, help="first N samples of each label")
    parser.add_argument("--conditions", default=",".join(d.conditions), help="comma-separated conditions")
    parser.add_argument("--hooks", default=",".join(d.hooks), help="comma-separated hook kinds")
    parser.add_argument("--layers", default="all", help="'all' or e.g. '0,2,10-31'")
    parser.add_argument("--positions", default="last", help=f"{'|'.join(POSITION_NAMES)} or an int")
    parser.add_argument("--batch-size", type=int, default=d.batch_size, help="samples per forward")
    parser.add_argument("--shard-size", type=int, default=d.shard_size, help="samples per shard")
    parser.add_argument("--keep", default=d.keep, choices=KEEP_CHOICES)
    parser.add_argument("--covariance", action="store_true", help="also keep covariance matrices")
    parser.add_argument("--vector-dtype", default=d.vector_dtype, choices=("float32", "float16", "bfloat16"))
    parser.add_argument("--device", default=d.device)
    parser.add_argument("--device-map", default=None, help="accelerate placement, e.g. 'auto'")
    parser.add_argument("--resume", action="store_true", help="continue the collection already in --out")
    parser.add_argument("--no-progress", action="store_true")


def collect(cfg: CollectConfig) -> ActivationStore:
    """Run the collection described by ``cfg`` (samples and layers checked before anything is written)."""
    out = Path(cfg.out)
    resumable = out.is_dir() and cfg.resume and (out / MANIFEST_NAME).is_file()
    if out.exists() and not resumable and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(
            f"--out {cfg.out!r} already exists and is not an empty folder; pass --resume to continue the "
            "collection in it, or use a new folder."
        )
    samples = cfg.sources().load()
    counts = class_counts(samples)
    print(f"classes: {counts['harmful']} harmful, {counts['benign']} benign, {len(samples)} samples")
    device = init_from_env(cfg.device)
    model = ModelSpec.parse(cfg.model).load(device=device, device_map=cfg.device_map)
    if cfg.layers is not None:
        resolve_layers(cfg.layers, model.cfg.n_layers, "--layers")
    # The store writes into an empty folder: captions wait beside it until the collection is done.
    captions, pending = out / CAPTIONS, out.with_name(f".{out.name}.{CAPTIONS}")
    if "caption" in cfg.conditions:
        samples = fill_captions(
            model, samples, captions if captions.is_file() else pending, cfg.caption_tokens
        )
        n_self = sum(s.meta.get("caption_source") == "self" for s in samples)
        print(f"captions: {n_self} of {len(samples)} are the model's own (cached in {captions})")
    store = ActivationStore.collect(
        model,
        samples,
        cfg.conditions,
        hooks=tuple(cfg.hooks),
        layers=cfg.layers,
        positions=cfg.positions,
        batch_size=cfg.batch_size,
        out_dir=cfg.out,
        keep=cfg.keep,
        covariance=cfg.covariance,
        progress=cfg.progress,
        storage_dtype=cfg.vector_dtype,
        shard_size=cfg.shard_size,
        resume=cfg.resume,
    )
    with contextlib.suppress(FileNotFoundError):  # another rank may have moved it
        pending.replace(captions)
    return store


def run(args: argparse.Namespace) -> int:
    """Entry point of ``vlminterp collect``; prints a per-condition summary."""
    store = collect(CollectConfig.from_args(args))
    for cond in store.conditions:
        counts = f"{store.count(cond)} samples" if store.config["keep"] != "vectors" else "vectors"
        print(f"{cond.value:>10}: {counts}")
    print(f"wrote {store.out_dir}")
    return 0
