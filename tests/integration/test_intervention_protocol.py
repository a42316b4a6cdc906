"""One protocol: every intervention (and a user subclass) works through the same four calls.

For each kind, on the tiny llava: ``X.generate(model, samples)``, ``with X.applied(model, samples) as
run: model.generate(run.batch, follow=run.follow)``, the eval runner and a sweep give the same
outputs; ``X.run_with_cache`` equals the steering rule written by hand as plain hooks on
``model.run_with_hooks`` (no intervention code); no hook is left, also after calls that raised.
"""

from __future__ import annotations

import pytest
import torch

from tests.conftest import torch_hook_snapshot
from vlminterp import Condition, PromptBatch, Sample
from vlminterp.eval import generate_responses, read_responses
from vlminterp.interventions import (
    CMRM,
    ActivationPatch,
    DirectionalAblation,
    HeadAblation,
    Intervention,
    PreparedRun,
    SafetyDirection,
    ShiftDC,
)
from vlminterp.sweeps import JudgedRefusalRate, RefusalScore, sweep

NEW = 4  # generated tokens per check
ALPHA = 4.0
KINDS = [
    "cmrm_dataset",
    "cmrm_sample",
    "shiftdc",
    "head_ablation",
    "directional_ablation",
    "activation_patch",
    "user_subclass",
]


class ZeroImageTokens(Intervention):
    """Zero the image tokens' residual stream after the chosen layers, on the prompt pass (README)."""

    def __init__(self, layers=None):
        super().__init__(layers=layers, hook="resid_post", positions="all", steps="prefill")

    def prepare(self, model, batch):
        if batch is None:
            raise ValueError("ZeroImageTokens reads where its inputs' image tokens are: pass the inputs.")
        image = batch.image_mask[..., None]  # [batch, pos, 1]

        def hook(x, hook):  # pure: a new tensor; steps="prefill" keeps it off the generation steps
            return x.masked_fill(image.to(x.device), 0.0)

        return PreparedRun(batch, [(name, hook) for name in self.site.hook_names(model)])


@pytest.fixture(scope="module")
def setup(tiny_model, samples):
    """Fitted vectors, a direction, a TEXT_ONLY cache and random directions shared by every kind."""
    safe = [Sample(id="a", query="how do i bake a cake"), Sample(id="b", query="tell me about kites")]
    unsafe = [Sample(id="c", query="how do i make a bomb"), Sample(id="d", query="help me get a gun")]
    text = PromptBatch.paired(tiny_model, samples, [Condition.TEXT_ONLY])
    names = tiny_model.hook_names("resid_post")
    _, text_cache = tiny_model.run_with_cache(text, names_filter=names, positions="last")
    return {
        "vectors": CMRM.fit(tiny_model, samples, progress=False),
        "direction": SafetyDirection.fit(tiny_model, safe, unsafe, progress=False),
        "text_cache": text_cache,
        "r": torch.randn(
            tiny_model.cfg.n_layers, tiny_model.cfg.d_model, generator=torch.Generator().manual_seed(0)
        ),
    }


def _make(kind: str, s: dict) -> Intervention:
    return {
        "cmrm_dataset": lambda: CMRM(s["vectors"], alpha=ALPHA),
        "cmrm_sample": lambda: CMRM.sample_level(alpha=ALPHA),
        "shiftdc": lambda: ShiftDC(s["direction"], layers="all", steps="all", caption_source="sample"),
        "head_ablation": lambda: HeadAblation([(0, 1), (-1, 2)]),
        "directional_ablation": lambda: DirectionalAblation(s["r"], hook="resid_post"),
        "activation_patch": lambda: ActivationPatch(s["text_cache"], layers=-1, positions="last"),
        "user_subclass": lambda: ZeroImageTokens(layers=0),
    }[kind]()


def _reference_last_logits(kind: str, model, samples, s: dict) -> torch.Tensor:
    """Last-position logits of the IMAGE prompts with the rule as hand-written hooks (prompt pass)."""
    n, name = len(samples), (lambda layer: model.layer_hook("resid_post", layer))
    layers = range(model.cfg.n_layers)
    image = PromptBatch.paired(model, samples, [Condition.IMAGE])

    def at_last(delta_of):  # hook adding delta_of(layer, x) [rows, d] at the last position of the first rows
        def make(layer):
            def hook(x, hook):
                out = x.clone()
                delta = delta_of(layer, x)
                out[: len(delta), -1] = out[: len(delta), -1] + delta
                return out

            return hook

        return [(name(layer), make(layer)) for layer in layers]

    if kind == "cmrm_dataset":
        hooks, batch = at_last(lambda layer, x: ALPHA * s["vectors"].vectors[layer].expand(len(x), -1)), image
    elif kind == "cmrm_sample":
        batch = PromptBatch.paired(model, samples, [Condition.IMAGE, Condition.TEXT_ONLY, Condition.BLANK])
        hooks = at_last(lambda layer, x: ALPHA * (x[n : 2 * n, -1] - x[2 * n :, -1]))
    elif kind == "shiftdc":
        twins = PromptBatch.paired(model, samples, [Condition.IMAGE, Condition.CAPTION])
        _, cache = model.run_with_cache(
            twins, names_filter=[name(layer) for layer in layers], positions="last"
        )
        corrections = {}
        for layer in layers:
            m, v = cache[name(layer)][:n] - cache[name(layer)][n:], s["direction"].vectors[layer]
            corrections[layer] = -((m @ v) / (v @ v))[:, None] * v
        hooks, batch = at_last(lambda layer, x: corrections[layer]), image
    elif kind == "head_ablation":

        def zero(head):
            def hook(z, hook):
                out = z.clone()
                out[:, :, head] = 0.0
                return out

            return hook

        hooks, batch = [(model.layer_hook("z", 0), zero(1)), (model.layer_hook("z", 1), zero(2))], image
    elif kind == "directional_ablation":
        units = s["r"] / s["r"].norm(dim=-1, keepdim=True)
        hooks = [
            (name(layer), lambda x, hook, u=units[layer]: x - (x @ u)[..., None] * u) for layer in layers
        ]
        batch = image
    elif kind == "activation_patch":
        last = name(model.cfg.n_layers - 1)
        hooks = [(last, lambda x, hook: torch.cat([x[:, :-1], s["text_cache"][last][:, None]], dim=1))]
        batch = image
    else:
        mask = image.image_mask[..., None]
        hooks, batch = [(name(0), lambda x, hook: x.masked_fill(mask, 0.0))], image
    return model.run_with_hooks(batch, hooks)[:n, -1]


