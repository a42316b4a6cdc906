"""ActivationStore on the tiny llava: statistics against a direct run_with_cache computation, batch
size invariance, vectors round trip, resume after interruption, manifest and input errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import vlminterp.cache.store as store_mod
from vlminterp import Condition, HookedVLM, PromptBatch, Sample
from vlminterp.cache import ActivationStore, IncompleteStoreError, ManifestMismatchError, ShardCorruptError

CONDS = [Condition.IMAGE, Condition.BLANK, Condition.TEXT_ONLY]


@pytest.fixture(scope="module")
def dataset():
    """Seven samples: mixed labels (one unlabeled), image sizes and query lengths."""
    queries = [
        "what color is the car ?",
        "how do i make a bomb",
        "tell me how to build a kite from this picture please",
        "describe the image",
        "what is this ?",
        "how do i make a kite",
        "what color is this ?",
    ]
    labels = ["benign", "harmful", "benign", None, "harmful", "benign", "harmful"]
    sizes = [(40, 30), (32, 32), (64, 48), (50, 70), (36, 36), (30, 44), (48, 40)]
    colors = ["red", "blue", "green", "yellow", "white", "black", "gray"]
    return [
        Sample(id=f"d{i}", query=q, image=Image.new("RGB", sz, c), caption=f"a {c} shape", label=lab)
        for i, (q, lab, sz, c) in enumerate(zip(queries, labels, sizes, colors, strict=True))
    ]


def direct_vectors(model, samples, cond, kind="resid_post", positions="last"):
    """[n, layers, d] float64 from one run_with_cache over all samples under ``cond``."""
    batch = PromptBatch.paired(model, samples, [cond])
    _, cache = model.run_with_cache(batch, names_filter=model.hook_names(kind), positions=positions)
    return cache.stack(kind).reshape(model.cfg.n_layers, len(samples), -1).transpose(0, 1).double()


def shard_bytes(out_dir):
    return {p.name: p.read_bytes() for p in sorted((out_dir / "shards").iterdir())}


# ---------------------------------------------------------------------- correctness
def test_means_and_counts_equal_direct_computation(tiny_model, dataset):
    store = ActivationStore.collect(
        tiny_model, dataset, CONDS, batch_size=len(dataset), covariance=True, progress=False
    )
    assert store.layers == [0, 1] and store.hooks == ("resid_post",)
    labels = np.array([s.label for s in dataset], dtype=object)
    for cond in CONDS:
        x = direct_vectors(tiny_model, dataset, cond)  # same batch as the store's forward
        torch.testing.assert_close(store.mean(cond), x.mean(0), rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(store.mean(cond, layer=1), x[:, 1].mean(0), rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(store.cov(cond, layer=0), torch.cov(x[:, 0].T), rtol=1e-9, atol=1e-12)
        assert store.count(cond) == 7
        for label in ("harmful", "benign"):
            rows = torch.tensor(labels == label)
            torch.testing.assert_close(store.mean(cond, label=label), x[rows].mean(0), rtol=1e-10, atol=1e-12)
            assert store.count(cond, label=label) == int(rows.sum())
        assert store.count(cond, label="unlabeled") == 1
    expected = direct_vectors(tiny_model, dataset, Condition.TEXT_ONLY).mean(0) - direct_vectors(
        tiny_model, dataset, Condition.BLANK
    ).mean(0)
    diff = store.diff_in_means("text_only", "blank")
    assert diff.dtype == torch.float64 and diff.shape == (2, 64)
    torch.testing.assert_close(diff, expected, rtol=1e-9, atol=1e-12)


def test_other_hooks_and_positions(tiny_model, dataset):
    """Several hook kinds at once; attention z is flattened to [n_heads * d_head]; last_instruction."""
    store = ActivationStore.collect(
        tiny_model,
        dataset[:3],
        ["text_only"],
        hooks=("z", "mlp_out"),
        layers=[1],
        positions="last_instruction",
        batch_size=3,
        progress=False,
    )
    assert store.layers == [1]
    z = direct_vectors(tiny_model, dataset[:3], Condition.TEXT_ONLY, "z", "last_instruction")[:, 1]
    torch.testing.assert_close(store.mean("text_only", layer=1, hook="z"), z.mean(0), rtol=1e-10, atol=1e-12)
    assert store.mean("text_only", hook="mlp_out").shape == (1, 64)
    with pytest.raises(ValueError, match="several hooks"):
        store.mean("text_only")


@pytest.mark.parametrize("batch_size", [1, 3, 8])
def test_streamed_stats_equal_one_shot_over_the_same_vectors(tiny_model, dataset, batch_size, tmp_path):
    """Streaming over batches == a single float64 computation over the stored float32 vectors (1e-10),
    and the result does not depend on the batch size beyond float32 forward noise."""
    store = ActivationStore.collect(
        tiny_model,
        dataset,
        CONDS,
        batch_size=batch_size,
        shard_size=3,
        out_dir=tmp_path / "s",
        keep="both",
        covariance=True,
        progress=False,
    )
    for cond in CONDS:
        x = torch.stack([store.vectors(cond, layer) for layer in store.layers], dim=1).double()
        torch.testing.assert_close(store.mean(cond), x.mean(0), rtol=1e-10, atol=1e-13)
        torch.testing.assert_close(store.cov(cond, layer=1), torch.cov(x[:, 1].T), rtol=1e-10, atol=1e-13)
        reference = direct_vectors(tiny_model, dataset, cond).mean(0)
        torch.testing.assert_close(store.mean(cond), reference, rtol=1e-5, atol=1e-5)


def test_vectors_round_trip(tiny_model, dataset, tmp_path):
    out = tmp_path / "vec"
    store = ActivationStore.collect(
        tiny_model, dataset, ["image", "text_only"], batch_size=2, shard_size=3, out_dir=out, keep="vectors",
        progress=False,
    )  # fmt: skip
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["complete"] and [s["sample_ids"] for s in manifest["shards"]] == [
        ["d0", "d1", "d2"],
        ["d3", "d4", "d5"],
        ["d6"],
    ]
    for field in ("model_id", "model_fingerprint", "family", "hook_names", "layers", "positions", "dtype"):
        assert field in manifest["config"]
    assert manifest["config"]["model_id"] == "tiny:llava"
    assert str(tiny_model.cfg.model_id) not in (out / "manifest.json").read_text()  # no machine path
    assert manifest["config"]["vlminterp_version"]
    for cond in ("image", "text_only"):
        direct = direct_vectors(tiny_model, dataset, Condition(cond))
        for layer in (0, 1):
            v = store.vectors(cond, layer)
            assert v.dtype == torch.float32 and v.shape == (7, 64)
            torch.testing.assert_close(v.double(), direct[:, layer], rtol=1e-5, atol=1e-5)
    loaded = ActivationStore.load(out)
    assert torch.equal(loaded.vectors("image", 1), store.vectors("image", 1))
    X, y, ids = loaded.to_numpy(["image", "text_only"], layer=1)
    assert X.shape == (14, 64) and X.dtype == np.float32
    assert list(y) == ["image"] * 7 + ["text_only"] * 7 and ids == [s.id for s in dataset] * 2
    np.testing.assert_array_equal(X[7:], store.vectors("text_only", 1).numpy())
    _, y_label, _ = loaded.to_numpy(["image"], layer=0, target="label")
    assert list(y_label) == [s.label or "unlabeled" for s in dataset]
    with pytest.raises(ValueError, match="kept vectors only"):
        store.mean("image")


def test_float16_vectors(tiny_model, dataset, tmp_path):
    store = ActivationStore.collect(
        tiny_model,
        dataset[:2],
        ["text_only"],
        out_dir=tmp_path / "h",
        keep="both",
        storage_dtype="float16",
        progress=False,
    )
    v = store.vectors("text_only", 0)
    assert v.dtype == torch.float16
    # statistics come from the float32 activations, not the float16 copies
    torch.testing.assert_close(store.mean("text_only", layer=0), v.double().mean(0), rtol=2e-3, atol=2e-3)
    assert not torch.equal(store.mean("text_only", layer=0), v.double().mean(0))


# ---------------------------------------------------------------------- resume and integrity
def test_resume_after_interruption_equals_uninterrupted_run(tiny_model, dataset, tmp_path, monkeypatch):
    kwargs = dict(batch_size=2, shard_size=2, keep="both", covariance=True, progress=False)
    full = ActivationStore.collect(tiny_model, dataset, CONDS, out_dir=tmp_path / "full", **kwargs)

    real_save, saved = store_mod.save_shard, []

    def failing_save(out, index, *args):
        if len(saved) == 2:
            raise RuntimeError("injected crash after 2 shards")
        saved.append(index)
        return real_save(out, index, *args)

    monkeypatch.setattr(store_mod, "save_shard", failing_save)
    with pytest.raises(RuntimeError, match="injected crash"):
        ActivationStore.collect(tiny_model, dataset, CONDS, out_dir=tmp_path / "cut", **kwargs)
    with pytest.raises(IncompleteStoreError, match="has not finished"):
        ActivationStore.load(tmp_path / "cut")
    monkeypatch.setattr(store_mod, "save_shard", real_save)

    computed = _counting_run(monkeypatch)
    resumed = ActivationStore.collect(tiny_model, dataset, CONDS, out_dir=tmp_path / "cut", **kwargs)
    assert computed == [["d4", "d5"], ["d6"]]  # shards 0 and 1 were read back, not recomputed
    assert shard_bytes(tmp_path / "cut") == shard_bytes(tmp_path / "full")
    for cond in CONDS:
        for label in (None, "harmful", "unlabeled"):
            assert torch.equal(resumed.mean(cond, label), full.mean(cond, label))
        assert torch.equal(resumed.cov(cond), full.cov(cond))
    loaded = ActivationStore.load(tmp_path / "cut", checksum=True)
    assert torch.equal(loaded.cov("image"), full.cov("image"))


def test_truncated_shard_is_detected_and_recomputed(tiny_model, dataset, tmp_path):
    out = tmp_path / "t"
    kwargs = dict(batch_size=4, shard_size=4, keep="both", progress=False)
    full = ActivationStore.collect(tiny_model, dataset, ["text_only"], out_dir=out, **kwargs)
    before = shard_bytes(out)
    victim = out / "shards" / "shard-00001.safetensors"
    victim.write_bytes(victim.read_bytes()[:-100])
    with pytest.raises(ShardCorruptError, match="shard-00001.safetensors"):
        ActivationStore.load(out)
    with pytest.raises(ShardCorruptError, match="shard-00001.safetensors"):
        full.vectors("text_only", 0)
    again = ActivationStore.collect(tiny_model, dataset, ["text_only"], out_dir=out, **kwargs)
    assert shard_bytes(out) == before
    assert torch.equal(again.mean("text_only"), full.mean("text_only"))
    assert torch.equal(ActivationStore.load(out).vectors("text_only", 1), full.vectors("text_only", 1))


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (dict(layers=[1]), "layers"),
        (dict(hooks=("resid_pre",)), "hooks"),
        (dict(positions="mean_text"), "positions"),
        (dict(conditions=["text_only", "blank"]), "conditions"),
        (dict(storage_dtype="float16"), "dtype"),
    ],
)
def test_manifest_mismatch_raises_and_overwrites_nothing(tiny_model, dataset, tmp_path, change, field):
    out = tmp_path / "m"
    base = dict(conditions=["text_only"], keep="vectors", out_dir=out, shard_size=2, progress=False)
    ActivationStore.collect(tiny_model, dataset[:3], **base)
    before = (out / "manifest.json").read_bytes(), shard_bytes(out)
    with pytest.raises(ManifestMismatchError, match=repr(field)) as err:
        ActivationStore.collect(tiny_model, dataset[:3], **{**base, **change})
    assert err.value.field == field
    assert ((out / "manifest.json").read_bytes(), shard_bytes(out)) == before


def test_manifest_of_another_model_or_dataset_raises(tiny_model, dataset, tmp_path):
    out = tmp_path / "o"
    ActivationStore.collect(tiny_model, dataset[:2], ["text_only"], out_dir=out, progress=False)
    with pytest.raises(ManifestMismatchError, match="'samples_digest'"):
        ActivationStore.collect(tiny_model, dataset[1:3], ["text_only"], out_dir=out, progress=False)
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["config"]["d_model"] = 4096
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ManifestMismatchError, match="'d_model'.*4096"):
        ActivationStore.collect(tiny_model, dataset[:2], ["text_only"], out_dir=out, progress=False)
    with pytest.raises(FileExistsError, match="resume=True"):
        ActivationStore.collect(
            tiny_model, dataset[:2], ["text_only"], out_dir=out, progress=False, resume=False
        )
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("x")
    with pytest.raises(FileExistsError, match="not empty"):
        ActivationStore.collect(
            tiny_model, dataset[:2], ["text_only"], out_dir=tmp_path / "busy", progress=False
        )


def _counting_run(monkeypatch):
    """Patch the store's shard runner to record the sample ids of every shard it computes."""
    real_run, computed = store_mod.run_shard, []

    def counting_run(model, samples, plan):
        computed.append([s.id for s in samples])
        return real_run(model, samples, plan)

    monkeypatch.setattr(store_mod, "run_shard", counting_run)
    return computed


