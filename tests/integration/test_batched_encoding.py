"""One processor call per batch builds exactly the batch that one call per row builds, in every family.

For every family with a tiny builder, the shipped organism and a checkpoint on the fallback adapter,
a mixed batch (images of different sizes and aspect ratios, blank and noise images, a text-only and a
caption row, queries of different lengths) is built both ways (``PromptBatch.from_rows(...,
batched=False)`` calls the processor once per row): token ids, attention mask, position ids, every
role mask, every per-row image tensor (dtype, shape, values) and every token kwarg must be equal.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from vlminterp import Condition, HookedVLM, PromptBatch, Sample
from vlminterp.prompts import PromptRow, encoding
from vlminterp.prompts.splitting import _split_crops, _split_images, image_layout, processor_rows
from vlminterp.testing import tiny_families, tiny_remote_vlm_dir

MODELS = [*tiny_families(), "organism", "fallback"]


def _load(name: str) -> HookedVLM:
    if name == "organism":
        return HookedVLM.from_organism()
    if name == "fallback":
        return HookedVLM.from_pretrained(tiny_remote_vlm_dir(), trust_remote_code=True)
    return HookedVLM.tiny(name)


@pytest.fixture(scope="module", params=MODELS)
def model(request):
    return _load(request.param)


def _noise(width: int, height: int, seed: int) -> Image.Image:
    g = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (height, width, 3), generator=g, dtype=torch.uint8)
    return Image.fromarray(pixels.numpy(), "RGB")


def mixed_rows(model: HookedVLM) -> list[PromptRow]:
    """Image rows of three sizes, a text-only row between them, blank, noise and caption rows."""
    samples = [
        Sample(id="wide", query="what is in this picture", image=_noise(70, 30, 0), caption="a wide thing"),
        Sample(id="tall", query="hi", image=_noise(40, 56, 1)),
        Sample(
            id="small", query="tell me how to build a kite from the picture please", image=_noise(20, 24, 2)
        ),
    ]
    plan = [
        (0, Condition.IMAGE),
        (1, Condition.TEXT_ONLY),
        (1, Condition.IMAGE),
        (2, Condition.IMAGE),
        (0, Condition.BLANK),
        (2, Condition.NOISE),
        (0, Condition.CAPTION),
        (2, Condition.TEXT_ONLY),
    ]
    return [PromptRow.from_sample(model, samples[i], cond) for i, cond in plan]


def assert_same_batch(batched: PromptBatch, per_row: PromptBatch) -> None:
    for name in ("input_ids", "attention_mask", "position_ids"):
        a, b = getattr(batched, name), getattr(per_row, name)
        assert a.dtype == b.dtype and torch.equal(a, b), name
    assert batched.masks.keys() == per_row.masks.keys()
    for role, mask in per_row.masks.items():
        assert torch.equal(batched.masks[role], mask), role
    assert batched.token_inputs.keys() == per_row.token_inputs.keys()
    for name, value in per_row.token_inputs.items():
        assert batched.token_inputs[name].dtype == value.dtype and torch.equal(
            batched.token_inputs[name], value
        ), name
    assert len(batched.row_images) == len(per_row.row_images)
    for i, (a, b) in enumerate(zip(batched.row_images, per_row.row_images, strict=True)):
        assert (a is None) == (b is None), i
        if b is None:
            continue
        assert a.keys() == b.keys(), i
        for name, value in b.items():
            got = a[name]
            assert got.dtype == value.dtype and got.shape == value.shape and torch.equal(got, value), (
                i,
                name,
            )
    a_kwargs, b_kwargs = batched.model_kwargs(), per_row.model_kwargs()
    assert a_kwargs.keys() == b_kwargs.keys()
    for name, value in b_kwargs.items():
        assert torch.equal(a_kwargs[name], value), name


def test_batched_encoding_equals_one_processor_call_per_row(model):
    rows = mixed_rows(model)
    batched = PromptBatch.from_rows(model, rows)
    per_row = PromptBatch.from_rows(model, rows, batched=False)
    assert_same_batch(batched, per_row)
    assert sum(r is not None for r in batched.row_images) == 5


def test_every_family_splits_its_batched_processor_output(model, monkeypatch):
    """The batched split is really used (not the per-row fallback) for every shipped layout."""
    assert image_layout(model.family_rules.image_kwargs) is not None

    def per_row_call(*args, **kwargs):
        raise AssertionError("encode_rows fell back to one processor call per row")

    monkeypatch.setattr(encoding, "encode_row", per_row_call)
    batch = PromptBatch.from_rows(model, mixed_rows(model))
    assert len(batch) == 8


def test_text_only_batches_and_single_rows(model):
    rows = [r for r in mixed_rows(model) if r.image is None]
    assert_same_batch(PromptBatch.from_rows(model, rows), PromptBatch.from_rows(model, rows, batched=False))
    one = mixed_rows(model)[:1]
    assert_same_batch(PromptBatch.from_rows(model, one), PromptBatch.from_rows(model, one, batched=False))


def test_unknown_image_layout_is_encoded_row_by_row():
    assert image_layout(("pixel_values", "image_sizes", "num_crops")) is None
    assert image_layout(("pixel_values", "image_grid_thw", "image_sizes")) is None
    assert image_layout(("pixel_values",)) == "images"


def test_crops_are_cut_to_each_prompts_own_crop_count_height_and_width():
    """Idefics3-style padding (more crops, larger crops, zeros) is undone; a non-zero cut refuses the split."""
    own = [torch.rand(1, 3, 3, 20, 24) + 0.1, torch.rand(1, 1, 3, 32, 30) + 0.1]
    pixels = torch.zeros(3, 3, 3, 32, 32)  # prompt 1 has no image: an all-zero row
    mask = torch.zeros(3, 3, 32, 32, dtype=torch.long)
    for row, crops in zip((0, 2), own, strict=True):
        n, h, w = crops.shape[1], crops.shape[3], crops.shape[4]
        pixels[row, :n, :, :h, :w] = crops[0]
        mask[row, :n, :h, :w] = 1
    parts = _split_crops(pixels, mask, [0, 2], 3)
    for part, crops in zip(parts, own, strict=True):
        assert torch.equal(part["pixel_values"], crops)
        assert torch.equal(
            part["pixel_attention_mask"], torch.ones(crops.shape[:2] + crops.shape[3:], dtype=torch.long)
        )
    pixels[0, 0, 0, 25, 0] = 1.0  # a real value where the mask says padding: no certain split
    assert _split_crops(pixels, mask, [0, 2], 3) is None


def test_extra_image_entries_refuse_the_split():
    """More pixel entries than images (Gemma 3 pan-and-scan crops): the caller encodes row by row."""
    out = {"pixel_values": [np.zeros((3, 4, 4), np.float32)] * 3}
    assert _split_images(out, "images", [True, False, True], ("pixel_values",)) is None
    out = {"pixel_values": np.zeros((10, 8), np.float32), "image_grid_thw": np.array([[1, 2, 2], [1, 2, 2]])}
    assert (
        _split_images(out, "patches", [True, True], ("pixel_values", "image_grid_thw")) is None
    )  # 8 patch rows described, 10 given


def test_a_do_pad_of_unknown_meaning_keeps_one_call_per_row():
    """A LLaVA image processor with do_pad (pad-to-square, or batch padding) is not split: same batch."""
    model = HookedVLM.tiny("llava")
    model.processor.image_processor.do_pad = True
    rows = mixed_rows(model)
    prompts = [encoding._prompt(model, r, {}) for r in rows]
    assert (
        processor_rows(model, [p.text for p in prompts], [r.image for r in rows], prompts[0].special) is None
    )
    assert_same_batch(PromptBatch.from_rows(model, rows), PromptBatch.from_rows(model, rows, batched=False))


@pytest.mark.parametrize("field", ["image_kwargs", "token_kwargs"])
def test_a_kwarg_the_processor_does_not_return_is_named(field):
    model = HookedVLM.tiny("llava")
    wanted = {"image_kwargs": ("pixel_values", "image_sizes"), "token_kwargs": ("token_type_ids",)}[field]
    model.family_rules = replace(model.family_rules, **{field: wanted})
    rows = mixed_rows(model)
    for batched in (True, False):
        with pytest.raises(RuntimeError, match=rf"processor returned no \['{wanted[-1]}'\]"):
            PromptBatch.from_rows(model, rows, batched=batched)
