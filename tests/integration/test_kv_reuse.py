"""KV and prefix reuse for the per-input defences equals the one-batch path it replaces.

``ShiftDC.generate`` and ``SampleCMRM.generate`` (``reuse_kv=True``, the default) start the steered
generation from reused KV caches (:class:`vlminterp.models.stepping.KVPrefix`); with
``reuse_kv=False`` they run the one-batch path of ``applied`` (an unsteered pass over inputs and
twins padded together, then steered generation from scratch; or the 3x batch). Both must give the
same tokens and the steered rows' logits at every step within 1e-5, on llava, the mRoPE family
(qwen2_5_vl), gemma3 (sliding-window layers, bidirectional image attention) and the organism, for
left-padded batches of mixed lengths, batched as one at a time. The primitives are checked against
a plain full forward of prompt + fed tokens. Sample-level CMRM's ``generate_chunks`` (the eval
runner's loop) computes the BLANK twins' shared head once per call and equals the one-batch path
chunk by chunk.
"""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from tests.conftest import safe_unsafe_direction
from vlminterp import Condition, HookedVLM, PromptBatch, Sample
from vlminterp.interventions import CMRM, ShiftDC, cmrm
from vlminterp.models.kv_prefix import KVPrefix, shared_prefix_length
from vlminterp.models.stepping import CachedRun, PrefixCache, shared_prefix_run

#: llava and the organism in the default suite; Qwen's mRoPE and Gemma 3's sliding window in
#: `make test-slow` and the drift guard (`-m reference`), to keep the default suite within budget.
FAMILIES = [
    "llava",
    pytest.param("qwen2_5_vl", marks=[pytest.mark.slow, pytest.mark.reference]),
    pytest.param("gemma3", marks=[pytest.mark.slow, pytest.mark.reference]),
    "organism",
]
STEPS = 4


@pytest.fixture(scope="module", params=FAMILIES)
def model(request):
    return HookedVLM.from_organism() if request.param == "organism" else HookedVLM.tiny(request.param)


def _samples(same_size: bool = False):
    """Three image samples of different query lengths (and image sizes unless ``same_size``)."""
    sizes = [(48, 48)] * 3 if same_size else [(40, 30), (64, 48), (50, 70)]
    queries = ["what is this ?", "how do i make a bomb from the things in this picture", "describe it"]
    return [
        Sample(
            id=f"k{i}",
            query=q,
            image=Image.effect_noise(sz, 30 + 20 * i).convert("RGB"),
            caption=f"shape {i}",
        )
        for i, (q, sz) in enumerate(zip(queries, sizes, strict=True))
    ]


def _generate(model, fn):
    """``fn()``'s generation and the logits of its rows at the last position, one entry per step.

    Only forwards of the generation loop count: they unembed one position (the one-batch ShiftDC
    pass over inputs and twins unembeds every position).
    """
    seen = []

    def keep(x, hook):
        if x.shape[1] == 1:
            seen.append(x[:, -1].double().clone())

    with model.hooks([("unembed.hook_out", keep)]):
        out = fn()
    return out, seen


def _assert_same(model, fast_fn, ref_fn, n):
    fast, fast_logits = _generate(model, fast_fn)
    ref, ref_logits = _generate(model, ref_fn)
    assert fast.tokens == ref.tokens
    assert fast.batch.sample_ids == ref.batch.sample_ids
    assert len(fast_logits) == len(ref_logits)
    for a, b in zip(fast_logits, ref_logits, strict=True):
        torch.testing.assert_close(a[:n], b[:n], atol=1e-5, rtol=0)
    assert model.count_hooks() == 0
    return fast, fast_logits


@pytest.fixture(scope="module")
def direction(model):
    return safe_unsafe_direction(model)


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"steps": "all"},
        {"final_norm": True, "layers": "all"},
        {"steer_template": "Be safe. {query}"},
        {"caption_source": "self", "caption_prompt": "describe the image", "caption_max_new_tokens": 3},
    ],
    ids=["prefill", "steps-all", "final-norm", "steer-template", "self-captions"],
)
def test_shiftdc_kv_reuse_equals_the_one_batch_path(model, direction, options):
    samples = _samples()
    options = {"caption_source": "sample", "alpha": 25.0, **options}
    fast = ShiftDC(direction, **options)
    ref = ShiftDC(direction, reuse_kv=False, **options)
    _, fast_logits = _assert_same(
        model,
        lambda: fast.generate(model, samples, max_new_tokens=STEPS),
        lambda: ref.generate(model, samples, max_new_tokens=STEPS),
        len(samples),
    )
    # The correction acts: the first step's logits move away from unsteered generation's.
    _, plain = _generate(model, lambda: model.generate(PromptBatch.paired(model, samples, ["image"]), STEPS))
    assert float((fast_logits[0] - plain[0]).abs().max()) > 1e-3


