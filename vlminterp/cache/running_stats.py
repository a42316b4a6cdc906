"""RunningStats: streaming float64 count, mean and scatter matrix, merged exactly (Chan et al.).

A ``RunningStats`` summarises rows ``x[i]`` of feature shape ``[*groups, d]`` (e.g. ``[layers, d_model]``)
without storing them: the count ``n``, the mean ``[*groups, d]`` and, when asked for, the scatter
matrix ``M2 = sum_i (x_i - mean)(x_i - mean)^T`` per group ``[*groups, d, d]``. Two summaries of
disjoint row sets merge exactly with the pairwise update of Chan, Golub & LeVeque (1979)::

    n = n_a + n_b,  delta = mean_b - mean_a
    mean = mean_a + delta * n_b / n
    M2 = M2_a + M2_b + outer(delta, delta) * n_a * n_b / n

so batches, shards and processes can be summarised separately and combined in any grouping; the
result equals a one-shot float64 computation up to float64 rounding. Memory is ``O(groups * d)``
for means and ``O(groups * d^2)`` only with ``covariance=True``.

Example:
    >>> import torch
    >>> x = torch.randn(10, 2, 3, dtype=torch.float64)
    >>> a = RunningStats((2, 3), covariance=True).update(x[:4])
    >>> s = a.merge(RunningStats((2, 3), covariance=True).update(x[4:]))
    >>> s.count, torch.allclose(s.mean, x.mean(0)), torch.allclose(s.cov()[0], torch.cov(x[:, 0].T))
    (10, True, True)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from jaxtyping import Float
from torch import Tensor

__all__ = ["RunningStats"]


class RunningStats:
    """Streaming float64 count / mean / scatter of rows with feature shape ``[*groups, d]``.

    Args:
        shape: Feature shape of one row, ``[*groups, d]`` (covariances are per group, over ``d``).
        covariance: Also keep the scatter matrix (needed for :meth:`cov`).
    """

    def __init__(self, shape: Sequence[int], covariance: bool = False):
        self.shape = tuple(int(s) for s in shape)
        if not self.shape or any(s < 1 for s in self.shape):
            raise ValueError(
                f"RunningStats needs a non-empty feature shape of positive sizes, got {shape!r}."
            )
        self.covariance = bool(covariance)
        self.count = 0
        self._mean = torch.zeros(self.shape, dtype=torch.float64)
        d = self.shape[-1]
        self._scatter = torch.zeros((*self.shape[:-1], d, d), dtype=torch.float64) if covariance else None

    def __repr__(self) -> str:
        return f"RunningStats(shape={self.shape}, count={self.count}, covariance={self.covariance})"

    # ------------------------------------------------------------------ accumulation
    def update(self, x: Float[Tensor, "rows ..."]) -> RunningStats:
        """Add the rows of ``x`` (any float dtype; computed in float64). Returns ``self``."""
        if tuple(x.shape[1:]) != self.shape:
            raise ValueError(
                f"RunningStats.update expects rows of shape {list(self.shape)}, got a tensor of shape "
                f"{list(x.shape)} (rows must be on the first axis)."
            )
        if x.shape[0] == 0:
            return self
        x = x.detach().to("cpu", torch.float64)
        batch = RunningStats(self.shape, self.covariance)
        batch.count = int(x.shape[0])
        batch._mean = x.mean(0)
        if self.covariance:
            centred = x - batch._mean
            batch._scatter = torch.einsum("n...i,n...j->...ij", centred, centred)
        return self.merge(batch)

    def merge(self, other: RunningStats) -> RunningStats:
        """Fold the summary of a disjoint row set into this one (Chan's update). Returns ``self``."""
        if other.shape != self.shape:
            raise ValueError(
                f"Cannot merge RunningStats of shapes {list(self.shape)} and {list(other.shape)}."
            )
        if other.covariance != self.covariance:
            raise ValueError(
                f"Cannot merge RunningStats with covariance={self.covariance} and covariance={other.covariance}; "
                "collect both with the same setting."
            )
        if other.count == 0:
            return self
        if self.count == 0:
            self.count = other.count
            self._mean = other._mean.clone()
            self._scatter = None if other._scatter is None else other._scatter.clone()
            return self
        n_a, n_b = self.count, other.count
        n = n_a + n_b
        delta = other._mean - self._mean
        self._mean = self._mean + delta * (n_b / n)
        if self._scatter is not None and other._scatter is not None:
            outer = delta.unsqueeze(-1) * delta.unsqueeze(-2)
            self._scatter = self._scatter + other._scatter + outer * (n_a * n_b / n)
        self.count = n
        return self

    def all_reduce(self, group: object | None = None) -> RunningStats:
        """Combine this summary across every process of ``torch.distributed`` (in place). Returns ``self``.

        All-reduces ``(count, sum)``, then each process's scatter about the global mean
        ``M2_r + n_r * outer(mean_r - mean, mean_r - mean)``, all in float64. Every process must call
        it with the same shape; a process with no rows contributes zeros.
        """
        import torch.distributed as dist

        totals = torch.tensor([float(self.count)], dtype=torch.float64)
        sums = self._mean * self.count
        dist.all_reduce(totals, group=group)
        dist.all_reduce(sums, group=group)
        count = int(totals.item())
        if count == 0:
            return self
        mean = sums / count
        if self._scatter is not None:
            delta = self._mean - mean
            scatter = self._scatter + (delta.unsqueeze(-1) * delta.unsqueeze(-2)) * self.count
            dist.all_reduce(scatter, group=group)
            self._scatter = scatter
        self.count, self._mean = count, mean
        return self

    # ------------------------------------------------------------------ results
    def _require_rows(self, what: str) -> None:
        if self.count == 0:
            raise ValueError(f"RunningStats.{what} is undefined: no rows were added.")

    @property
    def mean(self) -> Float[Tensor, "*shape"]:
        """The float64 mean of every row added."""
        self._require_rows("mean")
        return self._mean.clone()

    @property
    def scatter(self) -> Float[Tensor, "*groups d d"]:
        """The float64 scatter matrix ``sum_i (x_i - mean)(x_i - mean)^T`` per group."""
        self._require_rows("scatter")
        if self._scatter is None:
            raise ValueError("This RunningStats keeps no scatter matrix; create it with covariance=True.")
        return self._scatter.clone()

    def cov(self, ddof: int = 1) -> Float[Tensor, "*groups d d"]:
        """The covariance per group: ``scatter / (count - ddof)`` (``ddof=1``: unbiased, as ``torch.cov``)."""
        scatter = self.scatter
        if self.count - ddof <= 0:
            raise ValueError(f"cov(ddof={ddof}) needs more than {ddof} rows; this summary has {self.count}.")
        return scatter / (self.count - ddof)

    # ------------------------------------------------------------------ persistence
    def to_state(self) -> dict[str, Tensor]:
        """Tensors that :meth:`from_state` turns back into an equal summary (safetensors-ready)."""
        state = {"count": torch.tensor([self.count], dtype=torch.int64), "mean": self._mean.clone()}
        if self._scatter is not None:
            state["scatter"] = self._scatter.clone()
        return state

    @classmethod
    def from_state(cls, state: dict[str, Tensor]) -> RunningStats:
        """The summary saved by :meth:`to_state` (bit-exact)."""
        missing = {"count", "mean"} - set(state)
        if missing:
            raise ValueError(f"RunningStats state lacks {sorted(missing)}; it has {sorted(state)}.")
        mean = state["mean"].to(torch.float64)
        stats = cls(mean.shape, covariance="scatter" in state)
        stats.count = int(state["count"].reshape(-1)[0])
        stats._mean = mean.clone()
        if "scatter" in state:
            stats._scatter = state["scatter"].to(torch.float64).clone()
        return stats
