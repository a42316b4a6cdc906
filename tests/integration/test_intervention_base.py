"""Intervention base: the Site parser, hook ownership, when hooks act (prefill / generation steps), positions, purity."""

from __future__ import annotations

import pytest
import torch

from vlminterp import Condition, PromptBatch
from vlminterp.interventions import CMRM, DirectionAddition, Site, SteeringVectors
from vlminterp.interventions.base import PreparedRun, add_at, twin_blocks


@pytest.fixture(scope="module")
def vectors(tiny_model):
    g = torch.Generator().manual_seed(0)
    return SteeringVectors.from_model(tiny_model, torch.randn(2, 64, generator=g), method="test")


def _recorders(name):
    """Hooks that record a hook point's activation before and after an intervention."""
    before, after = [], []
    return (
        before,
        after,
        [(name, lambda x, hook: before.append(x.clone()))],
        [(name, lambda x, hook: after.append(x.clone()))],
    )


def _record_generation(model, batch, intervention, name, **kw):
    before, after, rec_in, rec_out = _recorders(name)
    with model.hooks(rec_in), intervention.applied(model), model.hooks(rec_out):
        model.generate(batch, max_new_tokens=4, **kw)
    return before, after


@pytest.mark.parametrize("steps", ["all", "prefill"])
def test_steps_decide_which_passes_are_edited(tiny_model, samples, vectors, steps):
    batch = PromptBatch.paired(tiny_model, samples, [Condition.IMAGE])
    cmrm = CMRM(vectors, alpha=2.0, layers=[0], steps=steps)
    before, after = _record_generation(tiny_model, batch, cmrm, "blocks.0.hook_resid_post")
    assert before[0].shape[1] == batch.input_ids.shape[1] and all(b.shape[1] == 1 for b in before[1:])
    # prefill: only the last position moved, by exactly alpha * v
    delta = after[0] - before[0]
    torch.testing.assert_close(delta[:, -1], (2.0 * vectors.vectors[0]).expand(len(batch), -1))
    assert torch.equal(delta[:, :-1], torch.zeros_like(delta[:, :-1]))
    for b, a in zip(before[1:], after[1:], strict=True):
        if steps == "prefill":
            assert torch.equal(a, b), "steps='prefill' edited a generation step"
        else:
            torch.testing.assert_close(a - b, (2.0 * vectors.vectors[0]).expand(len(batch), 1, -1))


def test_positions_all_edits_every_prompt_position(tiny_model, samples, vectors):
    batch = PromptBatch.paired(tiny_model, samples, [Condition.IMAGE])
    cmrm = CMRM(vectors, alpha=1.0, layers=[1], positions="all")
    before, after = _record_generation(tiny_model, batch, cmrm, "blocks.1.hook_resid_post")
    torch.testing.assert_close(after[0] - before[0], vectors.vectors[1].expand_as(before[0]))


def test_edit_at_layer_changes_nothing_earlier(tiny_model, samples, vectors):
    batch = PromptBatch.paired(tiny_model, samples, [Condition.IMAGE, Condition.TEXT_ONLY])
    names = tiny_model.hook_names("resid_pre") + tiny_model.hook_names("resid_post")
    _, clean = tiny_model.run_with_cache(batch, names_filter=names)
    _, steered = CMRM(vectors, layers=[0]).run_with_cache(tiny_model, batch, names_filter=names)
    assert torch.equal(clean["resid_pre", 0], steered["resid_pre", 0])
    # at and after the edited layer, real positions before the last are untouched (causal attention)
    real = batch.attention_mask.bool()
    real[:, -1] = False
    for layer in (0, 1):
        assert torch.equal(clean["resid_post", layer][real], steered["resid_post", layer][real])
    assert not torch.allclose(clean["resid_post", 1][:, -1], steered["resid_post", 1][:, -1])


def test_prepared_hooks_usable_with_run_with_hooks(tiny_model, samples, vectors):
    batch = PromptBatch.paired(tiny_model, samples, [Condition.IMAGE])
    cmrm = CMRM(vectors, alpha=0.5)
    with cmrm.applied(tiny_model) as run:
        inside = tiny_model.forward(batch)
    names = tiny_model.hook_names("resid_post")
    assert run.batch is None and torch.equal(inside, cmrm.run_with_cache(tiny_model, batch, names)[0])
    assert torch.equal(
        inside, tiny_model.run_with_hooks(batch, fwd_hooks=cmrm.prepared(tiny_model).fwd_hooks)
    )
    assert tiny_model.count_hooks() == 0


def test_a_prepared_run_is_for_its_batch(tiny_model, samples, vectors, no_shape_checks):
    batch = PromptBatch.paired(tiny_model, samples, [Condition.IMAGE])
    wrong = pytest.raises(ValueError, match="prepared for a batch of 4 rows but a forward ran 1")
    with wrong, CMRM(vectors).applied(tiny_model, batch):
        tiny_model.forward(batch.select([0]))
    assert tiny_model.count_hooks() == 0
    with pytest.raises(TypeError, match="list of Samples or a PromptBatch"):
        CMRM(vectors).generate(tiny_model, samples[0])
    with pytest.raises(ValueError, match="steered rows"):
        PreparedRun(batch, [], steered=(4,))


