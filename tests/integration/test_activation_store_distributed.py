"""ActivationStore under torch.distributed: two CPU processes (gloo) give the single-process result.

Marked slow: each spawned process imports transformers and TransformerLens (~40 s in all on the
shared 2-core machine). The all-reduce arithmetic itself is also unit-tested without processes in
``tests/unit/test_running_stats.py``.
"""

from __future__ import annotations

import pytest
import torch
import torch.multiprocessing as mp
from PIL import Image

from vlminterp import Sample
from vlminterp.cache import ActivationStore

CONDS = ["image", "blank", "text_only"]
KWARGS = dict(batch_size=2, shard_size=2, covariance=True, progress=False)


def make_samples() -> list[Sample]:
    """Seven samples; the one unlabeled sample lands in shard 1, so only rank 1 sees that label."""
    queries = ["what color is the car ?", "how do i make a bomb", "describe the image", "what is this ?"]
    labels = ["benign", "harmful", "benign", None, "harmful", "benign", "harmful"]
    return [
        Sample(
            id=f"p{i}",
            query=queries[i % 4],
            image=Image.new("RGB", (30 + 4 * i, 40), (30 * i, 0, 0)),
            label=lab,
        )
        for i, lab in enumerate(labels)
    ]


def summarise(store: ActivationStore) -> dict[str, torch.Tensor]:
    out = {}
    for cond in CONDS:
        for label in (None, "harmful", "benign", "unlabeled"):
            out[f"mean/{cond}/{label}"] = store.mean(cond, label)
            out[f"count/{cond}/{label}"] = torch.tensor(store.count(cond, label))
        out[f"cov/{cond}"] = store.cov(cond)
    return out


def worker(rank: int, world: int, tmp: str) -> None:
    import torch.distributed as dist

    from vlminterp import HookedVLM

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{tmp}/rendezvous", rank=rank, world_size=world)
    try:
        model = HookedVLM.tiny("llava", seed=0)
        samples = make_samples()
        on_disk = ActivationStore.collect(model, samples, CONDS, out_dir=f"{tmp}/dist", keep="both", **KWARGS)
        in_memory = ActivationStore.collect(model, samples, CONDS, **KWARGS)
        torch.save({"disk": summarise(on_disk), "memory": summarise(in_memory)}, f"{tmp}/rank{rank}.pt")
        assert model.count_hooks() == 0
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_gloo_processes_equal_one_process(tiny_model, tmp_path):
    mp.spawn(worker, args=(2, str(tmp_path)), nprocs=2, join=True)
    torch.set_num_threads(1)  # the workers' kernels (restored by _restore_threads)
    single = ActivationStore.collect(
        tiny_model, make_samples(), CONDS, out_dir=tmp_path / "single", keep="both", **KWARGS
    )
    expected = summarise(single)
    for rank in (0, 1):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        for mode in ("disk", "memory"):
            assert got[mode].keys() == expected.keys()
            for key, value in expected.items():
                # all-reduce of (count, sum, scatter) vs one sequential Chan merge: float64 rounding only
                torch.testing.assert_close(got[mode][key], value, rtol=1e-10, atol=1e-12, msg=key)
    # every shard was written by its rank into the same directory, readable as one store
    merged = ActivationStore.load(tmp_path / "dist", checksum=True)
    assert merged.sample_ids == single.sample_ids
    for cond in CONDS:
        torch.testing.assert_close(merged.vectors(cond, 1), single.vectors(cond, 1), rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(merged.cov(cond), single.cov(cond), rtol=1e-10, atol=1e-12)


@pytest.fixture(autouse=True, scope="module")
def _restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)