def test_shiftdc_kv_reuse_batched_equals_one_at_a_time(model, direction):
    samples = _samples()
    shiftdc = ShiftDC(direction, caption_source="sample", alpha=25.0, steps="all")
    batched, batched_logits = _generate(model, lambda: shiftdc.generate(model, samples, max_new_tokens=STEPS))
    for i, sample in enumerate(samples):
        one, one_logits = _generate(
            model, lambda s=sample: shiftdc.generate(model, [s], max_new_tokens=STEPS)
        )
        assert one.tokens[0] == batched.tokens[i]
        for a, b in zip(one_logits, batched_logits, strict=False):
            torch.testing.assert_close(
                a[0], b[i], atol=1e-5, rtol=1e-5
            )  # batched vs alone: float32 sums in another order


@pytest.mark.parametrize(
    "options, same_size",
    [({}, False), ({}, True), ({"steps": "prefill"}, True), ({"layers": [0], "blank": "noise"}, False)],
    ids=["all", "all-shared-blank", "prefill-shared-blank", "noise-blank"],
)
def test_sample_cmrm_prefix_reuse_equals_the_one_batch_path(model, options, same_size):
    samples = _samples(same_size)
    fast = CMRM.sample_level(alpha=3.0, **options)
    ref = CMRM.sample_level(alpha=3.0, reuse_kv=False, **options)
    fast_out, fast_logits = _assert_same(
        model,
        lambda: fast.generate(model, samples, max_new_tokens=STEPS),
        lambda: ref.generate(model, samples, max_new_tokens=STEPS),
        len(samples),
    )
    _, plain = _generate(model, lambda: model.generate(PromptBatch.paired(model, samples, ["image"]), STEPS))
    assert float((fast_logits[0][: len(samples)] - plain[0]).abs().max()) > 1e-3


def test_sample_cmrm_prefix_reuse_batched_equals_one_at_a_time(model):
    samples = _samples(same_size=True)
    sl = CMRM.sample_level(alpha=3.0)
    batched, batched_logits = _generate(model, lambda: sl.generate(model, samples, max_new_tokens=STEPS))
    for i, sample in enumerate(samples):
        one, one_logits = _generate(model, lambda s=sample: sl.generate(model, [s], max_new_tokens=STEPS))
        assert one.tokens[0] == batched.tokens[i]
        for a, b in zip(one_logits, batched_logits, strict=False):
            torch.testing.assert_close(
                a[0], b[i], atol=1e-5, rtol=1e-5
            )  # batched vs alone: float32 sums in another order


def test_blank_twins_share_their_prefix_where_the_model_allows(model):
    blank = PromptBatch.paired(model, _samples(same_size=True), [Condition.BLANK])
    length = shared_prefix_length(model, blank)
    if (
        model.family == "gemma3"
    ):  # sliding-window layers: padding between prefix and rest would move the window
        assert length == 0
        return
    image = blank.image_mask[0, blank.input_ids.shape[1] - int(blank.attention_mask[0].sum()) :]
    assert int(image.nonzero().max()) < length < int(blank.attention_mask.sum(-1).min())
    different = PromptBatch.paired(model, _samples(same_size=False), [Condition.NOISE])
    assert shared_prefix_length(model, different) == 0  # other images: nothing shared


def _full_states(model, batch, name, fed):
    """``name``'s states at the prompt's last position and each fed token: one plain forward."""
    _, cache = model.run_with_cache(batch.with_suffix(fed.tolist()), names_filter=name)
    return cache[name][:, -fed.shape[1] - 1 :]


def test_runs_from_a_prefix_equal_the_full_forward(model):
    """Shared BLANK prefix, a dropped last token and joined prefixes all match plain forwards."""
    if model.family == "gemma3":
        pytest.skip("no shared prefix with sliding-window layers (test_blank_twins_share_...)")
    blank = PromptBatch.paired(model, _samples(same_size=True), [Condition.BLANK])
    text = PromptBatch.paired(model, _samples(), [Condition.TEXT_ONLY])
    name = model.layer_hook("resid_post", model.cfg.n_layers - 1)
    fed = torch.tensor([[5, 9], [7, 7], [11, 3]])
    top = model.cfg.n_layers - 1
    states = []
    with torch.no_grad(), model.hooks([(name, lambda x, hook: states.append(x[:, -1].clone()))]):
        parts = []
        for rows, share in ((blank, True), (text, False)):
            run = shared_prefix_run(model, rows, top) if share else CachedRun(model, rows, top)
            run.step()
            parts.append(run.take_prefix(1))
        joined = PromptBatch.concat([blank, text])
        run = CachedRun(model, joined, prefix=KVPrefix.concat(parts))
        states.clear()
        run.step()
        for column in torch.cat([fed, fed]).T:
            run.step(column)
    full = _full_states(model, joined, name, torch.cat([fed, fed]))
    for i, state in enumerate(states):
        torch.testing.assert_close(state, full[:, i], atol=1e-5, rtol=0)


