"""LLaVA-NeXT / LLaVA-OneVision pitfalls: projector rows are not image tokens; read resid_pre[image_mask]."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from vlminterp import Condition, HookedVLM, PromptBatch, Sample

pytestmark = pytest.mark.reference


@pytest.mark.parametrize("family", ["llava_next", "llava_onevision"])
def test_image_token_features_live_in_resid_pre_not_in_projector_rows(family):
    model = HookedVLM.tiny(family)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (56, 40, 3), dtype=np.uint8))
    batch = PromptBatch.paired(model, [Sample(id="a", query="what is it ?", image=image)], [Condition.IMAGE])
    names = ["vision_projector.hook_out", "blocks.0.hook_resid_pre", "hook_embed"]
    _, cache = model.run_with_cache(batch, names_filter=names)
    mask = batch.image_mask[0]
    projector = cache["vision_projector.hook_out"]  # [tiles, tokens per tile, d_model]
    features = cache["blocks.0.hook_resid_pre"][0][mask]
    # Any-resolution packing: 5 tiles x 16 rows are unpadded and packed with one newline slot per row.
    assert projector.shape[0] * projector.shape[1] != features.shape[0]
    newline = model.hf_model.model.image_newline
    assert int(((features - newline).abs().amax(-1) == 0).sum()) > 0
    # The base view comes first, row for row.
    assert (features[: projector.shape[1]] - projector[0]).abs().max() == 0
    # hook_embed holds the placeholder embedding at every image position, not the features.
    placeholder = cache["hook_embed"][0][mask]
    assert (placeholder - placeholder[0]).abs().max() == 0
    assert (features - features[0]).abs().amax(-1).max() > 0
