"""ShiftDC's caption cache: keyed by the model's fingerprint, so it follows a checkpoint, not its folder."""

from __future__ import annotations

import dataclasses
import json
import shutil

import pytest
from PIL import Image

from vlminterp import HookedVLM
from vlminterp.interventions.captioning import caption_images

OPTIONS = dict(prompt="describe the image", max_new_tokens=4)


@pytest.fixture()
def cached(tiny_model, samples, tmp_path):
    """A caption cache written by ``tiny_model`` whose captions were then replaced by ``"cached"``."""
    cache = tmp_path / "captions.json"
    caption_images(tiny_model, samples[:2], cache=cache, **OPTIONS)
    text = cache.read_text()
    assert str(tiny_model.cfg.model_id) not in text and str(tmp_path) not in text  # no machine path
    cache.write_text(json.dumps(dict.fromkeys(json.loads(text), "cached")))
    return cache


def test_a_checkpoint_copied_elsewhere_reuses_the_cache(tiny_model, samples, cached, tmp_path):
    copy = tmp_path / "other-folder" / "ckpt"
    shutil.copytree(tiny_model.cfg.model_id, copy)
    moved = HookedVLM.from_pretrained(copy)
    captions = caption_images(moved, samples[:2], cache=cached, **OPTIONS)
    assert [s.caption for s in captions] == ["cached", "cached"]
    assert len(json.loads(cached.read_text())) == 2  # nothing was captioned again


def test_another_model_does_not_reuse_the_cache(samples, cached):
    other = HookedVLM.tiny("llava", seed=1)
    try:
        captions = [s.caption for s in caption_images(other, samples[:2], cache=cached, **OPTIONS)]
    except ValueError as err:  # a random model may caption with nothing; it still captioned
        assert "is empty" in str(err)
    else:
        assert captions != ["cached", "cached"]
    assert len(json.loads(cached.read_text())) == 4  # its own two captions, beside the first model's


def test_same_id_with_another_image_or_query_is_captioned_again(tiny_model, samples, tmp_path):
    """MM-SafetyBench's SD, TYPO and SD_TYPO samples share ids: their captions must not."""
    cache = tmp_path / "captions.json"
    first = samples[0]
    caption_images(tiny_model, [first], cache=cache, **OPTIONS)
    other_image = dataclasses.replace(first, image=Image.new("RGB", (40, 30), "purple"))
    other_query = dataclasses.replace(first, query=first.query + " now")
    for n, changed in enumerate((other_image, other_query), start=2):
        caption_images(tiny_model, [changed], cache=cache, **OPTIONS)
        assert len(json.loads(cache.read_text())) == n
    caption_images(tiny_model, [first, other_image, other_query], cache=cache, **OPTIONS)
    assert len(json.loads(cache.read_text())) == 3  # all three found
