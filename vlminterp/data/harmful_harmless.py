"""Harmful / harmless instruction splits of Arditi et al.'s refusal_direction (text-only).

``dataset/splits/{harmful,harmless}_{train,val,test}.json``: lists of ``{instruction, category}``.
The split picks train / val / test (both kinds, harmful first; ``kind=`` keeps one) or
``jailbreakbench`` (``dataset/processed/jailbreakbench.json``, 100 harmful).

Example:
    >>> from vlminterp import data
    >>> s = data.load("harmful-harmless", "refusal_direction", split="train", limit=256)  # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path

from vlminterp.data.errors import DatasetFormatError
from vlminterp.data.files import field, read_json
from vlminterp.data.registry import DatasetSpec, Parsed, register
from vlminterp.prompts import Sample

_LABEL = {"harmful": "harmful", "harmless": "benign"}


def _read(path: Path, name: str, label: str) -> list[Sample]:
    if not path.is_file():
        raise FileNotFoundError(
            f"harmful-harmless: {path} does not exist; pass refusal_direction's repo as root."
        )
    samples = []
    for i, row in enumerate(read_json(path, list)):
        where = f"record {i}"
        if not isinstance(row, dict):
            raise DatasetFormatError(path, where, None, "is not an object")
        instruction = field(row, "instruction", str, path, where)
        category = row.get("category")
        if category is not None and not isinstance(category, str):
            raise DatasetFormatError(path, where, "category", f"is {category!r}, expected a string or null")
        samples.append(
            Sample(
                id=f"{name}/{i}", query=instruction, label=label, meta={"category": category, "source": name}
            )
        )
    return samples


def parse(root: Path, split: str, *, kind: str = "both") -> Parsed:
    """Parse one split; ``kind`` = ``"both"`` | ``"harmful"`` | ``"harmless"``."""
    if kind not in ("both", "harmful", "harmless"):
        raise ValueError(f"harmful-harmless: kind={kind!r} must be 'both', 'harmful' or 'harmless'.")
    if split == "jailbreakbench":
        if kind == "harmless":
            raise ValueError("harmful-harmless: split 'jailbreakbench' has only harmful instructions.")
        return Parsed(_read(root / "dataset/processed/jailbreakbench.json", "jailbreakbench", "harmful"))
    kinds = ("harmful", "harmless") if kind == "both" else (kind,)
    samples = []
    for k in kinds:
        samples += _read(root / f"dataset/splits/{k}_{split}.json", f"{k}_{split}", _LABEL[k])
    return Parsed(samples)


register(
    DatasetSpec(
        "harmful-harmless",
        parse,
        ("train", "val", "test", "jailbreakbench"),
        "refusal_direction harmful/harmless instructions (text-only)",
    )
)
