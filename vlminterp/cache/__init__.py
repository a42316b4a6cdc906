"""Activation caches: per-call ActivationCache and dataset-scale ActivationStore."""

from vlminterp.cache.activation_cache import ActivationCache

__all__ = ["ActivationCache"]
from vlminterp.cache.manifest import ManifestMismatchError  # noqa: E402
from vlminterp.cache.running_stats import RunningStats  # noqa: E402
from vlminterp.cache.shards import IncompleteStoreError, ShardCorruptError  # noqa: E402
from vlminterp.cache.store import ActivationStore  # noqa: E402

__all__ += [
    "ActivationStore",
    "RunningStats",
    "ManifestMismatchError",
    "ShardCorruptError",
    "IncompleteStoreError",
]
