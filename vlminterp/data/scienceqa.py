"""ScienceQA in LLaVA's CQM-A format (``llava_test_CQM-A.json``), scored by the answer letter.

Records: ``{id, image?, conversations: [{from: human, value}, {from: gpt, value: letter}]}``. Text-only
records have no ``image`` key (``Sample.image`` None, ``meta["has_image"]`` False). The leading
``<image>\\n`` is removed from the query; with ``single_pred_prompt`` (default, as LLaVA's eval) the
query ends with ``"\\nAnswer with the option's letter from the given choices directly."``.
``subset="image"`` keeps only the records with an image (LLaVA's IMG column).

Example:
    >>> from vlminterp import data
    >>> s = data.load("scienceqa", "LLaVA", subset="image")  # doctest: +SKIP
"""

from __future__ import annotations

import re
from pathlib import Path

from vlminterp.data.errors import DatasetFormatError
from vlminterp.data.files import field, find_dir, find_file, read_json
from vlminterp.data.registry import DatasetSpec, Parsed, register
from vlminterp.prompts import Sample

SINGLE_PRED_PROMPT = "\nAnswer with the option's letter from the given choices directly."
_OPTION = re.compile(r"^([A-Z])\. ", re.MULTILINE)


def parse(
    root: Path,
    split: str,
    *,
    subset: str = "all",
    single_pred_prompt: bool = True,
    image_root: str | Path | None = None,
) -> Parsed:
    """Parse the CQM-A file; ``subset`` = ``"all"`` | ``"image"`` | ``"text"``."""
    if subset not in ("all", "image", "text"):
        raise ValueError(f"scienceqa: subset={subset!r} must be 'all', 'image' or 'text'.")
    path = find_file(
        root,
        ["playground/data/eval/scienceqa/llava_test_CQM-A.json", "llava_test_CQM-A.json"],
        "ScienceQA llava_test_CQM-A.json",
    )
    images = find_dir(root, image_root, ["playground/data/eval/scienceqa/images/test", "images/test"])
    samples = []
    for i, rec in enumerate(read_json(path, list)):
        where = f"record {i}"
        if not isinstance(rec, dict):
            raise DatasetFormatError(path, where, None, "is not an object")
        rid = field(rec, "id", str, path, where)
        turns = field(rec, "conversations", list, path, where)
        if len(turns) < 2 or not all(isinstance(t, dict) for t in turns[:2]):
            raise DatasetFormatError(path, where, "conversations", "needs a human turn and a gpt turn")
        question = field(turns[0], "value", str, path, where)
        answer = field(turns[1], "value", str, path, where).strip()
        image = rec.get("image")
        if image is not None and not isinstance(image, str):
            raise DatasetFormatError(path, where, "image", f"is {image!r}, expected a relative path")
        if (subset == "image" and image is None) or (subset == "text" and image is not None):
            continue
        options = _OPTION.findall(question)
        if answer not in options:
            raise DatasetFormatError(
                path, where, "conversations", f"answer {answer!r} is not an option {options}"
            )
        query = question.removeprefix("<image>\n") + (SINGLE_PRED_PROMPT if single_pred_prompt else "")
        samples.append(
            Sample(
                id=rid,
                query=query,
                image=images / image if image is not None else None,
                meta={
                    "answer": answer,
                    "options": options,
                    "has_image": image is not None,
                    "image_file": image,
                },
            )
        )
    return Parsed(samples, images)


register(DatasetSpec("scienceqa", parse, ("test",), "ScienceQA test, LLaVA CQM-A format (utility)"))
