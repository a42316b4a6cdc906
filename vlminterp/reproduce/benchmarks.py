"""The benchmarks a paper protocol reads: where each lives under ``--data-root``, and what to download.

A :class:`Benchmark` names a registered dataset (:mod:`vlminterp.data`), its split and options, the
folder it is expected in under the data root (the layout of the original releases, as in
``shared/data``), how it is scored (``kind``) and one line saying what to download and where.
:func:`locate` turns a list of them into the specs to run and the lines of the ones skipped: a
benchmark whose folder is missing is never an error, so a user with only some benchmarks still gets
every table those allow. Missing image files are generated where the loaders can draw them
(typography) and given a solid grey placeholder otherwise (``on_missing="generate"``).

Example:
    >>> b = Benchmark("figstep", "figstep", "figstep", "safety", "FigStep's data/ folder")
    >>> present, skipped = locate([b], "/nonexistent")
    >>> present, skipped[0].split(":")[0]
    ([], 'skipped figstep')
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlminterp.specs import DatasetSpec

__all__ = ["Benchmark", "KINDS", "locate", "parse_roots"]

#: How a benchmark is scored: judged safety (unsafe rate / ASR), ScienceQA letters, LLaVA-Bench and
#: MM-Vet grades (an LLM grader), MME yes/no pairs.
KINDS = ("safety", "scienceqa", "llava-bench", "mme", "mm-vet")


@dataclass(frozen=True)
class Benchmark:
    """One benchmark of a protocol.

    Attributes:
        key: Its name in tables (``"mm-safetybench"``).
        dataset: The :mod:`vlminterp.data` name it is loaded with.
        folder: Its folder under the data root (``--root KEY=PATH`` overrides).
        kind: One of :data:`KINDS`.
        download: What to download and where, printed when the folder is missing.
        split: The dataset split (None: its first).
        options: Loader options (``{"subset": "image"}``).
    """

    key: str
    dataset: str
    folder: str
    kind: str
    download: str
    split: str | None = None
    options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"Benchmark {self.key!r}: kind {self.kind!r} is not one of {KINDS}.")

    @property
    def name(self) -> str:
        """``dataset[:split]``, the ``dataset`` column of its response rows."""
        return f"{self.dataset}:{self.split}" if self.split else self.dataset


def parse_roots(items: Sequence[str]) -> dict[str, str]:
    """``KEY=PATH`` items (``--root``) as a dict; a malformed item raises naming it.

    Example:
        >>> parse_roots(["vlsafe=/data/VLSafe"])
        {'vlsafe': '/data/VLSafe'}
    """
    roots = {}
    for item in items:
        key, sep, path = item.partition("=")
        if not sep or not key or not path:
            raise ValueError(f"--root {item!r}: use BENCHMARK=PATH, e.g. vlsafe=/data/VLSafe.")
        roots[key.strip()] = path
    return roots


def locate(
    benchmarks: Sequence[Benchmark],
    data_root: str | Path,
    roots: Mapping[str, str] | None = None,
    limit: int | None = None,
) -> tuple[list[tuple[Benchmark, DatasetSpec]], list[str]]:
    """The benchmarks whose folders exist, as specs, and one line for each one skipped.

    Args:
        benchmarks: The protocol's benchmarks.
        data_root: The folder holding one subfolder per benchmark (:attr:`Benchmark.folder`).
        roots: ``key -> folder`` overrides (``--root``); a key that names no benchmark raises.
        limit: First samples per label of each benchmark.

    Returns:
        ``[(benchmark, spec)]`` to run, and the skip lines (``"skipped KEY: ... download ..."``).
    """
    roots = dict(roots or {})
    unknown = sorted(set(roots) - {b.key for b in benchmarks})
    if unknown:
        raise ValueError(
            f"--root names {unknown}, which this protocol does not read; its benchmarks are "
            f"{sorted({b.key for b in benchmarks})}."
        )
    present, skipped = [], []
    for b in benchmarks:
        folder = Path(roots[b.key]) if b.key in roots else Path(data_root) / b.folder
        if not folder.is_dir():
            skipped.append(f"skipped {b.key}: no folder {folder}. Download {b.download} into it.")
            continue
        text = f"{b.dataset}:{b.split}" if b.split else b.dataset
        spec = DatasetSpec.parse(text, folder, limit, "generate", b.options, option=f"benchmark {b.key}")
        present.append((b, spec))
    return present, skipped