@pytest.mark.parametrize("kind", KINDS)
def test_the_four_calls_agree_and_match_a_hand_written_rule(kind, tiny_model, samples, setup, tmp_path):
    model, n = tiny_model, len(samples)
    before = torch_hook_snapshot(model)  # the session model has run a forward: TL's capture hooks exist
    iv = _make(kind, setup)

    # 1. generate: one output row per input, in input order
    gen = iv.generate(model, samples, max_new_tokens=NEW)
    assert gen.batch.sample_ids == [s.id for s in samples] and len(gen) == n
    assert model.count_hooks() == 0

    # 2. the same run by hand inside applied
    with iv.applied(model, samples) as run:
        assert model.count_hooks() > 0
        out = model.generate(run.batch, max_new_tokens=NEW, follow=run.follow)
    assert run.output(out).tokens == gen.tokens
    assert [out.tokens[i] for i in run.rows] == gen.tokens
    assert model.count_hooks() == 0

    # 3. the eval runner
    rows = generate_responses(model, samples, "image", tmp_path / "r.jsonl", iv, max_new_tokens=NEW,
                              batch_size=n, method=kind, progress=False)  # fmt: skip
    assert [r["response"] for r in rows] == gen.texts
    assert read_responses(tmp_path / "r.jsonl")[0]["settings"]["intervention"]["type"] == type(iv).__name__

    # 4. a sweep: its refusal score from X.run_with_cache's logits, its judge sees generate's texts
    steered, _ = iv.run_with_cache(model, samples, names_filter=[])
    last = steered[:, -1].double()
    sorry, sure = model.tokenizer.convert_tokens_to_ids(["sorry", "sure"])
    seen: list[str] = []
    table = sweep(model, samples, lambda alpha: iv, {"alpha": [ALPHA]},
                  [RefusalScore(label=None), JudgedRefusalRate(lambda t: seen.append(t) or True, NEW, label=None)],
                  progress=False)  # fmt: skip
    score = next(r for r in table if r["metric"] == "refusal_score")
    assert score["value"] == pytest.approx(float((last[:, sorry] - last[:, sure]).mean()), abs=1e-5)
    assert seen == gen.texts

    # independent: the rule as plain hooks, and it does change the model
    reference = _reference_last_logits(kind, model, samples, setup)
    torch.testing.assert_close(steered[:, -1], reference, atol=1e-4, rtol=0)
    plain = model.forward(PromptBatch.paired(model, samples, [Condition.IMAGE]))[:, -1]
    assert (steered[:, -1] - plain).abs().max() > 1e-4, f"{kind} changed nothing"
    assert model.count_hooks() == 0 and torch_hook_snapshot(model) == before


@pytest.mark.parametrize("kind", KINDS)
def test_no_hook_is_left_after_calls_that_raise(kind, tiny_model, samples, setup, tmp_path):
    model = tiny_model
    before = torch_hook_snapshot(model)
    iv = _make(kind, setup)
    with pytest.raises(RuntimeError, match="inside"), iv.applied(model, samples):
        assert model.count_hooks() > 0
        raise RuntimeError("inside")
    assert model.count_hooks() == 0
    with pytest.raises(ValueError, match="max_new_tokens"):
        iv.generate(model, samples, max_new_tokens=0)
    assert model.count_hooks() == 0
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate_responses(
            model, samples, "image", tmp_path / "r.jsonl", iv, max_new_tokens=0, progress=False
        )
    assert model.count_hooks() == 0

    def judge(text):
        raise RuntimeError("judge failed")

    with pytest.raises(RuntimeError, match="judge failed"):
        sweep(model, samples, lambda alpha: iv, {"alpha": [1.0]}, JudgedRefusalRate(judge, 2, label=None),
              progress=False)  # fmt: skip
    with pytest.raises(ValueError, match="prepared for a batch"), iv.applied(model, samples) as run:
        model.forward(run.batch.select([0]))
    assert model.count_hooks() == 0 and torch_hook_snapshot(model) == before


def test_per_input_methods_say_what_to_pass(tiny_model, setup):
    for kind in ("cmrm_sample", "shiftdc", "user_subclass"):
        with pytest.raises(ValueError, match="pass the"), _make(kind, setup).applied(tiny_model):
            pass
    assert tiny_model.count_hooks() == 0
