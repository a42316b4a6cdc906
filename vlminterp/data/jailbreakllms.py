"""JailbreakLLMs forbidden question set (``data/forbidden_question/forbidden_question_set.csv``).

Text-only by origin: 390 questions, 13 content policies × 30 (policy ids 0, 2–13; there is no 1).
The ``image`` option pairs every question with a white image (``"blank"``), a seeded noise image
(``"noise"``, one image from ``seed``) or a given image file, for the IMAGE condition.

Example:
    >>> from vlminterp import data
    >>> qs = data.load("jailbreakllms", "jailbreak_llms", image="blank")  # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from vlminterp.data.errors import DatasetFormatError
from vlminterp.data.files import find_file, read_csv
from vlminterp.data.registry import DatasetSpec, Parsed, register
from vlminterp.prompts import Sample

_COLUMNS = ("content_policy_id", "content_policy_name", "q_id", "question")


def _pair_image(image: str | Path | None, size: tuple[int, int], seed: int) -> Image.Image | Path | None:
    if image is None:
        return None
    if image == "blank":
        return Image.new("RGB", size, "white")
    if image == "noise":
        rng = np.random.default_rng(seed)
        return Image.fromarray(rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8), "RGB")
    if not Path(image).is_file():
        raise FileNotFoundError(
            f"jailbreakllms: image={str(image)!r} is neither 'blank', 'noise' nor an existing image file."
        )
    return Path(image)


def _int(row: dict[str, str], name: str, path: Path, where: str) -> int:
    try:
        return int(row[name])
    except ValueError:
        raise DatasetFormatError(path, where, name, f"is {row[name]!r}, expected an integer") from None


def parse(
    root: Path,
    split: str,
    *,
    image: str | Path | None = None,
    image_size: tuple[int, int] = (336, 336),
    image_seed: int = 0,
) -> Parsed:
    """Parse the forbidden question set; ``image`` = None | ``"blank"`` | ``"noise"`` | a path."""
    path = find_file(
        root,
        ["data/forbidden_question/forbidden_question_set.csv", "forbidden_question_set.csv"],
        "JailbreakLLMs forbidden_question_set.csv",
    )
    paired = _pair_image(image, image_size, image_seed)
    samples = []
    for n, row in read_csv(path, _COLUMNS):
        where = f"line {n}"
        policy, q_id = _int(row, "content_policy_id", path, where), _int(row, "q_id", path, where)
        if not row["question"].strip():
            raise DatasetFormatError(path, where, "question", "is empty")
        samples.append(
            Sample(
                id=f"{policy}/{q_id}",
                query=row["question"],
                image=paired,
                label="harmful",
                meta={
                    "content_policy_id": policy,
                    "content_policy_name": row["content_policy_name"],
                    "q_id": q_id,
                },
            )
        )
    return Parsed(samples)


register(DatasetSpec("jailbreakllms", parse, ("test",), "JailbreakLLMs forbidden questions (text-only)"))
