"""MME from its official eval tool: ``eval_tool/Your_Results/{subtask}.txt`` lines ``image\\tquestion\\tYes|No``.

Each subtask file lists two questions per image (normally Yes then No). A 4th column, when present
(a filled-in results file such as ``LaVIN/existence.txt``), is kept as ``meta["response"]``. The split
is a subtask name, or ``"all"`` for every subtask file found (a warning names the subtasks of the 14
that have no file; :func:`vlminterp.eval.metrics.mme_scores` records them). Images are looked up in
``MME_Benchmark_release_version/{subtask}/`` and its ``images/`` subfolder.

Example:
    >>> from vlminterp import data
    >>> s = data.load("mme", "MME", split="existence")  # doctest: +SKIP
"""

from __future__ import annotations

import warnings
from pathlib import Path

from vlminterp.data.errors import DatasetFormatError
from vlminterp.data.files import find_dir, read_tsv
from vlminterp.data.registry import DatasetSpec, Parsed, register
from vlminterp.prompts import Sample

PERCEPTION = (
    "existence",
    "count",
    "position",
    "color",
    "posters",
    "celebrity",
    "scene",
    "landmark",
    "artwork",
    "OCR",
)
COGNITION = ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")


def parse(
    root: Path, split: str, *, results_dir: str | Path | None = None, image_root: str | Path | None = None
) -> Parsed:
    """Parse subtask file(s) from ``results_dir`` (default ``root/eval_tool/Your_Results``)."""
    folder = find_dir(root, results_dir, ["eval_tool/Your_Results", "Your_Results"])
    if not folder.is_dir():
        raise FileNotFoundError(f"MME: {folder} does not exist; pass the eval tool's parent folder as root.")
    found = sorted(p.stem for p in folder.glob("*.txt"))
    if split != "all" and split not in found:
        raise ValueError(f"MME: no subtask file {split}.txt in {folder}. Subtasks there: {found}.")
    absent = [t for t in (*PERCEPTION, *COGNITION) if t not in found]
    if split == "all" and absent:
        warnings.warn(
            f"MME: {folder} has {len(found)} of the 14 subtask files; missing: {', '.join(absent)}.",
            stacklevel=2,
        )
    images = find_dir(root, image_root, ["MME_Benchmark_release_version"])
    samples = []
    for subtask in found if split == "all" else [split]:
        path = folder / f"{subtask}.txt"
        for n, parts in read_tsv(path, (3, 4)):
            image, question, gt = parts[:3]
            if gt not in ("Yes", "No"):
                raise DatasetFormatError(path, f"line {n}", "gt_answer", f"is {gt!r}, expected 'Yes' or 'No'")
            candidates = [images / subtask / image, images / subtask / "images" / image]
            path_image = next((c for c in candidates if c.is_file()), candidates[0])
            meta = {
                "subtask": subtask,
                "category": "cognition" if subtask in COGNITION else "perception",
                "image_name": image,
                "gt_answer": gt,
                "line": n,
            }
            if len(parts) == 4:
                meta["response"] = parts[3]
            samples.append(Sample(id=f"{subtask}/{n}", query=question, image=path_image, meta=meta))
    return Parsed(samples, images)


register(DatasetSpec("mme", parse, ("all", *PERCEPTION, *COGNITION), "MME yes/no perception and cognition"))
