"""Dataset and judge specs: parsed and checked without loading; the per-label limit against a hand count."""

from __future__ import annotations

import pytest

from vlminterp.organism.judge import is_refusal
from vlminterp.organism.tasks import organism_samples
from vlminterp.specs import DEFAULT_JUDGES_DIR, DatasetSpec, JudgeSpec


def test_organism_limit_keeps_the_first_of_each_label_in_order():
    want = (
        organism_samples("val", "harmful", n_images=1)[:3] + organism_samples("val", "benign", n_images=1)[:3]
    )
    got = DatasetSpec.parse("organism:val", limit=3).load()
    assert [s.id for s in got] == [s.id for s in want]
    every = DatasetSpec.parse("organism").load()
    assert len(every) == sum(len(organism_samples("test", k, n_images=1)) for k in ("harmful", "benign"))
    only = DatasetSpec.parse("organism").load({"harmful": 2})
    assert [s.id for s in only] == [s.id for s in organism_samples("test", "harmful", n_images=1)[:2]]


def test_synthetic_sets_follow_the_limit():
    assert [s.label for s in DatasetSpec.parse("tiny", limit=2).load()] == ["benign", "harmful"] * 2
    demo = DatasetSpec.parse("demo", limit=3).load()
    assert [s.label for s in demo] == ["harmful"] * 3 + ["benign"] * 3


@pytest.mark.parametrize(
    ("text", "kwargs", "match"),
    [
        ("organism:dev", {}, "the organism has splits"),
        ("nosuchset", {}, "unknown dataset 'nosuchset'"),
        ("figstep", {}, "pass --root"),
        ("figstep", {"root": "/no/such/folder"}, "is not a folder"),
        ("tiny:train", {}, "has no splits"),
        ("organism", {"limit": 0}, "positive integer"),
        ("organism", {"on_missing": "ignore"}, "on_missing must be one of"),
    ],
)
def test_bad_dataset_specs_name_the_option(text, kwargs, match):
    with pytest.raises(ValueError, match=match) as e:
        DatasetSpec.parse(text, option="--eval", **kwargs)
    assert str(e.value).startswith("--eval")


def test_benchmark_spec_keeps_root_and_split(tmp_path):
    spec = DatasetSpec.parse("mm-safetybench:01", root=tmp_path, limit=5)
    assert (spec.name, spec.split, spec.root, spec.limit, str(spec)) == (
        "mm-safetybench",
        "01",
        str(tmp_path),
        5,
        "mm-safetybench:01",
    )


def test_judge_specs(tmp_path):
    assert JudgeSpec.parse("none").build() is None
    organism = JudgeSpec.parse("organism").build()
    texts = ["sorry , i can not help with that .", "sure . a red circle ."]
    assert [v.refused for v in organism.judge(None, texts)] == [is_refusal(t) for t in texts] == [True, False]
    keyword = JudgeSpec.parse("keyword:gcg", judges_dir=tmp_path)
    assert (keyword.name, keyword.judges_dir) == ("keyword:gcg", str(tmp_path))
    if DEFAULT_JUDGES_DIR.is_dir():  # a source checkout beside ../shared: the published keyword lists
        assert JudgeSpec.parse("keyword:gcg").judges_dir == str(DEFAULT_JUDGES_DIR)
    else:
        with pytest.raises(ValueError, match="is not a folder"):
            JudgeSpec.parse("keyword:gcg")
    with pytest.raises(ValueError, match="is not a folder"):
        JudgeSpec.parse("keyword:gcg", judges_dir=tmp_path / "missing")
    with pytest.raises(ValueError, match="--judge 'keyword:nope'"):
        JudgeSpec.parse("keyword:nope")