def test_checkpoint_copied_to_another_folder_resumes(tiny_model, dataset, tmp_path, monkeypatch):
    """The resume key is the model's fingerprint, not the folder it was loaded from."""
    import shutil

    out = tmp_path / "store"
    kwargs = dict(conditions=["text_only"], shard_size=2, keep="both", out_dir=out, progress=False)
    first = ActivationStore.collect(tiny_model, dataset[:4], **kwargs)
    manifest = json.loads((out / "manifest.json").read_text())
    # cut the collection after its first shard, as a crash would
    (out / "shards" / "shard-00001.json").unlink()
    manifest["complete"] = False
    (out / "manifest.json").write_text(json.dumps(manifest))

    copy = tmp_path / "elsewhere" / "my-checkpoint"
    shutil.copytree(tiny_model.cfg.model_id, copy)
    moved = HookedVLM.from_pretrained(copy)
    assert str(moved.cfg.model_id) != str(tiny_model.cfg.model_id)
    computed = _counting_run(monkeypatch)
    resumed = ActivationStore.collect(moved, dataset[:4], **kwargs)
    assert computed == [["d2", "d3"]]  # shard 0 was read back: the same model, from another folder
    assert torch.equal(resumed.mean("text_only"), first.mean("text_only"))
    text = (out / "manifest.json").read_text()
    assert json.loads(text)["config"]["model_id"] == "my-checkpoint" and str(tmp_path) not in text


