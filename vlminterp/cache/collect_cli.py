"""``vlminterp collect``: cache paired-condition activations of a dataset into an ActivationStore dir.

Example (shell)::

    vlminterp collect --model tiny --dataset tiny --conditions image,blank,text_only \\
        --layers all --positions last --out runs/tiny-collect
    torchrun --nproc_per_node 4 -m vlminterp collect --model llava-hf/llava-1.5-7b-hf \\
        --dataset mm-safetybench --data-root ../shared/data/mm-safetybench --out runs/mmsb --resume

``--model`` is a model spec (:mod:`vlminterp.specs`: ``organism``, ``tiny``, ``tiny:FAMILY``, a
checkpoint). ``--dataset`` is a dataset spec (:class:`vlminterp.specs.DatasetSpec`): ``tiny`` (a few
synthetic samples), ``organism[:split]``, or a name of :func:`vlminterp.data.names` read from
``--data-root``; ``--limit N`` keeps its first N samples of each label. Every argument (``--layers``
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
import os
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from vlminterp.cache.store import KEEP_CHOICES, ActivationStore
from vlminterp.interventions.site import resolve_layers
from vlminterp.positions import POSITION_NAMES, check_positions, positions_from_text
from vlminterp.prompts import Condition
from vlminterp.specs import DATASET_SPEC_HELP, MODEL_SPEC_HELP, DatasetSpec, ModelSpec

__all__ = ["CollectConfig", "add_arguments", "run", "parse_layers"]


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
class CollectConfig:
    """Arguments of one ``vlminterp collect`` run, validated on construction (no side effects)."""

    out: str
    model: str = "tiny"
    dataset: str = "tiny"
    data_root: str | None = None
    split: str | None = None
    limit: int | None = None
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
        self.dataset_spec()

    def dataset_spec(self) -> DatasetSpec:
        """The dataset as a :class:`DatasetSpec` (raises naming ``--dataset`` when it is not valid)."""
        text = f"{self.dataset}:{self.split}" if self.split else self.dataset
        return DatasetSpec.parse(
            text, self.data_root, self.limit, option="--dataset", root_option="--data-root"
        )

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
            dataset=args.dataset,
            data_root=args.data_root,
            split=args.split,
            limit=args.limit,
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
    parser.add_argument("--dataset", default=d.dataset, help=DATASET_SPEC_HELP)
    parser.add_argument("--data-root", default=None, help="the dataset's folder")
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


def _init_distributed(device: str) -> str:
    """Join the process group of torchrun / accelerate (env ``WORLD_SIZE`` > 1); returns this rank's device."""
    import torch
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return device
    cuda = device.startswith("cuda")
    dist.init_process_group("nccl" if cuda else "gloo")
    if cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return f"cuda:{local}"
    return device


def collect(cfg: CollectConfig) -> ActivationStore:
    """Run the collection described by ``cfg`` (samples and layers checked before anything is written)."""
    samples = cfg.dataset_spec().load()
    device = _init_distributed(cfg.device)
    model = ModelSpec.parse(cfg.model).load(device=device, device_map=cfg.device_map)
    if cfg.layers is not None:
        resolve_layers(cfg.layers, model.cfg.n_layers, "--layers")
    return ActivationStore.collect(
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


def run(args: argparse.Namespace) -> int:
    """Entry point of ``vlminterp collect``; prints a per-condition summary."""
    store = collect(CollectConfig.from_args(args))
    for cond in store.conditions:
        counts = f"{store.count(cond)} samples" if store.config["keep"] != "vectors" else "vectors"
        print(f"{cond.value:>10}: {counts}")
    print(f"wrote {store.out_dir}")
    return 0
