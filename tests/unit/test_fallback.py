"""FallbackBridge: TransformerLens decoder hook names via module hooks, on a remote-code VLM.

The reference values are computed independently: the model's own ``output_hidden_states``, torch
forward hooks written here on the HF modules, the attention output projection's weight, and
TransformerLens' own bridge on the tiny llava.
"""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, AutoProcessor, LlavaConfig, PretrainedConfig
from transformers.modeling_outputs import CausalLMOutputWithPast

from vlminterp.models.fallback import FallbackBridge, bridge_supports, load_fallback
from vlminterp.testing import TINY_REMOTE_MODEL_TYPE, tiny_remote_vlm_dir

KINDS = (
    "hook_resid_pre",
    "attn.hook_z",
    "hook_attn_out",
    "hook_resid_mid",
    "hook_mlp_out",
    "hook_resid_post",
)


@pytest.fixture(scope="module")
def remote_dir():
    return tiny_remote_vlm_dir(seed=0)


@pytest.fixture(scope="module")
def fb(remote_dir):
    return load_fallback(remote_dir, trust_remote_code=True)


@pytest.fixture(scope="module")
def inputs(remote_dir):
    """Two image prompts of different lengths, left-padded, with explicit position ids."""
    processor = AutoProcessor.from_pretrained(remote_dir, trust_remote_code=False)
    texts = [
        processor.apply_chat_template(
            [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": q}]}],
            add_generation_prompt=True,
        )
        for q in ("what is this ?", "tell me how to draw a red cat in this picture please")
    ]
    images = [Image.new("RGB", (40, 30), "red"), Image.new("RGB", (32, 48), "blue")]
    enc = processor(text=texts, images=images, return_tensors="pt", padding=True)
    enc["position_ids"] = (enc["attention_mask"].cumsum(-1) - 1).clamp(min=0)
    return dict(enc)


def run_cached(fb, inputs, names=None, extra=()):
    """Logits and {name: activation} of ``names`` (default all), with ``extra`` (name, fn) hooks."""
    store = {}
    names = sorted(fb.hook_dict) if names is None else names
    hooks = [*extra, *((n, lambda x, hook: store.__setitem__(hook.name, x.detach().clone())) for n in names)]
    handles = [(fb.hook_dict[n], fb.hook_dict[n].add_hook(fn)) for n, fn in hooks]
    try:
        with torch.no_grad():
            logits = fb(inputs["input_ids"], **{k: v for k, v in inputs.items() if k != "input_ids"})
    finally:
        for point, handle in reversed(handles):
            handle.hook.remove()
            if handle in point.fwd_hooks:
                point.fwd_hooks.remove(handle)
    return logits, store


def torch_hook_snapshot(module: nn.Module) -> dict[str, tuple]:
    """Every torch forward/pre/backward hook id on every submodule (HF model and hook points)."""
    snap = {}
    for name, m in module.named_modules():
        ids = (*m._forward_hooks, *m._forward_pre_hooks, *m._backward_hooks, *m._backward_pre_hooks)
        if ids:
            snap[name] = tuple(sorted(ids))
    return snap


# ---------------------------------------------------------------------- loading
def test_remote_folder_loads_only_with_trust_remote_code(remote_dir, fb):
    with pytest.raises(ValueError, match="custom code"):
        AutoConfig.from_pretrained(remote_dir, trust_remote_code=False)
    with pytest.raises(ValueError, match="custom code"):
        AutoModelForCausalLM.from_pretrained(remote_dir, trust_remote_code=False)
    config = AutoConfig.from_pretrained(remote_dir, trust_remote_code=True)
    assert config.model_type == TINY_REMOTE_MODEL_TYPE
    assert not bridge_supports(config)
    assert bridge_supports(LlavaConfig(architectures=["LlavaForConditionalGeneration"]))
    assert not bridge_supports(PretrainedConfig())  # no architectures, no known model_type
    assert type(fb.original_model).__module__.startswith("transformers_modules")
    c = fb.cfg
    assert (c.n_layers, c.d_model, c.n_heads, c.d_head, c.d_vocab) == (2, 64, 4, 16, config.vocab_size)
    assert set(fb.hook_dict) == {f"blocks.{layer}.{k}" for layer in range(2) for k in KINDS}
    assert all(point.name == name for name, point in fb.hook_dict.items())


# ---------------------------------------------------------------------- values
def test_hook_values_match_independent_computation(fb, inputs):
    hf = fb.original_model
    with torch.no_grad():
        plain = hf(**inputs, output_hidden_states=True)
    reference = {}
    handles = [
        hf.transformer.h[layer].attn.c_proj.register_forward_hook(
            lambda m, a, out, layer=layer: reference.__setitem__(("proj_out", layer), out.clone())
        )
        for layer in range(2)
    ]
    try:
        logits, cache = run_cached(fb, inputs)
    finally:
        for h in handles:
            h.remove()
    torch.testing.assert_close(logits, plain.logits, rtol=0, atol=0)  # observing changes nothing
    for layer in range(2):
        pre, post = cache[f"blocks.{layer}.hook_resid_pre"], cache[f"blocks.{layer}.hook_resid_post"]
        z, attn_out = cache[f"blocks.{layer}.attn.hook_z"], cache[f"blocks.{layer}.hook_attn_out"]
        mid, mlp_out = cache[f"blocks.{layer}.hook_resid_mid"], cache[f"blocks.{layer}.hook_mlp_out"]
        torch.testing.assert_close(pre, plain.hidden_states[layer], rtol=0, atol=1e-6)
        torch.testing.assert_close(post, plain.hidden_states[layer + 1], rtol=0, atol=1e-6)
        assert z.shape == (*pre.shape[:2], 4, 16)
        w_o = hf.transformer.h[layer].attn.c_proj.weight  # [d_model, n_heads * d_head], no bias
        torch.testing.assert_close(z.flatten(-2) @ w_o.T, attn_out, rtol=0, atol=1e-5)
        torch.testing.assert_close(attn_out, reference[("proj_out", layer)], rtol=0, atol=1e-6)
        torch.testing.assert_close(mid, pre + attn_out, rtol=0, atol=1e-5)
        torch.testing.assert_close(post, mid + mlp_out, rtol=0, atol=1e-5)
    torch.testing.assert_close(
        cache["blocks.1.hook_resid_pre"], cache["blocks.0.hook_resid_post"], rtol=0, atol=0
    )


def test_batched_left_padded_rows_equal_single_rows(fb, inputs):
    logits = fb(inputs["input_ids"], **{k: v for k, v in inputs.items() if k != "input_ids"})
    mask = inputs["attention_mask"]
    for row in range(2):
        keep = mask[row].bool()
        single = {
            "input_ids": inputs["input_ids"][row : row + 1, keep],
            "attention_mask": mask[row : row + 1, keep],
            "pixel_values": inputs["pixel_values"][row : row + 1],
        }
        alone = fb(
            single["input_ids"], attention_mask=single["attention_mask"], pixel_values=single["pixel_values"]
        )
        torch.testing.assert_close(logits[row, keep], alone[0], rtol=0, atol=1e-5)


def test_same_values_as_transformer_bridge_on_llava(tiny_model, samples):
    """FallbackBridge on a plain HF llava gives TransformerLens' own values for every name it fires."""
    from transformers import LlavaForConditionalGeneration

    from vlminterp import Condition, PromptBatch

    hf = LlavaForConditionalGeneration.from_pretrained(tiny_model.cfg.model_id).eval()
    fb = FallbackBridge.from_model(hf)
    assert fb.cfg.layers_path == "model.language_model.layers"
    batch = PromptBatch.paired(tiny_model, samples[:2], [Condition.IMAGE, Condition.TEXT_ONLY])
    names = sorted(fb.hook_dict)
    tl_logits, tl_cache = tiny_model.run_with_cache(batch, names_filter=names)
    logits, cache = run_cached(fb, {"input_ids": batch.input_ids, **batch.model_kwargs()})
    real = batch.attention_mask.bool()  # padding positions hold arbitrary values in both
    torch.testing.assert_close(logits[real], tl_logits[real], rtol=0, atol=1e-5)
    for name in names:
        torch.testing.assert_close(cache[name][real], tl_cache[name][real], rtol=0, atol=1e-5, msg=name)


# ---------------------------------------------------------------------- interventions
def test_replacing_resid_post_changes_only_later_positions(fb, inputs):
    clean, _ = run_cached(fb, inputs, names=[])
    vector = torch.randn(64, generator=torch.Generator().manual_seed(0)) * 10

    def add_last(x, hook):
        x = x.clone()
        x[:, -1] += vector
        return x

    steered, cache = run_cached(
        fb, inputs, names=["blocks.1.hook_resid_pre"], extra=[("blocks.0.hook_resid_post", add_last)]
    )
    assert (steered[:, -1] - clean[:, -1]).abs().max() > 1e-2
    torch.testing.assert_close(steered[:, :-1], clean[:, :-1], rtol=0, atol=0)  # causal
    _, clean_cache = run_cached(fb, inputs, names=["blocks.1.hook_resid_pre"])
    moved = cache["blocks.1.hook_resid_pre"] - clean_cache["blocks.1.hook_resid_pre"]
    torch.testing.assert_close(moved[:, -1], vector.expand(2, -1), rtol=0, atol=1e-5)
    # The same vector added at resid_pre of layer 1 (a forward pre-hook) is the same intervention.
    via_pre, _ = run_cached(fb, inputs, names=[], extra=[("blocks.1.hook_resid_pre", add_last)])
    torch.testing.assert_close(via_pre, steered, rtol=0, atol=1e-5)


def test_zeroing_a_head_in_hook_z_removes_its_w_o_term(fb, inputs):
    """attn_out' = attn_out - z[..., h, :] @ W_O[:, h*d_head:(h+1)*d_head].T when head h is zeroed."""
    head, d_head = 2, fb.cfg.d_head
    names = ["blocks.1.attn.hook_z", "blocks.1.hook_attn_out"]
    _, clean = run_cached(fb, inputs, names=names)

    def zero_head(z, hook):
        z = z.clone()
        z[:, :, head] = 0
        return z

    _, ablated = run_cached(
        fb, inputs, names=["blocks.1.hook_attn_out"], extra=[("blocks.1.attn.hook_z", zero_head)]
    )
    w_o = fb.original_model.transformer.h[1].attn.c_proj.weight[:, head * d_head : (head + 1) * d_head]
    expected = clean["blocks.1.hook_attn_out"] - clean["blocks.1.attn.hook_z"][:, :, head] @ w_o.T
    torch.testing.assert_close(ablated["blocks.1.hook_attn_out"], expected, rtol=0, atol=1e-5)


# ---------------------------------------------------------------------- hook hygiene
def test_no_torch_hooks_left_after_add_remove_and_after_an_error(fb, inputs):
    before = torch_hook_snapshot(fb)
    assert before == {}  # earlier tests left nothing either; the remote model has no hooks of its own
    calls = []
    point = fb.hook_dict["blocks.0.hook_resid_post"]
    first = point.add_hook(lambda x, hook: calls.append("a"))
    second = point.add_hook(lambda x, hook: calls.append("b"))
    fb(inputs["input_ids"][:1])
    assert calls == ["a", "b"]  # two hooks on one point: one module hook, each fn once
    first.hook.remove()
    point.fwd_hooks.remove(first)
    fb(inputs["input_ids"][:1])
    assert calls == ["a", "b", "b"]
    second.hook.remove()
    point.fwd_hooks.remove(second)
    assert torch_hook_snapshot(fb) == before

    def boom(x, hook):
        raise RuntimeError("hook failed")

    with pytest.raises(RuntimeError, match="hook failed"):
        run_cached(fb, inputs, extra=[("blocks.1.attn.hook_z", boom)])
    assert torch_hook_snapshot(fb) == before
    assert sum(len(p.fwd_hooks) + len(p.bwd_hooks) for p in fb.hook_dict.values()) == 0
    with pytest.raises(NotImplementedError, match="forward hooks only"):
        point.add_hook(lambda x, hook: None, dir="bwd")


def test_an_unknown_return_type_is_refused(fb, inputs, no_shape_checks):
    with pytest.raises(ValueError, match="return_type"):
        fb(inputs["input_ids"], return_type="loss")


# ---------------------------------------------------------------------- KV cache
def test_cached_decoding_equals_full_recompute(fb, inputs):
    """Greedy steps through return_type="logits_and_cache" == a no-cache forward of the whole sequence."""
    ids, mask, pos = inputs["input_ids"], inputs["attention_mask"], inputs["position_ids"]
    step_kwargs = {"attention_mask": mask, "position_ids": pos, "pixel_values": inputs["pixel_values"]}
    step_ids, past, seen = ids, None, []
    point = fb.hook_dict["blocks.1.hook_resid_post"]
    handle = point.add_hook(lambda x, hook: seen.append(x[:, -1].clone()))
    try:
        with torch.no_grad():
            for _ in range(4):
                logits, past = fb(
                    step_ids,
                    return_type="logits_and_cache",
                    use_cache=True,
                    past_key_values=past,
                    **step_kwargs,
                )
                token = logits[:, -1].argmax(-1)
                full_logits = fb(
                    ids, attention_mask=mask, position_ids=pos, pixel_values=inputs["pixel_values"]
                )
                torch.testing.assert_close(logits[:, -1], full_logits[:, -1], rtol=0, atol=1e-5)
                ids = torch.cat([ids, token[:, None]], dim=1)
                mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
                pos = torch.cat([pos, pos[:, -1:] + 1], dim=1)
                step_ids = token[:, None]
                step_kwargs = {"attention_mask": mask, "position_ids": pos[:, -1:]}
    finally:
        handle.hook.remove()
        point.fwd_hooks.remove(handle)
    assert len(seen) == 8  # cached step k, then the full recompute of the same sequence
    for cached, full in zip(seen[::2], seen[1::2], strict=True):
        torch.testing.assert_close(cached, full, rtol=0, atol=1e-5)


# ---------------------------------------------------------------------- discovery
class _Layer(nn.Module):
    def __init__(self, d: int, attn_name: str = "o_proj"):
        super().__init__()
        self.self_attn = nn.Module()
        setattr(self.self_attn, attn_name, nn.Linear(d, d))
        self.attn_name = attn_name
        self.mlp = nn.Linear(d, d)

    def forward(self, hidden_states):
        return (
            hidden_states + getattr(self.self_attn, self.attn_name)(hidden_states) + self.mlp(hidden_states)
        )


class _ToyLM(nn.Module):
    """Layers at an unknown path, called with ``hidden_states=`` and returning bare tensors."""

    def __init__(self, attn_name: str = "o_proj"):
        super().__init__()
        self.config = PretrainedConfig(
            num_hidden_layers=2, num_attention_heads=2, hidden_size=8, vocab_size=10
        )
        self.embed = nn.Embedding(10, 8)
        self.stack = nn.Module()
        self.stack.blocks = nn.ModuleList(_Layer(8, attn_name) for _ in range(2))
        self.stack.twins = nn.ModuleList(nn.Identity() for _ in range(2))  # a second 2-long list
        self.head = nn.Linear(8, 10)

    def forward(self, input_ids, **kwargs):
        h = self.embed(input_ids)
        for layer in self.stack.blocks:
            h = layer(hidden_states=h)
        return CausalLMOutputWithPast(logits=self.head(h))


def test_discovery_failure_names_the_model_and_the_override():
    with pytest.raises(ValueError, match=r"'stack.blocks', 'stack.twins'.*in _ToyLM.*layers_path="):
        FallbackBridge.from_model(_ToyLM())
    with pytest.raises(ValueError, match=r"attention output projection.*attn_out_proj="):
        FallbackBridge.from_model(_ToyLM(attn_name="wo_custom"), layers_path="stack.blocks")
    fb = FallbackBridge.from_model(
        _ToyLM(attn_name="wo_custom"), layers_path="stack.blocks", attn_out_proj="self_attn.wo_custom"
    )
    assert (fb.cfg.n_heads, fb.cfg.d_head, fb.cfg.d_vocab) == (2, 4, 10)
    assert "blocks.0.hook_resid_mid" not in fb.hook_dict  # no post-attention norm: not fired


def test_keyword_hidden_states_and_bare_tensor_outputs_are_routed():
    torch.manual_seed(0)
    model = _ToyLM().eval()
    fb = FallbackBridge.from_model(model, layers_path="stack.blocks")
    ids = torch.tensor([[1, 2, 3]])
    shift = torch.ones(8)
    with torch.no_grad():
        h0 = model.embed(ids)
        expected = model.head(
            model.stack.blocks[1](hidden_states=model.stack.blocks[0](hidden_states=h0 + shift))
        )
        _, cache = run_cached(fb, {"input_ids": ids}, names=["blocks.0.hook_resid_post"])
        got, _ = run_cached(
            fb, {"input_ids": ids}, names=[], extra=[("blocks.0.hook_resid_pre", lambda x, hook: x + shift)]
        )
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(
        cache["blocks.0.hook_resid_post"], model.stack.blocks[0](hidden_states=h0), rtol=0, atol=0
    )


# ---------------------------------------------------------------------- inside HookedVLM
def test_hooked_vlm_runs_on_a_fallback_bridge(fb, remote_dir, samples):
    """HookedVLM's cache, hooks and KV-cache generation work unchanged with a FallbackBridge."""
    from vlminterp import Condition, HookedVLM, PromptBatch
    from vlminterp.models.families import get_family

    model = HookedVLM(
        fb,
        AutoProcessor.from_pretrained(remote_dir, trust_remote_code=False),
        get_family("llava"),
        model_id=str(remote_dir),
    )
    batch = PromptBatch.paired(model, samples[:2], [Condition.IMAGE, Condition.TEXT_ONLY])
    logits, cache = model.run_with_cache(batch, names_filter=model.hook_names("resid_post"), positions="last")
    _, full = run_cached(
        fb, {"input_ids": batch.input_ids, **batch.model_kwargs()}, names=["blocks.1.hook_resid_post"]
    )
    torch.testing.assert_close(cache["blocks.1.hook_resid_post"], full["blocks.1.hook_resid_post"][:, -1])
    generation = model.generate(batch, max_new_tokens=3)
    ids, mask = batch.input_ids, batch.attention_mask
    image = batch.model_kwargs()["pixel_values"]
    with torch.no_grad():
        for _ in range(3):  # greedy decoding by full recomputation, without a cache
            pos = (mask.cumsum(-1) - 1).clamp(min=0)
            token = fb(ids, attention_mask=mask, position_ids=pos, pixel_values=image)[:, -1].argmax(-1)
            ids, mask = (
                torch.cat([ids, token[:, None]], 1),
                torch.cat([mask, torch.ones_like(mask[:, :1])], 1),
            )
    eos = model.tokenizer.eos_token_id
    expected = ids[:, -3:].tolist()
    assert generation.tokens == [row[: row.index(eos)] if eos in row else row for row in expected]
    assert any(generation.tokens), "the check needs at least one generated token"

    def boom(x, hook):
        raise RuntimeError("hook failed")

    with pytest.raises(RuntimeError, match="hook failed"):
        model.generate(batch, max_new_tokens=2, fwd_hooks=[("blocks.0.attn.hook_z", boom)])
    assert model.count_hooks() == 0
    assert torch_hook_snapshot(fb) == {}
