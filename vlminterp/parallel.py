"""Data-parallel runs: the process group of ``torchrun`` / ``accelerate launch``, shards and gathers.

Every long command (collect, eval, steer, sweep, reproduce, the studies) runs unchanged under
``torchrun --nproc-per-node N``: :func:`init_from_env` joins the group the launcher describes
(env ``WORLD_SIZE`` > 1; gloo on CPU, nccl on CUDA, one GPU per local rank), each process works on
:func:`shard` of the items, and :func:`gather` hands every process the list of all ranks' parts,
so rank 0 writes one merged result equal to a one-process run. :func:`on_main` runs a step that
must happen once (a config check that writes a file, a judge, a report) on rank 0 and hands every
process its result, or its error, so all ranks go on or stop together; :func:`broadcast` hands
every process rank 0's object (fitted vectors, so every rank steers with the same bits);
:func:`json_cache` lets every process fill a shared JSON cache (self-captions) for its own shard.
Without a launcher every function is a no-op: rank 0 of 1.

Example:
    >>> rank_world()
    (0, 1)
    >>> shard(list("abcde"))  # one process: everything
    ['a', 'b', 'c', 'd', 'e']
    >>> shard(list("abcde"), rank=1, world=2)  # every 2nd item from the second
    ['b', 'd']
    >>> gather({"rows": 3})
    [{'rows': 3}]
    >>> on_main(lambda: "checked"), broadcast([1, 2])
    ('checked', [1, 2])
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

from vlminterp.io import read_json, write_json_atomic

__all__ = [
    "part_path",
    "part_paths",
    "rank_world",
    "is_main",
    "init_from_env",
    "barrier",
    "shard",
    "gather",
    "broadcast",
    "on_main",
    "json_cache",
]

T = TypeVar("T")


def rank_world() -> tuple[int, int]:
    """``(rank, world size)`` under an initialised ``torch.distributed`` group, else ``(0, 1)``."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    """True on rank 0 (and in a plain one-process run): the process that writes merged results."""
    return rank_world()[0] == 0


def init_from_env(device: str = "cpu", device_map: str | None = None) -> str:
    """Join the process group a launcher describes (env ``WORLD_SIZE`` > 1); returns this rank's device.

    A one-process run, or a group already initialised, is left as it is and ``device`` returned.
    On CUDA each process takes the GPU of its ``LOCAL_RANK`` (nccl); otherwise gloo.

    Args:
        device: The device the command was given (``"cpu"``, ``"cuda"``, ``"cuda:0"``).
        device_map: The command's ``--device-map``: placing one model over every visible GPU is for a
            one-process run, so with several processes it raises.

    Raises:
        ValueError: ``device_map`` given to a run of several processes.
    """
    import torch
    import torch.distributed as dist

    world = max(int(os.environ.get("WORLD_SIZE", "1")), rank_world()[1])
    if device_map is not None and world > 1:
        raise ValueError(
            f"--device-map {device_map!r} places one model over all visible GPUs, but this run has {world} "
            "processes, each of which would do so. Use --device cuda under torchrun (one model per GPU), "
            "or run one process with --device-map for a checkpoint larger than one GPU."
        )
    if world <= 1 or dist.is_initialized():
        return device
    cuda = device.startswith("cuda")
    dist.init_process_group("nccl" if cuda else "gloo")
    if cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return f"cuda:{local}"
    return device


def barrier() -> None:
    """Wait for every process (no-op in a one-process run)."""
    if rank_world()[1] > 1:
        import torch.distributed as dist

        dist.barrier()


def shard(items: Sequence[T], rank: int | None = None, world: int | None = None) -> list[T]:
    """This process's part of ``items``: every ``world``-th item from index ``rank`` (strided, so the
    parts are balanced when cost varies along the list).

    Args:
        items: Everything to be done, in the same order on every process.
        rank, world: Default :func:`rank_world`.
    """
    r, w = rank_world()
    rank, world = r if rank is None else rank, w if world is None else world
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} is not in 0..{world - 1}.")
    return list(items[rank::world])


def gather(obj: Any) -> list[Any]:
    """Every process's ``obj`` (picklable), in rank order, on every process; ``[obj]`` in one process."""
    rank, world = rank_world()
    if world == 1:
        return [obj]
    import torch.distributed as dist

    parts: list[Any] = [None] * world
    dist.all_gather_object(parts, obj)
    return parts


