"""Study sources: labels and ids of a harmful and a benign source, caption provenance, option errors."""

from __future__ import annotations

import dataclasses

import pytest

from tests.conftest import SHARED_DATA
from vlminterp import data
from vlminterp.prompts import Sample
from vlminterp.studies.collect import CollectConfig
from vlminterp.studies.representation_gap import RepresentationGapConfig
from vlminterp.studies.sources import SourceOptions, Sources, caption_source, class_counts, one_class_note

SOURCE_KEYS = "dataset harmful benign data_root harmful_root benign_root on_missing limit".split()
COLLECT_KEYS = "out model caption_tokens split conditions hooks layers positions batch_size shard_size keep"
COLLECT_KEYS += " covariance vector_dtype device device_map resume progress"
GAP_KEYS = "model conditions layers out caption_tokens batch_size n_splits seed"


def test_a_source_keeps_its_class_and_prefixes_ids():
    # The demo set has both labels: as a harmful source only its harmful samples are kept.
    samples = Sources.parse(None, harmful="demo", limit=3).load()
    assert [s.label for s in samples] == ["harmful"] * 3
    assert all(s.id.startswith("harmful:demo/") for s in samples)
    both = Sources.parse(None, harmful="demo", benign="demo", limit=2).load()
    assert class_counts(both) == {"harmful": 2, "benign": 2} and len({s.id for s in both}) == 4
    assert str(Sources.parse("organism:val")) == "organism:val"
    assert not Sources.parse(None).labelled and Sources.parse(None, benign="tiny").labelled


def test_one_class_note_and_caption_source():
    assert one_class_note({"harmful": 2, "benign": 1}) is None
    assert one_class_note({"harmful": 0, "benign": 0}).startswith("only unlabelled samples")
    given = Sample(id="a", query="q", caption="c")
    own = Sample(id="b", query="q", caption="d", meta={"caption_source": "self"})
    assert caption_source([given, own]) == "self+dataset"
    assert caption_source([given]) == "dataset" and caption_source([Sample(id="x", query="q")]) == "none"


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"harmful": "demo", "split": "test"}, "--split applies to --dataset"),
        ({"on_missing": "keep"}, "--on-missing 'keep'"),
        ({"caption_tokens": 0}, "--caption-tokens must be >= 1"),
        ({"benign": "figstep"}, "--benign 'figstep' is read from files: pass --benign-root or --data-root"),
    ],
)
def test_collect_config_refuses(kwargs, match):
    with pytest.raises(ValueError, match=match):
        CollectConfig(out="x", **kwargs)


def test_configs_inherit_the_source_options_flat():
    # The saved configs (read back on resume) keep one flat key per option.
    collect, gap = CollectConfig(out="x"), RepresentationGapConfig()
    assert [f.name for f in dataclasses.fields(SourceOptions)] == SOURCE_KEYS
    assert set(collect.to_dict()) == {*SOURCE_KEYS, *COLLECT_KEYS.split()}
    assert set(gap.to_dict()) == {*SOURCE_KEYS, *GAP_KEYS.split()}
    # Each config's default dataset; collect adds --split to --dataset (to tiny when it is not given).
    assert (str(collect.sources()), str(gap.sources())) == ("tiny", "demo")
    assert str(CollectConfig(out="x", dataset="organism", split="val").sources()) == "organism:val"
    with pytest.raises(ValueError, match="--dataset 'tiny:val': the synthetic set 'tiny' has no splits"):
        CollectConfig(out="x", split="val")
    with pytest.raises(ValueError, match="--harmful-root is given without --harmful"):
        RepresentationGapConfig(harmful_root="somewhere")


@pytest.mark.skipif(not (SHARED_DATA / "figstep").is_dir(), reason="no shared benchmark files")
@pytest.mark.filterwarnings("ignore:figstep. skipped")
def test_first_per_label_with_skip_keeps_samples_whose_image_exists():
    # shared/data has 3 of FigStep's 500 images: 1/1, 2/1 and 10/1.
    root = SHARED_DATA / "figstep"
    assert [s.id for s in data.load("figstep", root, on_missing="skip", first=2)] == ["1/1", "2/1"]
    assert [s.id for s in data.load("figstep", root, on_missing="keep", first=2)] == ["1/1", "1/2"]
