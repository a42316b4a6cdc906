"""A model's identity in files vlminterp writes: its spec name, and a fingerprint that ignores the folder.

Result files name a model by its spec (``organism``, ``tiny:llava``, a hub id; see
:func:`vlminterp.specs.model_name`), never by the machine path it was loaded from. What must match
for a stored result to be reused (an :class:`~vlminterp.cache.ActivationStore` to resume, a cached
ShiftDC caption) is :func:`model_fingerprint`: a sha256 over the HF config without its path fields
(``_name_or_path`` and the other ``_``-prefixed keys, the transformers version, the load dtype) and,
for every parameter in name order, its name, shape, dtype and the exact bytes of up to
:data:`SAMPLED_VALUES` values at evenly spaced flat indices (always the first and the last). So the
same checkpoint copied to another folder, or loaded on another device, has the same fingerprint;
another checkpoint, a retrained one, or weights edited in place (a dense change) has another.

Example:
    >>> from vlminterp import HookedVLM
    >>> a, b = HookedVLM.tiny("llava", seed=0), HookedVLM.tiny("llava", seed=1)
    >>> model_fingerprint(a) == model_fingerprint(a), model_fingerprint(a) == model_fingerprint(b)
    (True, False)
"""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from vlminterp.models.hooked_vlm import HookedVLM

__all__ = ["SAMPLED_VALUES", "model_fingerprint"]

#: Values of each parameter read into the fingerprint (evenly spaced, first and last included).
SAMPLED_VALUES = 4096
#: Config keys that depend on where or how the checkpoint was loaded, not on what it is.
_LOAD_KEYS = frozenset({"transformers_version", "torch_dtype", "dtype"})


def _portable_config(value: Any) -> Any:
    """The config dict without ``_``-prefixed keys (paths, commit hashes) and load settings, at any depth."""
    if isinstance(value, dict):
        return {
            k: _portable_config(v)
            for k, v in value.items()
            if not str(k).startswith("_") and k not in _LOAD_KEYS
        }
    if isinstance(value, (list, tuple)):
        return [_portable_config(v) for v in value]
    return value


def _sampled_bytes(param: torch.Tensor) -> bytes:
    """The exact bytes of up to :data:`SAMPLED_VALUES` evenly spaced values of ``param`` (none on meta)."""
    if param.device.type == "meta" or param.numel() == 0:
        return b""
    flat = param.detach().reshape(-1)
    n = flat.numel()
    index = torch.linspace(0, n - 1, steps=min(n, SAMPLED_VALUES), dtype=torch.float64).round().long()
    values = flat[index.to(flat.device)].cpu().contiguous()
    return values.view(torch.uint8).numpy().tobytes()


def model_fingerprint(model: HookedVLM) -> str:
    """Hex sha256 of ``model``'s config (without paths) and a sample of every parameter's exact values.

    Args:
        model: A :class:`~vlminterp.HookedVLM` (its ``hf_model`` is read, nothing is run).

    Returns:
        64 hex digits, the same wherever the checkpoint's folder is.

    Example:
        >>> from vlminterp import HookedVLM
        >>> len(model_fingerprint(HookedVLM.tiny("llava")))
        64
    """
    hf = model.hf_model
    h = hashlib.sha256()
    config = _portable_config(hf.config.to_dict())
    h.update(json.dumps(config, sort_keys=True, default=str).encode())
    for name, param in sorted(hf.named_parameters(), key=lambda item: item[0]):
        h.update(json.dumps([name, list(param.shape), str(param.dtype)]).encode())
        h.update(_sampled_bytes(param))
    return h.hexdigest()