def broadcast(obj: T) -> T:
    """Rank 0's ``obj`` (picklable) on every process; ``obj`` itself in one process.

    Every rank passes its own ``obj`` (ignored except on rank 0), e.g. vectors every rank fitted, so
    that all ranks continue with rank 0's bits.
    """
    if rank_world()[1] == 1:
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def on_main(fn: Callable[[], T]) -> T:
    """Call ``fn`` on rank 0 only; every rank returns its result, or raises the exception it raised.

    The other ranks wait meanwhile. Use it for a step that must happen once (checking and writing
    a config file, judging, writing a table): when rank 0 refuses, every rank raises the same error
    (same type and message) instead of hanging at the next collective.

    Args:
        fn: A function of no arguments; its result (or exception) must be picklable.
    """
    if rank_world()[1] == 1:
        return fn()
    result: Any = None
    error: Exception | None = None
    if is_main():
        try:
            result = fn()
        except Exception as e:  # handed to every rank and raised there
            error = e
    result, error = broadcast((result, error))
    if error is not None:
        raise error
    return result


@contextlib.contextmanager
def json_cache(path: str | Path | None) -> Iterator[Path | None]:
    """A JSON-object cache file (self-captions by key, ...) that every process fills for its own shard.

    Yields the file this process reads and updates: ``path`` itself in a one-process run (None when
    ``path`` is None); under a launcher ``NAME.rankR.json`` beside it, a copy of ``path`` so that
    entries made earlier are not made again. On leaving the block, rank 0 writes the union of every
    process's entries into ``path`` (atomically) and the copies are removed, so every process then
    finds all entries in ``path``. A block that raises merges nothing.

    Example:
        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / "captions.json"
        >>> with json_cache(path) as mine:
        ...     _ = mine.write_text('{"a": "a red square"}')
        >>> path.read_text()
        '{"a": "a red square"}'
    """
    rank, world = rank_world()
    if world == 1 or path is None:
        yield None if path is None else Path(path)
        return
    path = Path(path)
    mine = part_path(path, rank)
    if path.is_file():
        shutil.copyfile(path, mine)
    else:
        mine.unlink(missing_ok=True)
    yield mine
    parts = gather(read_json(mine) if mine.is_file() else {})
    if rank == 0 and any(parts):  # nothing made: nothing written (as in one process)
        merged = read_json(path) if path.is_file() else {}
        for part in parts:
            merged.update(part)
        write_json_atomic(path, merged)
    barrier()
    mine.unlink(missing_ok=True)


def part_path(path: str | Path, rank: int) -> Path:
    """The part file process ``rank`` writes instead of ``path`` under a launcher (``NAME.rankR.SUFFIX``).

    Example:
        >>> part_path("out/responses.jsonl", 1).name
        'responses.rank1.jsonl'
    """
    path = Path(path)
    return path.with_name(f"{path.stem}.rank{rank}{path.suffix}")


def part_paths(path: str | Path) -> list[Path]:
    """The part files of ``path`` that processes left (:func:`part_path`), sorted by name.

    Example:
        >>> part_paths("no/such/responses.jsonl")
        []
    """
    path = Path(path)
    pattern = re.compile(re.escape(path.stem) + r"\.rank\d+" + re.escape(path.suffix))
    if not path.parent.is_dir():
        return []
    return sorted(p for p in path.parent.iterdir() if pattern.fullmatch(p.name))
