"""MM-Vet: the original ``mm-vet.json`` (``{"v1_0": {imagename, question, answer, capability}, ...}``),
or LLaVA's question file ``llava-mm-vet.jsonl`` (``{image, text, question_id}``, no answers).

Example:
    >>> from vlminterp import data
    >>> s = data.load("mm-vet", "mm-vet")  # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path

from vlminterp.data.errors import DatasetFormatError
from vlminterp.data.files import field, find_dir, find_file, read_json, read_jsonl
from vlminterp.data.registry import DatasetSpec, Parsed, register
from vlminterp.prompts import Sample

LLAVA_FILE = "playground/data/eval/mm-vet/llava-mm-vet.jsonl"


def _original(path: Path, images: Path) -> list[Sample]:
    samples = []
    for key, row in read_json(path, dict).items():
        where = f"entry {key!r}"
        if not isinstance(row, dict):
            raise DatasetFormatError(path, where, None, "is not an object")
        image = field(row, "imagename", str, path, where)
        capability = field(row, "capability", list, path, where)
        samples.append(
            Sample(
                id=key,
                query=field(row, "question", str, path, where),
                image=images / image,
                meta={
                    "image_file": image,
                    "answer": field(row, "answer", str, path, where),
                    "capability": capability,
                },
            )
        )
    return samples


def _llava(path: Path, images: Path) -> list[Sample]:
    samples = []
    for n, row in read_jsonl(path):
        where = f"line {n}"
        image = field(row, "image", str, path, where)
        qid = field(row, "question_id", int, path, where)
        samples.append(
            Sample(
                id=f"v1_{qid}",
                query=field(row, "text", str, path, where),
                image=images / image,
                meta={"image_file": image, "question_id": qid, "answer": None, "capability": None},
            )
        )
    return samples


def parse(root: Path, split: str, *, image_root: str | Path | None = None) -> Parsed:
    """Parse ``mm-vet.json`` if present, else LLaVA's jsonl; images default to ``root/images``."""
    path = find_file(root, ["mm-vet.json", LLAVA_FILE, "llava-mm-vet.jsonl"], "MM-Vet mm-vet.json")
    images = find_dir(root, image_root, ["images", "playground/data/eval/mm-vet/images"])
    samples = _original(path, images) if path.suffix == ".json" else _llava(path, images)
    return Parsed(samples, images)


register(DatasetSpec("mm-vet", parse, ("test",), "MM-Vet integrated capabilities (utility)"))