def test_no_hooks_left_after_success_and_exception(tiny_model, samples, vectors):
    batch = PromptBatch.paired(tiny_model, samples[:1], [Condition.IMAGE])
    cmrm = CMRM(vectors)
    with cmrm.applied(tiny_model):
        assert tiny_model.count_hooks() == 2
        tiny_model.forward(batch)
    assert tiny_model.count_hooks() == 0
    with pytest.raises(RuntimeError, match="boom"), cmrm.applied(tiny_model):
        raise RuntimeError("boom")
    assert tiny_model.count_hooks() == 0
    with cmrm.applied(tiny_model), pytest.raises(ValueError), CMRM(vectors, layers=[1]).applied(tiny_model):
        assert tiny_model.count_hooks() == 3
        raise ValueError
    assert tiny_model.count_hooks() == 0


def test_hooks_are_pure():
    x = torch.randn(3, 5, 4)
    copy = x.clone()
    out = add_at(x, torch.ones(4), "last", rows=slice(0, 2))
    assert torch.equal(x, copy) and out is not x
    assert (
        torch.equal(out[:2, -1], x[:2, -1] + 1)
        and torch.equal(out[2], x[2])
        and torch.equal(out[:, :-1], x[:, :-1])
    )


def test_site_and_metadata(vectors):
    cmrm = CMRM(vectors, alpha=0.3, layers=-1, steps="prefill")
    assert cmrm.site == Site(layers=[-1], hook="resid_post", positions="last", steps="prefill")
    assert cmrm.layers == (1,) and CMRM(vectors).steps == "all"
    d = cmrm.to_dict()
    assert (
        d["alpha"] == 0.3
        and d["layers"] == [1]
        and d["steps"] == "prefill"
        and d["vectors"]["method"] == "test"
    )


@pytest.mark.parametrize(
    ("layers", "n_layers", "expected"),
    [(None, 4, (0, 1, 2, 3)), ("all", 4, (0, 1, 2, 3)), ("second_half", 5, (2, 3, 4)), (-1, 4, (3,)),
     ([2, -4], 4, (0, 2)), (range(1, 3), 4, (1, 2))],
)  # fmt: skip
def test_site_layers_mean_the_same_everywhere(layers, n_layers, expected):
    assert Site(layers=layers).layer_indices(n_layers) == expected
    assert DirectionAddition(torch.ones(8), layers=layers).site.layer_indices(n_layers) == expected


def test_bad_arguments_raise(tiny_model, samples, vectors, no_shape_checks):
    with pytest.raises(
        ValueError, match=r"steps='sometimes' is not supported. Choose from \['all', 'prefill'\]"
    ):
        CMRM(vectors, steps="sometimes")
    with pytest.raises(
        ValueError, match=r"layers \[5\] are out of range for a 2-layer model \(valid: 0 .. 1"
    ):
        CMRM(vectors, layers=[5])
    with pytest.raises(ValueError, match="repeats"):
        Site(layers=[1, 1])
    with pytest.raises(ValueError, match="names a layer twice"):
        CMRM(vectors, layers=[1, -1])
    with pytest.raises(
        ValueError, match=r"layers='first' is not supported. Choose from \['all', 'second_half'\]"
    ):
        Site(layers="first")
    with pytest.raises(ValueError, match="layers is empty"):
        Site(layers=[])
    with pytest.raises(
        ValueError, match=r"positions=\(-1,\) is not supported. Choose from \['last', 'all'\]"
    ):
        CMRM(vectors, positions=(-1,))
    with pytest.raises(ValueError, match="must be negative"):
        Site(positions=[0], steps="prefill")
    with pytest.raises(ValueError, match="need steps='prefill'"):
        Site(positions=[-2, -1])
    with pytest.raises(ValueError, match="Unknown hook name 'blocks.0.hook_resid_pots'"):
        DirectionAddition(torch.ones(64), hook="resid_pots").prepared(tiny_model)
    with pytest.raises(ValueError, match="alpha=nan is not a finite number"):
        CMRM(vectors, alpha=float("nan"))
    with pytest.raises(ValueError, match=r"not finite \(NaN or inf\) at layers \[1\]"):
        CMRM(vectors.replace(vectors=torch.tensor([[0.0] * 64, [float("inf")] * 64])))
    batch = PromptBatch.paired(tiny_model, samples[:2], [Condition.IMAGE, Condition.BLANK])
    with pytest.raises(ValueError, match="text_only"):
        twin_blocks(batch, [{Condition.TEXT_ONLY}], "X")
    with pytest.raises(ValueError, match="3 blocks"):
        twin_blocks(batch, [{Condition.BLANK}, {Condition.BLANK}], "X")
