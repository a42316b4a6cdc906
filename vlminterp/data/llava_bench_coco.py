"""LLaVA-Bench (COCO): ``qa90_questions.jsonl`` with GPT-4 reference answers and reviewer context.

90 questions on 30 COCO val2014 images, categories ``conv`` / ``detail`` / ``complex``. ``meta`` holds
the category, the GPT-4 reference answer (``qa90_gpt4_answer.jsonl``) and, when the LLaVA table is
present, the reviewer's text context (captions and boxes, ``caps_boxes_coco2014_val_80.jsonl``);
``Sample.caption`` is the image's first COCO caption (for the CAPTION condition).

Example:
    >>> from vlminterp import data
    >>> s = data.load("llava-bench-coco", "LLaVA", image_root="coco/val2014")  # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path

from vlminterp.data.errors import DatasetFormatError
from vlminterp.data.files import field, find_dir, read_jsonl
from vlminterp.data.registry import DatasetSpec, Parsed, register
from vlminterp.prompts import Sample

QA_DIR = "playground/data/coco2014_val_qa_eval"
CONTEXT = "llava/eval/table/caps_boxes_coco2014_val_80.jsonl"


def _answers(path: Path) -> dict[int, str]:
    out = {}
    for n, row in read_jsonl(path):
        qid = field(row, "question_id", int, path, f"line {n}")
        if qid in out:
            raise DatasetFormatError(path, f"line {n}", "question_id", f"{qid} appears twice")
        out[qid] = field(row, "text", str, path, f"line {n}")
    return out


def parse(root: Path, split: str, *, image_root: str | Path | None = None) -> Parsed:
    """Parse qa90; images default to ``root/{QA_DIR}/images`` then ``root/val2014``."""
    questions = root / QA_DIR / "qa90_questions.jsonl"
    if not questions.is_file():
        raise FileNotFoundError(
            f"LLaVA-Bench-COCO: {questions} does not exist; pass LLaVA's repository as root."
        )
    answer_file = root / QA_DIR / "qa90_gpt4_answer.jsonl"
    answers = _answers(answer_file) if answer_file.is_file() else {}
    context = {}
    if (root / CONTEXT).is_file():
        for n, row in read_jsonl(root / CONTEXT):
            context[field(row, "image", str, root / CONTEXT, f"line {n}")] = row
    images = find_dir(root, image_root, [f"{QA_DIR}/images", "val2014"])
    samples = []
    for n, row in read_jsonl(questions):
        where = f"line {n}"
        qid = field(row, "question_id", int, questions, where)
        image = field(row, "image", str, questions, where)
        ctx = context.get(image)
        samples.append(
            Sample(
                id=str(qid),
                query=field(row, "text", str, questions, where),
                image=images / image,
                caption=ctx["captions"][0] if ctx and ctx.get("captions") else None,
                meta={
                    "question_id": qid,
                    "image_file": image,
                    "category": field(row, "category", str, questions, where),
                    "reference_answer": answers.get(qid),
                    "context": ctx,
                },
            )
        )
    return Parsed(samples, images)


register(DatasetSpec("llava-bench-coco", parse, ("test",), "LLaVA-Bench (COCO) qa90 (utility)"))
