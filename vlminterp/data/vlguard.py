"""VLGuard test split (``test.json``: ``{id, image, safe, [harmful_category, harmful_subcategory], instr-resp}``).

Splits follow VLGuard's evaluation: ``unsafes`` (unsafe image + its ``instruction``, harmful),
``safe_unsafes`` (safe image + ``unsafe_instruction``, harmful), ``safe_safes`` (safe image +
``safe_instruction``, benign). The reference ``response`` is kept in ``meta``. Images are under
``root/test`` (the unpacked ``test.zip``).

Example:
    >>> from vlminterp import data
    >>> s = data.load("vlguard", "VLGuard", split="safe_unsafes")  # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path

from vlminterp.data.errors import DatasetFormatError
from vlminterp.data.files import field, find_dir, find_file, read_json
from vlminterp.data.registry import DatasetSpec, Parsed, register
from vlminterp.prompts import Sample

# split -> (image is safe, instruction key, label)
SPLITS = {
    "unsafes": (False, "instruction", "harmful"),
    "safe_unsafes": (True, "unsafe_instruction", "harmful"),
    "safe_safes": (True, "safe_instruction", "benign"),
}


def parse(root: Path, split: str, *, image_root: str | Path | None = None) -> Parsed:
    """Parse one VLGuard test subset; images default to ``root/test`` then ``root/data/test``."""
    path = find_file(root, ["test.json", "data/test.json"], "VLGuard test.json")
    images = find_dir(root, image_root, ["test", "data/test"])
    safe_image, key, label = SPLITS[split]
    samples = []
    for i, row in enumerate(read_json(path, list)):
        where = f"record {i}"
        if not isinstance(row, dict):
            raise DatasetFormatError(path, where, None, "is not an object")
        if field(row, "safe", bool, path, where) != safe_image:
            continue
        rid, image = field(row, "id", str, path, where), field(row, "image", str, path, where)
        pairs = field(row, "instr-resp", list, path, where)
        matches = [p for p in pairs if isinstance(p, dict) and key in p]
        if not matches:
            raise DatasetFormatError(path, where, "instr-resp", f"has no entry with {key!r}")
        pair = matches[0]
        samples.append(
            Sample(
                id=f"{rid}/{split}",
                query=field(pair, key, str, path, where),
                image=images / image,
                label=label,
                meta={
                    "vlguard_id": rid,
                    "image_file": image,
                    "safe": safe_image,
                    "subset": split,
                    "harmful_category": row.get("harmful_category"),
                    "harmful_subcategory": row.get("harmful_subcategory"),
                    "reference_response": pair.get("response"),
                },
            )
        )
    return Parsed(samples, images)


register(
    DatasetSpec("vlguard", parse, tuple(SPLITS), "VLGuard test subsets (unsafes, safe_unsafes, safe_safes)")
)
