"""Benchmark loaders behind one registry, and typographic image generators.

``load(name, root, split, limit, seed, **options) -> list[Sample]`` reads a benchmark folder as its
publishers distribute it. Labels are ``"harmful"``/``"benign"`` where the benchmark defines them,
and each benchmark's own fields are in ``Sample.meta``. Images stay paths (``PromptBatch`` opens them).

Example:
    >>> from vlminterp import data
    >>> data.names()[:3]
    ['figstep', 'harmful-harmless', 'jailbreakllms']
"""

from vlminterp.data import (  # noqa: F401  (registers the loaders)
    figstep,
    harmful_harmless,
    jailbreakllms,
    llava_bench_coco,
    mm_safetybench,
    mm_vet,
    mme,
    scienceqa,
    vlguard,
    vlsafe,
)
from vlminterp.data.errors import DatasetFormatError, MissingImageError
from vlminterp.data.images import ON_MISSING
from vlminterp.data.registry import load, names, subset
from vlminterp.data.typography import FIGSTEP_PROMPT, figstep_image, mmsb_typo_image

__all__ = [
    "load",
    "names",
    "subset",
    "DatasetFormatError",
    "MissingImageError",
    "ON_MISSING",
    "FIGSTEP_PROMPT",
    "figstep_image",
    "mmsb_typo_image",
]
