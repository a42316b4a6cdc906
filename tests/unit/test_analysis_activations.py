"""ConditionActivations: validation, layer/label views, pairing, and the ActivationCache adapter."""

import numpy as np
import pytest
import torch

from vlminterp import Condition
from vlminterp.analysis import ConditionActivations
from vlminterp.cache import ActivationCache


def test_views_pick_layers_and_labels():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(4, 3, 5))
    acts = ConditionActivations(
        {Condition.IMAGE: x},
        labels={Condition.IMAGE: ["harmful", "benign", "harmful", None]},
        layers=(3, 5, 7),
    )
    assert acts.conditions == ("image",)
    assert acts.sample_ids["image"] == ("0", "1", "2", "3")
    np.testing.assert_array_equal(acts.get("image", layer=5), x[:, 1])
    np.testing.assert_array_equal(acts.get(Condition.IMAGE, label="harmful"), x[[0, 2]])
    assert acts.get("image").dtype == np.float64
    with pytest.raises(KeyError, match=r"Layer 4 was not collected; available layers: \[3, 5, 7\]"):
        acts.get("image", layer=4)
    with pytest.raises(KeyError, match="available: \\['image'\\]"):
        acts.get("caption")


def test_paired_aligns_rows_by_sample_id():
    a = np.arange(3 * 1 * 2, dtype=float).reshape(3, 1, 2)
    acts = ConditionActivations(
        {"image": a, "text_only": a[::-1] + 100},
        sample_ids={"image": ["x", "y", "z"], "text_only": ["z", "y", "x"]},
    )
    ids, xa, xb = acts.paired("image", "text_only")
    assert ids == ["x", "y", "z"]
    np.testing.assert_array_equal(xb - xa, np.full_like(xa, 100.0))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"x": {"a": np.zeros((2, 3, 4)), "b": np.zeros((2, 2, 4))}}, "layers, d_model"),
        ({"x": {"a": np.full((2, 1, 4), np.nan)}}, "NaN"),
        ({"x": {"a": np.zeros((2, 4))}}, r"\[n, layers, d_model\]"),
        ({"x": {"a": np.zeros((2, 1, 4))}, "sample_ids": {"a": ["s", "s"]}}, "duplicate sample ids"),
        ({"x": {"a": np.zeros((2, 1, 4))}, "labels": {"a": ["harmful"]}}, "1 entries for 2 rows"),
        ({"x": {"a": np.zeros((2, 1, 4))}, "labels": {"a": ["bad", None]}}, "labels \\['bad'\\]"),
        ({"x": {"a": np.zeros((2, 1, 4))}, "layers": (0, 1)}, "2 layer indices"),
        ({"x": {}}, "at least one condition"),
    ],
)
def test_bad_input_raises_naming_the_problem(kwargs, match, no_shape_checks):
    with pytest.raises(ValueError, match=match):
        ConditionActivations(**kwargs)


def _cache(values, conditions, ids, labels, layers=(0, 1)):
    data = {f"blocks.{layer}.hook_resid_post": values[i] for i, layer in enumerate(layers)}
    return ActivationCache(
        data, positions="last", meta={"conditions": conditions, "sample_ids": ids, "labels": labels}
    )


def test_from_cache_splits_conditions_and_concatenates_batches():
    t1, t2 = torch.randn(2, 4, 3), torch.randn(2, 2, 3)  # [layers, batch, d]
    c1 = _cache(
        t1, ["image", "image", "text_only", "text_only"], ["a", "b", "a", "b"], ["harmful", "benign"] * 2
    )
    c2 = _cache(t2, ["image", "text_only"], ["c", "c"], [None, None])
    acts = ConditionActivations.from_cache([c1, c2], model="m", dataset="d")
    assert acts.layers == (0, 1) and acts.sample_ids["image"] == ("a", "b", "c")
    assert acts.labels["text_only"] == ("harmful", "benign", None)
    np.testing.assert_allclose(acts.get("text_only", layer=1)[1], t1[1, 3].numpy())
    np.testing.assert_allclose(acts.get("image", layer=0)[2], t2[0, 0].numpy())
    assert acts.row(metric="x") == {"model": "m", "dataset": "d", "metric": "x"}


def test_from_cache_refuses_full_sequences_and_mismatched_layers():
    full = _cache(torch.randn(2, 1, 5, 3), ["image"], ["a"], [None])  # [layers, batch, pos, d]
    with pytest.raises(ValueError, match="positions='last'"):
        ConditionActivations.from_cache(full)
    c1 = _cache(torch.randn(2, 1, 3), ["image"], ["a"], [None])
    c2 = _cache(torch.randn(1, 1, 3), ["image"], ["b"], [None], layers=(1,))
    with pytest.raises(ValueError, match="different layers"):
        ConditionActivations.from_cache([c1, c2])
