"""The dataset registry: ``load(name, root, ...)`` and ``names()``.

A benchmark module registers one :class:`DatasetSpec`. ``load`` validates the name, split and
options, parses every row (so a malformed row anywhere is reported), takes the deterministic
``limit``/``seed`` subset, and only then checks the subset's images (see :mod:`.images`).

Example:
    >>> from vlminterp import data
    >>> "figstep" in data.names()
    True
"""

from __future__ import annotations

import inspect
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from vlminterp.data.images import Renderer, resolve_images
from vlminterp.prompts import Sample

__all__ = ["DatasetSpec", "Parsed", "register", "load", "names", "subset", "first_per_label"]


@dataclass(frozen=True)
class Parsed:
    """What a parser returns: every sample of the split, and the folder their images should be in."""

    samples: list[Sample]
    image_root: Path | None = None
    renderer: Renderer | None = None


@dataclass(frozen=True)
class DatasetSpec:
    """A registered benchmark.

    Attributes:
        name: Registry name (``"mm-safetybench"``).
        parse: ``parse(root, split, **options) -> Parsed``; its keyword-only parameters are the options.
        splits: Valid splits; the first is the default.
        summary: One line shown by :func:`names` users and in errors.
    """

    name: str
    parse: Callable[..., Parsed]
    splits: tuple[str, ...]
    summary: str

    @property
    def options(self) -> list[str]:
        params = inspect.signature(self.parse).parameters.values()
        return [p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY]


_REGISTRY: dict[str, DatasetSpec] = {}


def register(spec: DatasetSpec) -> DatasetSpec:
    """Add ``spec`` to the registry (names are unique)."""
    if spec.name in _REGISTRY:
        raise ValueError(f"Dataset {spec.name!r} is already registered.")
    _REGISTRY[spec.name] = spec
    return spec


def names() -> list[str]:
    """Registered dataset names, sorted."""
    return sorted(_REGISTRY)


def spec(name: str) -> DatasetSpec:
    """The spec of ``name`` (``_`` and ``-`` are interchangeable, case-insensitive)."""
    key = name.strip().lower().replace("_", "-")
    if key not in _REGISTRY:
        raise ValueError(f"Unknown dataset {name!r}. Valid names: {names()}.")
    return _REGISTRY[key]


def subset(samples: list[Sample], limit: int | None, seed: int) -> list[Sample]:
    """A deterministic random subset of ``limit`` samples, kept in file order (all if ``limit`` is None)."""
    if limit is None or limit >= len(samples):
        return samples
    if limit < 1:
        raise ValueError(f"limit must be a positive integer or None, got {limit}.")
    keep = sorted(random.Random(seed).sample(range(len(samples)), limit))
    return [samples[i] for i in keep]


def first_per_label(samples: list[Sample], first: int | Mapping[str | None, int]) -> list[Sample]:
    """The first ``first`` samples of each label, in order (a mapping: per label; labels it lacks are dropped).

    Example:
        >>> rows = [Sample(id=str(i), query="q", label=lab) for i, lab in enumerate(["harmful", None, "harmful"])]
        >>> [s.id for s in first_per_label(rows, 1)], [s.id for s in first_per_label(rows, {None: 5})]
        (['0', '1'], ['1'])
    """
    seen: dict[str | None, int] = {}
    kept = []
    for s in samples:
        seen[s.label] = seen.get(s.label, 0) + 1
        if seen[s.label] <= (first.get(s.label, 0) if isinstance(first, Mapping) else first):
            kept.append(s)
    return kept


def load(
    name: str,
    root: str | Path,
    split: str | None = None,
    limit: int | None = None,
    seed: int = 0,
    *,
    on_missing: str = "raise",
    generated_dir: str | Path | None = None,
    first: int | Mapping[str | None, int] | None = None,
    **options,
) -> list[Sample]:
    """Load a benchmark from its folder as published.

    Args:
        name: A name from :func:`names` (e.g. ``"figstep"``, ``"mm-safetybench"``).
        root: The benchmark's folder, laid out as its publishers distribute it.
        split: One of the dataset's splits (default: its first).
        limit: Keep a random subset of this many samples (deterministic given ``seed``), in file order.
        seed: Seed of the subset.
        on_missing: ``"raise"`` | ``"skip"`` | ``"keep"`` | ``"generate"``: what to do about missing
            image files (see :mod:`vlminterp.data.images`).
        generated_dir: Where ``on_missing="generate"`` writes images (default ``~/.cache/vlminterp``).
        first: Then keep the first this many samples of each label, in file order (a mapping: per
            label, a label it does not name is dropped), before images are checked or generated
            (``on_missing="skip"``: the first ones whose image exists).
        **options: Dataset-specific options (``image_root=``, ``scenarios=``, ...).

    Returns:
        The samples, with the benchmark's own fields in ``Sample.meta``.

    Example:
        >>> from vlminterp import data
        >>> s = data.load("jailbreakllms", "../shared/data/jailbreak_llms", limit=2)  # doctest: +SKIP
    """
    ds = spec(name)
    unknown = sorted(set(options) - set(ds.options))
    if unknown:
        raise ValueError(f"Dataset {ds.name!r} has no option(s) {unknown}. Its options: {ds.options}.")
    if split is None:
        split = ds.splits[0]
    if split not in ds.splits:
        raise ValueError(f"Dataset {ds.name!r} has no split {split!r}. Its splits: {list(ds.splits)}.")
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"Dataset {ds.name!r}: root folder {str(root)!r} does not exist.")
    parsed = ds.parse(root, split, **options)
    chosen = subset(parsed.samples, limit, seed)
    if first is not None and on_missing != "skip":
        chosen = first_per_label(chosen, first)  # before any image is generated
    resolved = resolve_images(chosen, ds.name, parsed.image_root, on_missing, parsed.renderer, generated_dir)
    # skip: the first samples whose image exists
    return first_per_label(resolved, first) if first is not None and on_missing == "skip" else resolved
