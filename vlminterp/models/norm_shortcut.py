"""Normalisation bridges that skip their observation-only arithmetic when nothing observes it.

TransformerLens 4.3's ``NormalizationBridge`` (its native-autograd path, the one booted bridges
use) computes every norm twice: first in float32 to feed ``hook_scale`` and ``hook_normalized``,
then with the HF module, whose output it returns whenever those hooks leave their values as they
were. With no hook on either point the first computation is thrown away: about seven elementwise
passes over ``[batch, pos, d_model]`` for each of the ``2 * n_layers + 1`` decoder norms (and the
vision tower's) in every forward, a few percent of a CPU forward (``benchmarks/bench_forward.py``,
``bridge_forward_vs_hf``), paid by every forward, cache and collection.

:func:`skip_unobserved_norm_math` gives each normalisation bridge of *one* booted bridge an
instance-level ``_hf_autograd_forward_with_hooks`` that returns the HF module's output directly
when neither point has a forward or a backward hook (the tensor TransformerLens returns then, so
results are bit-identical), and otherwise calls TransformerLens's own method (hooks fire, edits
propagate). ``hook_in`` and ``hook_out`` are untouched. Nothing global is patched.

Example:
    >>> import torch
    >>> from vlminterp import HookedVLM
    >>> model = HookedVLM.tiny("llava")
    >>> norm = model.bridge.ln_final
    >>> x = torch.randn(1, 3, model.cfg.d_model)
    >>> library = type(norm)._hf_autograd_forward_with_hooks(norm, x)  # TransformerLens's own
    >>> torch.equal(norm._hf_autograd_forward_with_hooks(x), library)
    True
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

__all__ = ["skip_unobserved_norm_math"]


def skip_unobserved_norm_math(bridge: Any) -> int:
    """Give each normalisation bridge of ``bridge`` the shortcut described in the module docstring.

    Args:
        bridge: A booted ``TransformerBridge``.

    Returns:
        How many normalisation bridges got the shortcut.
    """
    from transformer_lens.model_bridge.generalized_components.normalization import NormalizationBridge

    count = 0
    for module in bridge.modules():
        if isinstance(module, NormalizationBridge) and not isinstance(
            module.original_component, torch.nn.Identity
        ):
            object.__setattr__(module, "_hf_autograd_forward_with_hooks", _shortcut(module))
            count += 1
    return count


def _shortcut(norm: Any):
    points = (norm.hook_scale, norm.hook_normalized)

    def forward_with_hooks(x: Tensor) -> Tensor:
        if any(p.fwd_hooks or p.bwd_hooks for p in points):
            return type(norm)._hf_autograd_forward_with_hooks(norm, x)  # TransformerLens's own
        result = norm.original_component(x)
        return result if result.dtype == x.dtype else result.to(x.dtype)

    return forward_with_hooks
