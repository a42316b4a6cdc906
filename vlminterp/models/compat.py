"""Compatibility shims between the installed TransformerLens and transformers, scoped to one bridge.

transformers 5.24 hands the KV cache to attention modules as ``cache=`` (``past_key_values`` is a
deprecated alias until 5.40, with a ``FutureWarning``): :func:`kv_cache_keyword` names the keyword a
model's ``forward`` takes, which our runs pass the cache under. TransformerLens 4.3's
``AttentionBridge._update_kv_cache`` reads only ``past_key_values`` / ``layer_past``, so on 5.24 a
bridge-wrapped model never writes its cache: every decode step after the first attends only to
itself and generation silently loses the prompt.

:func:`fix_kv_cache_keyword` repairs one booted bridge: each of *its* attention components gets an
instance-level ``_update_kv_cache`` that also reads ``cache=``. Nothing global is patched, so a
user's other TransformerLens models keep the library's own behaviour. The fix applies only where
it is needed (transformers >= 5.24, or whenever ``VLMINTERP_KV_CACHE_FIX=1`` forces it) and is
logged once per process.

:func:`check_prefill_cache` is the loud guard for this whole class of bug: after the prompt pass of
``HookedVLM.generate`` the cache must hold every prompt position, or generation raises instead of
returning tokens computed without context. ``VLMINTERP_KV_CACHE_FIX=0`` disables both the fix and
the guard (TransformerLens' own behaviour); it exists to show that the reference tests and
``vlminterp doctor`` catch the bug on their own (they must fail then).

Example:
    >>> from vlminterp.models.compat import kv_cache_fix_needed
    >>> isinstance(kv_cache_fix_needed(), bool)
    True
"""

from __future__ import annotations

import inspect
import logging
import os
import types
from typing import Any

import torch
import transformers
from packaging.version import Version

__all__ = [
    "FIRST_CACHE_KEYWORD_RELEASE",
    "KVCacheError",
    "check_prefill_cache",
    "fix_kv_cache_keyword",
    "kv_cache_fix_needed",
    "kv_cache_keyword",
    "passed_kv_cache",
]

#: The first transformers release that passes the KV cache to attention modules as ``cache=``.
FIRST_CACHE_KEYWORD_RELEASE = Version("5.24.0")
_ENV = "VLMINTERP_KV_CACHE_FIX"
logger = logging.getLogger(__name__)
_logged = False


def kv_cache_fix_needed() -> bool:
    """Whether bridges booted now need :func:`fix_kv_cache_keyword` (env override ``VLMINTERP_KV_CACHE_FIX``)."""
    forced = os.environ.get(_ENV)
    if forced in ("0", "1"):
        return forced == "1"
    return Version(transformers.__version__).release >= FIRST_CACHE_KEYWORD_RELEASE.release


class KVCacheError(RuntimeError):
    """The model's KV cache did not record the prompt: cached generation would ignore the context."""


def check_prefill_cache(cache: Any, prompt_length: int) -> None:
    """Raise :class:`KVCacheError` unless ``cache`` holds all ``prompt_length`` prompt positions.

    Args:
        cache: The HF cache returned by the prompt pass (``use_cache=True``): a ``Cache`` object or
            a legacy tuple of ``(key, value)`` per layer (remote-code models).
        prompt_length: Positions fed in that pass.

    Example:
        >>> from transformers import DynamicCache
        >>> check_prefill_cache(DynamicCache(), 4)  # doctest: +IGNORE_EXCEPTION_DETAIL
        Traceback (most recent call last):
        KVCacheError: ...
    """
    if os.environ.get(_ENV) == "0":
        return
    if hasattr(cache, "get_seq_length"):
        length = cache.get_seq_length()
    elif isinstance(cache, (tuple, list)) and cache and isinstance(cache[0], (tuple, list)):
        length = cache[0][0].shape[-2]  # legacy (key, value) per layer, keys [batch, heads, pos, d_head]
    else:
        length = None
    if length != prompt_length:
        raise KVCacheError(
            f"After the prompt pass the KV cache holds {length} positions, not the prompt's {prompt_length}: "
            f"cached generation would ignore the prompt. transformers {transformers.__version__} and the "
            "installed TransformerLens disagree on how the cache is passed. Install the tested lock "
            "(README, Installs) and run `vlminterp doctor`."
        )


def passed_kv_cache(kwargs: dict[str, Any]) -> Any | None:
    """The KV cache among a call's keyword arguments: ``past_key_values=``, or 5.24's ``cache=``.

    Example:
        >>> passed_kv_cache({"cache": "c"}), passed_kv_cache({"past_key_values": "p", "cache": None})
        ('c', 'p')
    """
    past = kwargs.get("past_key_values")
    return past if past is not None else kwargs.get("cache")


def kv_cache_keyword(hf_model: torch.nn.Module) -> str:
    """The keyword ``hf_model.forward`` takes the KV cache under: ``"cache"`` or ``"past_key_values"``.

    transformers 5.24 renamed the argument to ``cache`` and keeps ``past_key_values`` as an alias
    that warns (``FutureWarning``) and goes away in 5.40; earlier releases and remote-code models
    take ``past_key_values``.

    Example:
        >>> from vlminterp import HookedVLM
        >>> kv_cache_keyword(HookedVLM.tiny("llava").hf_model) in ("cache", "past_key_values")
        True
    """
    return "cache" if "cache" in inspect.signature(hf_model.forward).parameters else "past_key_values"


def _update_kv_cache_any_keyword(
    self: Any, k: torch.Tensor, v: torch.Tensor, **kwargs: Any
) -> tuple[torch.Tensor, torch.Tensor]:
    """TransformerLens' KV-cache update, given the cache under ``cache=`` as well."""
    cache = passed_kv_cache(kwargs)
    if cache is not None:
        kwargs["past_key_values"] = cache
    return type(self)._update_kv_cache(self, k, v, **kwargs)


def fix_kv_cache_keyword(bridge: torch.nn.Module) -> int:
    """Let every attention component of ``bridge`` read the KV cache from ``cache=`` too.

    Args:
        bridge: A booted ``TransformerBridge``; only its own components are changed.

    Returns:
        How many attention components were fixed (0 when the installed versions need no fix).

    Example:
        >>> from vlminterp import HookedVLM
        >>> model = HookedVLM.tiny("llava")  # from_pretrained applies the fix when it is needed
        >>> fix_kv_cache_keyword(model.bridge) >= 0
        True
    """
    global _logged
    if not kv_cache_fix_needed():
        return 0
    from transformer_lens.model_bridge.generalized_components.attention import AttentionBridge

    fixed = 0
    for module in bridge.modules():
        if isinstance(module, AttentionBridge) and "_update_kv_cache" not in vars(module):
            module._update_kv_cache = types.MethodType(_update_kv_cache_any_keyword, module)
            fixed += 1
    if fixed and not _logged:
        _logged = True
        logger.warning(
            "transformers %s passes the KV cache as `cache=`, which TransformerLens reads only as "
            "`past_key_values`; vlminterp maps it on the attention components of the models it loads "
            "(set %s=0 to disable, which makes cached generation wrong).",
            transformers.__version__,
            _ENV,
        )
    return fixed
