"""FigStep / SafeBench: ``data/question/safebench.csv`` and its typographic images.

Every sample's query is FigStep's fixed prompt (:data:`~vlminterp.data.typography.FIGSTEP_PROMPT`)
and its image ``data/images/SafeBench/query_ForbidQI_{category_id}_{task_id}_6.png`` shows the
``instruction`` as a numbered empty list. ``query="question"`` gives the text-only baseline (the
original ``question`` as the query). The repository ships 500 PNGs; ``on_missing="generate"`` draws
missing ones with :func:`~vlminterp.data.typography.figstep_image`.

Splits: ``safebench`` (500 rows) and ``tiny`` (``SafeBench-Tiny.csv``, 50 rows).

Example:
    >>> from vlminterp import data
    >>> s = data.load("figstep", "FigStep", on_missing="generate")  # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path

from vlminterp.data.errors import DatasetFormatError
from vlminterp.data.files import find_dir, read_csv
from vlminterp.data.registry import DatasetSpec, Parsed, register
from vlminterp.data.typography import FIGSTEP_PROMPT, figstep_image
from vlminterp.prompts import Sample

_FILES = {"safebench": "safebench.csv", "tiny": "SafeBench-Tiny.csv"}
_COLUMNS = ("dataset", "category_id", "task_id", "category_name", "question", "instruction")


def _renderer(font: str | Path | None):
    def render(sample: Sample):
        text = sample.meta["instruction"]
        return f"figstep|{font}|{text}", lambda: figstep_image(text, font=font)

    return render


def parse(
    root: Path,
    split: str,
    *,
    query: str = "figstep",
    image_root: str | Path | None = None,
    font: str | Path | None = None,
) -> Parsed:
    """Parse a SafeBench csv; ``query`` = ``"figstep"`` (fixed prompt + image) or ``"question"``."""
    if query not in ("figstep", "question"):
        raise ValueError(f"figstep: query={query!r} must be 'figstep' or 'question'.")
    path = root / "data" / "question" / _FILES[split]
    if not path.is_file():
        raise FileNotFoundError(
            f"FigStep: {path} does not exist; pass the FigStep repository folder as root."
        )
    images = find_dir(root, image_root, ["data/images/SafeBench"])
    samples = []
    for n, row in read_csv(path, _COLUMNS):
        for name in ("category_id", "task_id"):
            if not row[name].isdigit():
                raise DatasetFormatError(path, f"line {n}", name, f"is {row[name]!r}, expected an integer")
        meta = {**row, "category_id": int(row["category_id"]), "task_id": int(row["task_id"])}
        image_name = f"query_{row['dataset']}_{meta['category_id']}_{meta['task_id']}_6.png"
        samples.append(
            Sample(
                id=f"{meta['category_id']}/{meta['task_id']}",
                query=FIGSTEP_PROMPT if query == "figstep" else row["question"],
                image=images / image_name if query == "figstep" else None,
                label="harmful",
                meta=meta,
            )
        )
    return Parsed(samples, images, _renderer(font))


register(DatasetSpec("figstep", parse, tuple(_FILES), "FigStep SafeBench typographic jailbreak (ShiftDC)"))
