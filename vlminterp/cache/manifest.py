"""The manifest of an ActivationStore: what a collection was made with, and resuming it.

``manifest.json`` holds the collection's config (:func:`collection_config`), the forward batch
size, whether it is complete and, once it is, the shard records. A rerun with the same arguments
resumes: :func:`open_out_dir` compares the stored config with the new call's field by field
(:func:`check_config`, :class:`ManifestMismatchError` names the first difference) and
:func:`finished_shard_stats` reads back every finished shard instead of computing it.

No machine path is part of the config: the model is named by its spec (``model_id``: ``organism``,
``tiny:llava``, a hub id; :func:`vlminterp.specs.model_name`, kept for readers, not compared) and
recognised by :func:`~vlminterp.cache.identity.model_fingerprint`; image files count by name and
size. So a collection resumes from a checkpoint or a dataset copied to another folder, and is
refused for another model.

Example:
    >>> from vlminterp import HookedVLM, Sample
    >>> from vlminterp.cache.collection import plan_collection
    >>> model, samples = HookedVLM.tiny("llava"), [Sample(id="a", query="hi")]
    >>> plan = plan_collection(
    ...     model, samples, ["text_only"], hooks="resid_post", layers=None, positions="last", batch_size=8,
    ...     shard_size=256, out_dir=None, keep="stats", covariance=False, dtype="float32", prompt_options={},
    ... )
    >>> config = collection_config(model, plan, samples)
    >>> config["model_id"], len(config["model_fingerprint"])
    ('tiny:llava', 64)
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import Tensor

from vlminterp.cache.collection import CollectPlan, StatsKey, stats_from_tensors, stats_tensors
from vlminterp.cache.identity import model_fingerprint
from vlminterp.cache.running_stats import RunningStats
from vlminterp.cache.shards import (
    MANIFEST_NAME,
    ShardRecord,
    read_json,
    read_record,
    read_shard_tensors,
    verify_shard,
    write_json_atomic,
    write_shard,
)
from vlminterp.parallel import barrier
from vlminterp.prompts import Sample

__all__ = [
    "FORMAT",
    "ManifestMismatchError",
    "samples_digest",
    "collection_config",
    "check_config",
    "open_out_dir",
    "finished_shard_stats",
    "save_shard",
]

#: The manifest's format tag.
FORMAT = "vlminterp.activation_store/1"
#: Config fields that describe the collection for readers but are not compared on resume.
DESCRIPTIVE_FIELDS = ("model_id",)


class ManifestMismatchError(ValueError):
    """``out_dir`` holds a collection made with another model or configuration.

    Attributes:
        field: The first config field that differs.
        stored: Its value in the manifest on disk.
        requested: Its value in this call.
    """

    def __init__(self, out_dir: Path, field: str, stored: Any, requested: Any, note: str = ""):
        self.field, self.stored, self.requested = field, stored, requested
        super().__init__(
            f"{str(out_dir)!r} holds a collection with a different {field!r}: the manifest has {stored!r}, this "
            f"call asks for {requested!r}{note}. Nothing was overwritten. Use another out_dir, or repeat the "
            "original call to resume it."
        )


def _version() -> str:
    import vlminterp

    return vlminterp.__version__


def samples_digest(samples: Sequence[Sample]) -> str:
    """A sha256 of what defines the prompts: ids, texts, labels, and each image's mode and size, or file name and size.

    An image given as a file counts by its name and byte size, not its folder, so a dataset copied
    elsewhere has the same digest.

    Example:
        >>> samples_digest([Sample(id="a", query="hi")]) == samples_digest([Sample(id="a", query="hi")])
        True
    """
    h = hashlib.sha256()
    for s in samples:
        image = s.image
        if image is None:
            ident = None
        elif isinstance(image, (str, Path)):
            path = Path(image)
            ident = [path.name, path.stat().st_size if path.is_file() else None]
        else:
            ident = [image.mode, image.size]
        h.update(json.dumps([s.id, s.query, s.caption, s.label, ident], default=str).encode())
    return h.hexdigest()


def collection_config(model: Any, plan: CollectPlan, samples: Sequence[Sample]) -> dict[str, Any]:
    """The manifest's config: every field a resumed run must match (and ``model_id``, the model's spec name)."""
    from vlminterp.specs import model_name

    return {
        "model_id": model_name(model),
        "family": model.cfg.family,
        "n_layers": model.cfg.n_layers,
        "d_model": model.cfg.d_model,
        "model_fingerprint": model_fingerprint(model),
        "hooks": list(plan.hooks),
        "layers": list(plan.layers),
        "positions": plan.positions,
        "conditions": [c.value for c in plan.conditions],
        "keep": plan.keep,
        "covariance": plan.covariance,
        "dtype": str(plan.dtype).removeprefix("torch."),
        "shard_size": plan.shard_size,
        "n_samples": len(samples),
        "samples_digest": samples_digest(samples),
        "prompt_options": json.loads(json.dumps(plan.prompt_options, default=list)),
        "vlminterp_version": _version(),
        "hook_names": {
            k: list(v) for k, v in plan.names.items()
        },  # derived: last, so the cause is named first
    }


def check_config(out_dir: Path, stored: dict[str, Any], requested: dict[str, Any]) -> None:
    """Raise :class:`ManifestMismatchError` naming the first compared field (in ``requested`` order) that differs.

    Example:
        >>> check_config(Path("out"), {"model_id": "a", "keep": "stats"}, {"model_id": "b", "keep": "stats"})
        >>> check_config(Path("out"), {"keep": "stats"}, {"keep": "both"})
        Traceback (most recent call last):
        ...
        vlminterp.cache.manifest.ManifestMismatchError: 'out' holds a collection with a different 'keep': ...
    """
    for field in [*requested, *(f for f in stored if f not in requested)]:
        if field in DESCRIPTIVE_FIELDS or stored.get(field) == requested.get(field):
            continue
        note = ""
        if field == "model_fingerprint":
            note = (
                f" (the stored collection is of model {stored.get('model_id')!r}, this call's model is "
                f"{requested.get('model_id')!r}: other weights or config)"
            )
        raise ManifestMismatchError(out_dir, field, stored.get(field), requested.get(field), note)


def open_out_dir(
    out: Path, config: dict[str, Any], resume: bool, rank: int, world: int, batch_size: int
) -> None:
    """Check an existing manifest against ``config`` (every rank), or write a new one (rank 0).

    Raises:
        FileExistsError: ``out`` holds a collection and ``resume`` is False, or holds other files.
        ManifestMismatchError: ``out`` holds a collection made with another model or config.
    """
    path = out / MANIFEST_NAME
    if path.is_file():
        if not resume:
            raise FileExistsError(
                f"{str(out)!r} already holds a collection; pass resume=True (CLI: --resume) to continue it, or use a "
                "new out_dir."
            )
        stored = read_json(path)
        check_config(out, stored.get("config", {}), config)
    elif out.is_dir() and any(out.iterdir()):
        raise FileExistsError(
            f"{str(out)!r} is not empty and holds no {MANIFEST_NAME}; collect writes into an empty or new directory."
        )
    barrier()
    if rank == 0 and not path.is_file():
        write_json_atomic(
            path, {"format": FORMAT, "config": config, "batch_size": batch_size, "complete": False}
        )
    barrier()


def finished_shard_stats(
    out: Path, index: int, samples: Sequence[Sample], plan: CollectPlan
) -> dict[StatsKey, RunningStats] | None:
    """The statistics of shard ``index`` if it is finished on disk (else None: compute it)."""
    record = read_record(out, index)
    if record is None or record.sample_ids != [s.id for s in samples]:
        return None
    if not plan.keeps_stats:
        return {}
    return stats_from_tensors(read_shard_tensors(verify_shard(out, record), "stats/"))


def save_shard(
    out: Path,
    index: int,
    samples: Sequence[Sample],
    vectors: dict[str, Tensor],
    stats: dict[StatsKey, RunningStats],
) -> ShardRecord:
    """Write shard ``index``: its vectors, its statistics and its record (see :func:`~vlminterp.cache.shards.write_shard`)."""
    return write_shard(
        out, index, {**vectors, **stats_tensors(stats)}, [s.id for s in samples], [s.label for s in samples]
    )
