"""RunningStats: Chan's merge equals a one-shot float64 mean / covariance for any split of the rows."""

from __future__ import annotations

import pytest
import torch

from vlminterp.cache.running_stats import RunningStats


def one_shot(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Direct float64 mean and per-group unbiased covariance of rows x [n, groups, d]."""
    x = x.double()
    mean = x.mean(0)
    centred = x - mean
    cov = torch.einsum("ngi,ngj->gij", centred, centred) / (x.shape[0] - 1)
    return mean, cov


def random_split(n: int, gen: torch.Generator) -> list[int]:
    """Random cut points 0 < c1 < ... < n (chunks of any size, possibly 1)."""
    k = int(torch.randint(1, n, (1,), generator=gen))
    cuts = sorted(set(torch.randint(1, n, (k,), generator=gen).tolist()))
    return [0, *cuts, n]


@pytest.mark.parametrize("seed", range(6))
def test_streaming_updates_equal_one_shot_for_random_splits(seed):
    gen = torch.Generator().manual_seed(seed)
    # offset far from 0 so a naive sum-of-squares formula would lose digits
    x = torch.randn(53, 3, 7, generator=gen, dtype=torch.float64) * 2.5 + 1e3
    stats = RunningStats((3, 7), covariance=True)
    cuts = random_split(53, gen)
    for a, b in zip(cuts[:-1], cuts[1:], strict=True):
        stats.update(x[a:b])
    mean, cov = one_shot(x)
    assert stats.count == 53
    torch.testing.assert_close(stats.mean, mean, rtol=1e-12, atol=0)
    torch.testing.assert_close(stats.cov(), cov, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(stats.cov()[1], torch.cov(x[:, 1].T), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("seed", range(4))
def test_tree_of_merges_equals_one_shot(seed):
    """Partials built separately (as shards / processes) and merged in a random tree."""
    gen = torch.Generator().manual_seed(100 + seed)
    x = torch.randn(40, 2, 5, generator=gen, dtype=torch.float64)
    cuts = random_split(40, gen)
    parts = [
        RunningStats((2, 5), covariance=True).update(x[a:b]) for a, b in zip(cuts[:-1], cuts[1:], strict=True)
    ]
    while len(parts) > 1:
        i = int(torch.randint(0, len(parts) - 1, (1,), generator=gen))
        parts[i : i + 2] = [parts[i].merge(parts[i + 1])]
    mean, cov = one_shot(x)
    torch.testing.assert_close(parts[0].mean, mean, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(parts[0].cov(), cov, rtol=1e-10, atol=1e-13)


def test_float32_input_is_accumulated_in_float64():
    x = torch.randn(9, 1, 4, dtype=torch.float32)
    stats = RunningStats((1, 4), covariance=True).update(x[:5]).update(x[5:])
    assert stats.mean.dtype == torch.float64 and stats.cov().dtype == torch.float64
    torch.testing.assert_close(stats.mean, x.double().mean(0), rtol=1e-12, atol=1e-14)


def test_merging_with_empty_and_into_empty():
    x = torch.randn(6, 2, 3, dtype=torch.float64)
    full = RunningStats((2, 3), covariance=True).update(x)
    empty = RunningStats((2, 3), covariance=True)
    assert torch.equal(RunningStats((2, 3), covariance=True).merge(full).mean, full.mean)
    before = full.mean
    full.merge(empty).update(x[:0])
    assert full.count == 6 and torch.equal(full.mean, before)


def test_merge_into_empty_copies_and_does_not_alias():
    x = torch.randn(4, 1, 2, dtype=torch.float64)
    source = RunningStats((1, 2)).update(x)
    target = RunningStats((1, 2)).merge(source)
    target.update(x + 10)
    torch.testing.assert_close(source.mean, x.mean(0))


def test_state_round_trip_is_bit_exact():
    x = torch.randn(11, 2, 3, dtype=torch.float64)
    stats = RunningStats((2, 3), covariance=True).update(x[:4]).update(x[4:])
    back = RunningStats.from_state(stats.to_state())
    assert back.count == 11 and back.covariance
    assert torch.equal(back.mean, stats.mean) and torch.equal(back.scatter, stats.scatter)
    means_only = RunningStats.from_state(RunningStats((2, 3)).update(x).to_state())
    assert not means_only.covariance


def test_bad_inputs_raise_specific_errors():
    stats = RunningStats((2, 3))
    with pytest.raises(ValueError, match="undefined: no rows"):
        _ = stats.mean
    with pytest.raises(ValueError, match=r"expects rows of shape \[2, 3\]"):
        stats.update(torch.zeros(4, 3))
    with pytest.raises(ValueError, match="covariance=True"):
        RunningStats((2, 3)).update(torch.zeros(2, 2, 3)).cov()
    with pytest.raises(ValueError, match="shapes"):
        RunningStats((2, 3)).merge(RunningStats((2, 4)))
    with pytest.raises(ValueError, match="same setting"):
        RunningStats((2, 3)).merge(RunningStats((2, 3), covariance=True))
    with pytest.raises(ValueError, match="needs more than 1 rows"):
        RunningStats((1, 2), covariance=True).update(torch.zeros(1, 1, 2)).cov()
    with pytest.raises(ValueError, match="lacks"):
        RunningStats.from_state({"mean": torch.zeros(2)})
    with pytest.raises(ValueError, match="positive sizes"):
        RunningStats((0,))


def test_all_reduce_over_simulated_processes_equals_one_shot(monkeypatch):
    """RunningStats.all_reduce on 3 'ranks' (threads with a summing all_reduce), one of them empty."""
    import threading

    import torch.distributed as dist

    world = 3
    barrier = threading.Barrier(world)
    slots: list[torch.Tensor | None] = [None] * world
    rank_of = {}

    def fake_all_reduce(tensor, group=None):
        slots[rank_of[threading.get_ident()]] = tensor.clone()
        barrier.wait()
        total = sum(slots[1:], slots[0].clone())
        barrier.wait()
        tensor.copy_(total)

    monkeypatch.setattr(dist, "all_reduce", fake_all_reduce)
    x = torch.randn(30, 2, 4, dtype=torch.float64) + 5.0
    parts = [x[:17], x[17:], x[:0]]
    results: list[RunningStats] = [RunningStats((2, 4), covariance=True).update(p) for p in parts]

    def run(rank):
        rank_of[threading.get_ident()] = rank
        results[rank].all_reduce()

    threads = [threading.Thread(target=run, args=(r,)) for r in range(world)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    mean, cov = one_shot(x)
    for stats in results:
        assert stats.count == 30
        torch.testing.assert_close(stats.mean, mean, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(stats.cov(), cov, rtol=1e-10, atol=1e-13)
