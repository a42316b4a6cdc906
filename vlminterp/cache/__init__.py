"""Activation caches: per-call ActivationCache and dataset-scale ActivationStore."""

from typing import Any

__all__ = ["ActivationCache"]


def __getattr__(name: str) -> Any:
    """``ActivationCache`` on first use: it subclasses TransformerLens's cache, which the store does not need."""
    if name == "ActivationCache":
        from vlminterp.cache.activation_cache import ActivationCache

        return ActivationCache
    raise AttributeError(f"module 'vlminterp.cache' has no attribute {name!r}")


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
