"""No hook survives any HookedVLM call, including calls whose hook raises."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import hook_point_hooks, torch_hook_snapshot
from vlminterp import Condition, PromptBatch


class Boom(RuntimeError):
    pass


def _raising(x, hook):
    raise Boom("hook failed")


def _identity(x, hook):
    return x


@pytest.fixture
def batch(tiny_model, samples):
    b = PromptBatch.paired(tiny_model, samples[:2], [Condition.IMAGE, Condition.TEXT_ONLY])
    tiny_model.forward(b)  # first forward installs TL/transformers' fixed internal capture hooks
    return b


def _calls(model, batch, fn):
    name = model.layer_hook("resid_post", 0)
    hooks = [(name, fn), (model.layer_hook("z", 1), _identity)]

    def in_context():
        with model.hooks(hooks):
            model.forward(batch)

    return {
        "run_with_hooks": lambda: model.run_with_hooks(batch, fwd_hooks=hooks),
        "hooks": in_context,
        "generate": lambda: model.generate(batch, max_new_tokens=2, fwd_hooks=hooks),
        "run_with_cache": lambda: model.run_with_cache(
            batch, names_filter=name, positions="last", fwd_hooks=hooks
        ),
    }


@pytest.mark.parametrize("call", ["run_with_hooks", "hooks", "generate", "run_with_cache"])
@pytest.mark.parametrize("raises", [False, True])
def test_no_hook_survives(tiny_model, batch, call, raises):
    before = torch_hook_snapshot(tiny_model)
    fn = _raising if raises else _identity
    if raises:
        with pytest.raises(Boom):
            _calls(tiny_model, batch, fn)[call]()
    else:
        _calls(tiny_model, batch, fn)[call]()
    assert hook_point_hooks(tiny_model) == 0
    assert tiny_model.count_hooks() == 0
    assert torch_hook_snapshot(tiny_model) == before, "torch-level hooks changed"


def test_nested_contexts_remove_only_their_own(tiny_model, batch):
    a = (tiny_model.layer_hook("resid_post", 0), _identity)
    b = (tiny_model.layer_hook("resid_post", 1), _identity)
    with tiny_model.hooks([a]):
        with tiny_model.hooks([b]):
            assert tiny_model.count_hooks() == 2
        assert tiny_model.count_hooks() == 1
    assert tiny_model.count_hooks() == 0


def test_unknown_name_adds_nothing(tiny_model, batch):
    good = (tiny_model.layer_hook("resid_post", 0), _identity)
    with pytest.raises(ValueError, match="Unknown hook name 'blocks.0.hook_resid_pots'"):
        tiny_model.run_with_hooks(batch, fwd_hooks=[good, ("blocks.0.hook_resid_pots", _identity)])
    assert tiny_model.count_hooks() == 0


def test_hook_result_changes_output_and_is_gone_after(tiny_model, batch):
    clean = tiny_model.forward(batch)
    zeroed = tiny_model.run_with_hooks(
        batch, fwd_hooks=[(tiny_model.layer_hook("resid_post", 1), lambda x, hook: torch.zeros_like(x))]
    )
    assert not torch.allclose(clean, zeroed)
    assert torch.equal(tiny_model.forward(batch), clean)
