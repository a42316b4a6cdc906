"""Study sources: labels and ids of a harmful and a benign source, caption provenance, option errors."""

from __future__ import annotations

import pytest

from tests.conftest import SHARED_DATA
from vlminterp import data
from vlminterp.prompts import Sample
from vlminterp.studies.collect import CollectConfig
from vlminterp.studies.sources import Sources, caption_source, class_counts, one_class_note


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


@pytest.mark.skipif(not (SHARED_DATA / "figstep").is_dir(), reason="no shared benchmark files")
@pytest.mark.filterwarnings("ignore:figstep. skipped")
def test_first_per_label_with_skip_keeps_samples_whose_image_exists():
    # shared/data has 3 of FigStep's 500 images: 1/1, 2/1 and 10/1.
    root = SHARED_DATA / "figstep"
    assert [s.id for s in data.load("figstep", root, on_missing="skip", first=2)] == ["1/1", "2/1"]
    assert [s.id for s in data.load("figstep", root, on_missing="keep", first=2)] == ["1/1", "1/2"]