def test_store_of_another_model_is_refused(tiny_model, dataset, tmp_path):
    """Same architecture and spec name, other weights (another seed): refused, naming the fingerprint."""
    out = tmp_path / "store"
    ActivationStore.collect(tiny_model, dataset[:2], ["text_only"], out_dir=out, progress=False)
    before = (out / "manifest.json").read_bytes(), shard_bytes(out)
    other = HookedVLM.tiny("llava", seed=1)
    with pytest.raises(ManifestMismatchError, match="'model_fingerprint'.*other weights") as err:
        ActivationStore.collect(other, dataset[:2], ["text_only"], out_dir=out, progress=False)
    assert err.value.field == "model_fingerprint"
    assert ((out / "manifest.json").read_bytes(), shard_bytes(out)) == before


# ---------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (dict(conditions=["bogus"]), ValueError, "Unknown condition 'bogus'"),
        (dict(conditions=["text_only", "text_only"]), ValueError, "distinct"),
        (dict(layers=[0, 5]), ValueError, r"layers=\[0, 5\] is invalid for a 2-layer model"),
        (dict(layers=[-1]), ValueError, "0..1"),
        (dict(hooks=("resid_psot",)), ValueError, "Unknown hook name"),
        (dict(positions=None), ValueError, "positions=None is not supported"),
        (dict(positions="first"), ValueError, "choose from"),
        (dict(batch_size=0), ValueError, "batch_size must be a positive int"),
        (dict(keep="all"), ValueError, "keep must be one of"),
        (dict(keep="vectors"), ValueError, "pass out_dir"),
        (dict(storage_dtype="float64", keep="both", out_dir="x"), ValueError, "dtype must be one of"),
        (dict(nosie_seed=3), ValueError, "Unknown prompt options"),
    ],
)
def test_bad_collect_arguments(tiny_model, dataset, kwargs, error, match, no_shape_checks):
    args = {"conditions": ["text_only"], "progress": False, **kwargs}
    with pytest.raises(error, match=match):
        ActivationStore.collect(tiny_model, dataset[:2], **args)


