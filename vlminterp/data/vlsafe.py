"""VLSafe (DRESS): ``harmlessness_examine.jsonl`` rows ``{image_id, caption, query}``, COCO train2017 images.

The COCO caption is kept in ``Sample.caption`` for the CAPTION condition. Every query is harmful.

Example:
    >>> from vlminterp import data
    >>> samples = data.load("vlsafe", "LVLM_NLF/VLSafe", image_root="coco/train2017")  # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path

from vlminterp.data.files import field, find_dir, find_file, read_jsonl
from vlminterp.data.registry import DatasetSpec, Parsed, register
from vlminterp.prompts import Sample


def parse(root: Path, split: str, *, image_root: str | Path | None = None) -> Parsed:
    """Parse VLSafe; images default to ``root/train2017`` then ``root/images``."""
    path = find_file(
        root, ["harmlessness_examine.jsonl", "VLSafe/harmlessness_examine.jsonl"], "VLSafe jsonl"
    )
    images = find_dir(root, image_root, ["train2017", "images"])
    samples = []
    for n, row in read_jsonl(path):
        where = f"line {n}"
        image_id = field(row, "image_id", str, path, where)
        caption = field(row, "caption", str, path, where)
        query = field(row, "query", str, path, where)
        samples.append(
            Sample(
                id=f"vlsafe/{n}",
                query=query,
                image=images / image_id,
                caption=caption,
                label="harmful",
                meta={"image_id": image_id, "caption": caption, "line": n},
            )
        )
    return Parsed(samples, images)


register(DatasetSpec("vlsafe", parse, ("test",), "VLSafe harmful image-query pairs on COCO (CMRM)"))