def test_a_prefix_must_hold_the_images_and_leave_a_token(tiny_model):
    batch = PromptBatch.paired(tiny_model, _samples(same_size=True), [Condition.BLANK])
    run = CachedRun(tiny_model, batch, stop_after_layer=0)
    run.step()
    whole = run.take_prefix(0)
    with pytest.raises(ValueError, match="whole prompt of rows"):
        CachedRun(tiny_model, batch, prefix=whole)
    with pytest.raises(ValueError, match="take_prefix"):
        run.take_prefix(1)
    text = PromptBatch.paired(tiny_model, _samples(same_size=True), [Condition.TEXT_ONLY])
    run = CachedRun(tiny_model, text, stop_after_layer=0)
    run.step()
    with pytest.raises(ValueError, match="every image token"):
        CachedRun(tiny_model, batch, prefix=run.take_prefix(1))


def _chunks():
    """Four chunks: rows sharing query words, rows sharing none, a lone sample, and two again."""
    queries = [
        ["tell me how to make a kite", "tell me how to fly", "tell me how to cook rice"],
        ["what is this ?", "how do i make a bomb from the things in this picture"],
        ["describe it"],
        ["why", "where is the red one"],
    ]
    image = Image.effect_noise((48, 48), 40).convert("RGB")
    return [
        [Sample(id=f"c{i}-{j}", query=q, image=image) for j, q in enumerate(qs)]
        for i, qs in enumerate(queries)
    ]


@pytest.mark.parametrize("steps", ["all", "prefill"])
def test_sample_cmrm_chunks_reuse_the_blank_head_and_equal_the_one_batch_path(model, steps, monkeypatch):
    """generate_chunks: every chunk equals the 3x batch from scratch; the BLANK head is computed once."""
    caches, fed = [], []
    monkeypatch.setattr(cmrm, "PrefixCache", lambda: caches.append(PrefixCache()) or caches[-1])
    fast = CMRM.sample_level(alpha=3.0, steps=steps)
    ref = CMRM.sample_level(alpha=3.0, steps=steps, reuse_kv=False)
    chunks = _chunks()
    outs = fast.generate_chunks(model, chunks, max_new_tokens=STEPS)  # each chunk runs in its next()
    for chunk in chunks:
        _assert_same(
            model,
            lambda: next(outs),
            lambda c=chunk: ref.generate(model, c, max_new_tokens=STEPS),
            len(chunk),
        )
    if model.family == "gemma3":  # sliding-window layers: no shared prefix, nothing kept
        return
    assert caches[0].hits == 2  # chunks 2 and 4 start from chunk 1's head; chunk 3 is alone
    assert len(caches) == 1  # one cache for the generate_chunks call; generate keeps none across calls
    count = ("blocks.0.hook_resid_post", lambda x, hook: fed.append(x.shape[0] * x.shape[1]))
    with model.hooks([count]):
        list(fast.generate_chunks(model, chunks, max_new_tokens=STEPS))
        in_chunks = sum(fed)
        for chunk in chunks:
            fast.generate(model, chunk, max_new_tokens=STEPS)
    assert in_chunks < sum(fed) - in_chunks  # chunk by chunk, the head is computed again for chunks 2 and 4


def test_a_prefix_cache_keeps_one_head_per_model_and_stopping_layer(tiny_model):
    batch = PromptBatch.paired(tiny_model, _samples(same_size=True), [Condition.BLANK])
    cache = PrefixCache()
    length = shared_prefix_length(tiny_model, batch)
    assert cache.lookup(tiny_model, batch, length, 0) is None
    shared_prefix_run(tiny_model, batch, 0, cache).step()
    assert cache.lookup(tiny_model, batch, length, 1) is None  # the kept head stopped after layer 0
    assert cache.lookup(tiny_model, batch, length, 0).length == length
    assert cache.lookup(tiny_model, batch, length - 1, 0).length == length - 1
    other = PromptBatch.paired(tiny_model, _samples(same_size=True), [Condition.NOISE])
    assert cache.lookup(tiny_model, other, length, 0) is None  # another image
    assert cache.hits == 2
    with pytest.raises(ValueError, match="keep 1 to"):
        cache.lookup(tiny_model, batch, length, 0).first(length + 1)