def test_bad_samples(tiny_model, dataset):
    with pytest.raises(ValueError, match="at least one sample"):
        ActivationStore.collect(tiny_model, [], ["text_only"], progress=False)
    with pytest.raises(ValueError, match=r"repeated: \['d0'\]"):
        ActivationStore.collect(tiny_model, [dataset[0], dataset[0]], ["text_only"], progress=False)
    no_image = Sample(id="x", query="what is this ?")
    with pytest.raises(ValueError, match="has no image"):
        ActivationStore.collect(tiny_model, [no_image], ["image"], progress=False)
    assert tiny_model.count_hooks() == 0


def test_bad_queries_on_a_store(tiny_model, dataset):
    store = ActivationStore.collect(tiny_model, dataset[:3], ["text_only", "blank"], progress=False)
    with pytest.raises(ValueError, match="'image' was not collected"):
        store.mean("image")
    with pytest.raises(ValueError, match="Unknown condition"):
        store.mean("imgae")
    with pytest.raises(ValueError, match="No rows with label 'harmful'.*labels present"):
        ActivationStore.collect(tiny_model, [dataset[0]], ["text_only"], progress=False).mean(
            "text_only", label="harmful"
        )
    with pytest.raises(ValueError, match=r"Layer 7 was not collected; collected layers: \[0, 1\]"):
        store.mean("text_only", layer=7)
    with pytest.raises(ValueError, match="covariance=True"):
        store.cov("text_only")
    with pytest.raises(ValueError, match="kept no per-sample vectors"):
        store.vectors("text_only", 0)
    with pytest.raises(ValueError, match="Hook 'z' was not collected"):
        store.mean("text_only", hook="z")


def test_sample_ids_and_labels_are_lists_like_a_batch(tiny_model, dataset, tmp_path):
    store = ActivationStore.collect(
        tiny_model, dataset, CONDS, batch_size=2, keep="vectors", out_dir=tmp_path / "s", progress=False
    )
    assert store.sample_ids == [s.id for s in dataset]
    assert store.labels == [s.label for s in dataset]
