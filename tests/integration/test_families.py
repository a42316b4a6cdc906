"""The family-agnostic battery: every family with a tiny builder passes the same checks.

For each family a tiny random checkpoint is built offline and loaded through
``HookedVLM.from_pretrained`` (the code path of a real checkpoint). It is compared with an
independent HF model loaded from the same folder (eager attention): logits and every
``blocks.{l}.hook_resid_post`` on a mixed IMAGE / TEXT_ONLY / BLANK batch with two image sizes,
batched == one-at-a-time, role masks, IMAGE vs TEXT_ONLY, greedy generation, CMRM / ShiftDC /
head-ablation hooks (they change the logits and leave no hook behind), and the golden hook names.

Golden hook names live in ``tests/golden/hook_names/<family>.txt``; after a deliberate change,
regenerate them with ``VLMINTERP_UPDATE_GOLDEN=1 pytest tests/integration/test_families.py -k golden``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from tests.conftest import hf_decoder_layers, hf_forward, hook_point_hooks, torch_hook_snapshot
from vlminterp import Condition, HookedVLM, PromptBatch, Sample
from vlminterp.interventions import CMRM, HeadAblation, SafetyDirection, ShiftDC
from vlminterp.testing import tiny_families

pytestmark = pytest.mark.reference

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "hook_names"
CONDITIONS = [Condition.IMAGE, Condition.TEXT_ONLY, Condition.BLANK]


@pytest.fixture(scope="module", params=tiny_families())
def family_model(request):
    return HookedVLM.tiny(request.param)


@pytest.fixture(scope="module")
def hf_model(family_model):
    """An independent HF model from the same folder, class from ``config.architectures``."""
    import transformers

    config = family_model.hf_model.config
    cls = getattr(transformers, config.architectures[0])
    return cls.from_pretrained(family_model.cfg.model_id, attn_implementation="eager").eval()


@pytest.fixture(scope="module")
def batch(family_model, noise_pair):
    return PromptBatch.paired(family_model, noise_pair, CONDITIONS)


def test_logits_and_resid_post_equal_transformers(family_model, hf_model, batch):
    names = family_model.hook_names("resid_post")
    logits, cache = family_model.run_with_cache(batch, names_filter=names)
    ref, ref_resid = hf_forward(hf_model, batch)
    ref_logits = ref.logits
    real = batch.attention_mask.bool()
    torch.testing.assert_close(logits[real], ref_logits[real], atol=1e-4, rtol=0)
    for name, ref in zip(names, ref_resid, strict=True):
        torch.testing.assert_close(cache[name][real], ref[real], atol=1e-4, rtol=0)


def test_batched_equals_one_at_a_time(family_model, batch):
    full = family_model(batch)[:, -1]
    for i in range(len(batch)):
        single = family_model(batch.select([i]))[0, -1]
        torch.testing.assert_close(full[i], single, atol=1e-4, rtol=0)


def test_role_masks_partition_real_tokens_and_locate_the_query(family_model, batch, noise_pair):
    m = batch.masks
    real = batch.attention_mask.bool()
    assert torch.equal(m["image"] | m["instruction"] | m["template"], real)
    assert not (m["image"] & m["instruction"]).any() and not (m["image"] & m["template"]).any()
    assert not (m["instruction"] & m["template"]).any()
    image_id = family_model.image_token_id
    for i, cond in enumerate(batch.conditions):
        assert torch.equal(m["image"][i], batch.input_ids[i] == image_id)
        assert bool(m["image"][i].any()) == cond.has_image
        query = noise_pair[i % len(noise_pair)].query
        expected = family_model.tokenizer(query, add_special_tokens=False)["input_ids"]
        assert batch.input_ids[i][m["instruction"][i]].tolist() == expected


def test_image_content_reaches_the_logits(family_model, batch):
    last = family_model(batch)[:, -1]
    image, text, blank = (batch.rows(c) for c in CONDITIONS)
    assert (last[image] - last[text]).abs().amax(-1).min() > 1e-4, "IMAGE equals TEXT_ONLY"
    assert (last[image] - last[blank]).abs().amax(-1).min() > 1e-4, "the image content has no effect"


def test_generate_equals_transformers_greedy(family_model, hf_model, batch):
    gen = family_model.generate(batch, max_new_tokens=5)
    kwargs = {"attention_mask": batch.attention_mask, **batch.image_inputs, **batch.token_inputs}
    with torch.no_grad():
        ref = hf_model.generate(input_ids=batch.input_ids, max_new_tokens=5, do_sample=False, **kwargs)
    eos = family_model.tokenizer.eos_token_id
    for row, tokens in zip(ref[:, batch.input_ids.shape[1] :].tolist(), gen.tokens, strict=True):
        assert tokens == (row[: row.index(eos)] if eos in row else row)


def _changes_logits_and_cleans_up(model, batch, run):
    clean = model(batch)[:, -1]
    before = torch_hook_snapshot(model)  # after a forward: TL installs its capture hooks on the first one
    steered = run()[:, -1]
    assert hook_point_hooks(model) == 0 and torch_hook_snapshot(model) == before
    return (steered - clean).abs().amax(-1)


def test_cmrm_changes_image_rows_and_leaves_no_hooks(family_model, batch, noise_pair):
    vectors = CMRM.fit(family_model, noise_pair, progress=False)
    cmrm = CMRM(vectors, alpha=1.0)
    diff = _changes_logits_and_cleans_up(
        family_model, batch, lambda: cmrm.run_with_cache(family_model, batch, names_filter=[])[0]
    )
    assert diff[batch.rows(Condition.IMAGE)].min() > 1e-4


def test_shiftdc_changes_image_rows_and_leaves_no_hooks(family_model, noise_pair):
    safe = [Sample(id="s", query="how do i bake a cake"), Sample(id="t", query="tell me about kites")]
    unsafe = [Sample(id="u", query="how do i make a bomb"), Sample(id="v", query="help me get a gun")]
    shiftdc = ShiftDC(
        SafetyDirection.fit(family_model, safe, unsafe, progress=False), caption_source="sample"
    )
    batch = shiftdc.prompts(family_model, noise_pair)  # [IMAGE x 2, CAPTION twin x 2]

    def run():
        with shiftdc.applied(family_model, batch) as prepared:
            assert prepared.batch.conditions == [Condition.IMAGE] * len(
                noise_pair
            )  # twins: unsteered pass only
            return family_model(prepared.batch)

    diff = _changes_logits_and_cleans_up(family_model, batch.select(range(len(noise_pair))), run)
    assert diff.min() > 1e-5, "ShiftDC left the image inputs unchanged"


def test_head_ablation_changes_logits_and_leaves_no_hooks(family_model, batch):
    ablate = HeadAblation([(-1, 0)])
    diff = _changes_logits_and_cleans_up(
        family_model, batch, lambda: ablate.run_with_cache(family_model, batch, names_filter=[])[0]
    )
    assert diff.min() > 1e-6


def test_hook_names_golden(family_model):
    path = GOLDEN / f"{family_model.family}.txt"
    names = sorted(family_model.hook_dict)
    if os.environ.get("VLMINTERP_UPDATE_GOLDEN"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(names) + "\n")
    assert path.is_file(), (
        f"no golden hook names for {family_model.family!r}; run with VLMINTERP_UPDATE_GOLDEN=1"
    )
    assert names == path.read_text().split(), f"hook names of {family_model.family!r} changed"


def test_hook_z_is_the_input_of_the_output_projection(family_model, hf_model, batch):
    """Per-head contributions: ``attn_out = o_proj(z.flatten(heads))``, so hook_z with W_O splits it by head."""
    layer = family_model.cfg.n_layers - 1
    name = family_model.layer_hook("z", layer)
    _, cache = family_model.run_with_cache(batch, names_filter=name)
    z = cache[name]
    assert z.shape[-2:] == (family_model.cfg.n_heads, family_model.cfg.d_head)
    o_proj = hf_decoder_layers(hf_model)[layer].self_attn.o_proj
    captured = {}
    handle = o_proj.register_forward_hook(lambda m, i, o: captured.__setitem__("out", o))
    try:
        hf_forward(hf_model, batch)
    finally:
        handle.remove()
    real = batch.attention_mask.bool()
    with torch.no_grad():
        torch.testing.assert_close(o_proj(z.flatten(-2))[real], captured["out"][real], atol=1e-4, rtol=0)


def test_positions_refuse_vision_hooks(family_model, batch):
    """TL's pos_slice cuts every cached tensor on dim 1, vision hooks included; positions= refuses them."""
    vision = sorted(n for n in family_model.hook_dict if n.startswith("vision_encoder."))
    assert vision, "every family exposes vision-tower hooks"
    with pytest.raises(ValueError, match="decoder hooks"):
        family_model.run_with_cache(batch, names_filter=vision[-1], positions="last")
