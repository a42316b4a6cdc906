"""The on-disk layout of an ActivationStore: atomic shard files, shard records and the manifest.

Layout of ``out_dir``::

    manifest.json               config (model, hooks, layers, positions, conditions, dtype, ...), shard list
                                (see :mod:`vlminterp.cache.manifest`)
    shards/shard-00000.safetensors   per-sample vectors ``vectors/{hook}/{condition}/{layer}`` [n, d]
                                     and the shard's statistics ``stats/{hook}/{condition}/{label}/{field}``
    shards/shard-00000.json     the shard's record: sample ids, labels, byte size, sha256

Every file is written to a temporary name in the same directory and moved into place with
``os.replace``, so a reader never sees a partial file. A shard counts as finished only when its
record exists and the file's size matches it, so a crash between the two writes, or a truncated
file, makes the shard be computed again on resume.

Example:
    >>> import tempfile, torch
    >>> from pathlib import Path
    >>> path = Path(tempfile.mkdtemp()) / "x.json"
    >>> write_json_atomic(path, {"a": 1}); read_json(path)
    {'a': 1}
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from vlminterp.io import atomic_path as _atomic_path
from vlminterp.io import read_json, write_json_atomic

__all__ = [
    "ShardCorruptError",
    "IncompleteStoreError",
    "ShardRecord",
    "write_json_atomic",
    "read_json",
    "write_shard",
    "read_shard_tensors",
    "read_shard_tensor",
    "verify_shard",
    "torch_dtype",
    "shard_path",
    "record_path",
    "read_record",
    "file_sha256",
    "MANIFEST_NAME",
]

MANIFEST_NAME = "manifest.json"
SHARD_DIR = "shards"


class ShardCorruptError(RuntimeError):
    """A shard file on disk does not match its record (truncated, changed or missing)."""


class IncompleteStoreError(RuntimeError):
    """The collection in ``out_dir`` has not finished."""


@dataclass(frozen=True)
class ShardRecord:
    """What a finished shard holds, written next to it as JSON.

    Attributes:
        index: Shard number (global, independent of the process count).
        file: File name inside ``shards/``.
        sample_ids: Ids of the shard's samples, in row order (the same for every condition).
        labels: Label of every sample (None when unlabeled).
        bytes: Size of the shard file.
        sha256: Hex digest of the shard file.
    """

    index: int
    file: str
    sample_ids: list[str]
    labels: list[str | None]
    bytes: int
    sha256: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ShardRecord:
        return cls(**{k: d[k] for k in ("index", "file", "sample_ids", "labels", "bytes", "sha256")})


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file, read in 16 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 24):
            h.update(block)
    return h.hexdigest()


# ---------------------------------------------------------------------- shards
def shard_path(out_dir: Path, index: int) -> Path:
    return out_dir / SHARD_DIR / f"shard-{index:05d}.safetensors"


def record_path(out_dir: Path, index: int) -> Path:
    return out_dir / SHARD_DIR / f"shard-{index:05d}.json"


def write_shard(
    out_dir: Path, index: int, tensors: dict[str, Tensor], sample_ids: list[str], labels: list[str | None]
) -> ShardRecord:
    """Write shard ``index`` (tensors, then its record), each atomically. Returns the record."""
    path = shard_path(out_dir, index)
    with _atomic_path(path) as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp))
    record = ShardRecord(
        index=index,
        file=path.name,
        sample_ids=list(sample_ids),
        labels=list(labels),
        bytes=path.stat().st_size,
        sha256=file_sha256(path),
    )
    write_json_atomic(record_path(out_dir, index), record.to_dict())
    return record


def read_record(out_dir: Path, index: int) -> ShardRecord | None:
    """The record of shard ``index`` if the shard is finished and its file has the recorded size."""
    rec_file = record_path(out_dir, index)
    if not rec_file.is_file():
        return None
    record = ShardRecord.from_dict(read_json(rec_file))
    path = out_dir / SHARD_DIR / record.file
    if not path.is_file() or path.stat().st_size != record.bytes:
        return None
    return record


def verify_shard(out_dir: Path, record: ShardRecord, checksum: bool = False) -> Path:
    """The shard's path, after checking its size (and sha256 when ``checksum``) against ``record``.

    Raises:
        ShardCorruptError: the file is missing, truncated or changed.
    """
    path = out_dir / SHARD_DIR / record.file
    fix = "Re-run the same collect call with this out_dir (CLI: --resume) to recompute it."
    if not path.is_file():
        raise ShardCorruptError(f"Shard file {str(path)!r} is missing. {fix}")
    size = path.stat().st_size
    if size != record.bytes:
        raise ShardCorruptError(
            f"Shard file {str(path)!r} has {size} bytes but its record says {record.bytes}: it is truncated or "
            f"was changed. {fix}"
        )
    if checksum and file_sha256(path) != record.sha256:
        raise ShardCorruptError(f"Shard file {str(path)!r} does not match its sha256 checksum. {fix}")
    return path


def read_shard_tensors(path: Path, prefix: str) -> dict[str, Tensor]:
    """The tensors of a shard file whose key starts with ``prefix`` (memory-mapped read of those only)."""
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys() if k.startswith(prefix)}  # noqa: SIM118


def read_shard_tensor(path: Path, key: str) -> Tensor:
    """One tensor of a shard file (only its bytes are read, through a memory map)."""
    with safe_open(str(path), framework="pt") as f:
        if key not in f.keys():  # noqa: SIM118
            raise KeyError(f"{key!r} is not in shard {str(path)!r}.")
        return f.get_tensor(key)


def torch_dtype(name: str | torch.dtype) -> torch.dtype:
    """``"float16"``/``"bfloat16"``/``"float32"`` (or the torch dtype) as a torch dtype for stored vectors."""
    choices = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
    if isinstance(name, torch.dtype):
        name = str(name).removeprefix("torch.")
    if name not in choices:
        raise ValueError(f"Vector dtype must be one of {list(choices)}, got {name!r}.")
    return choices[name]
