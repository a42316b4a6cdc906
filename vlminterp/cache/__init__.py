"""Activation caches: per-call ActivationCache and dataset-scale ActivationStore."""

from vlminterp.cache.activation_cache import ActivationCache

__all__ = ["ActivationCache"]
