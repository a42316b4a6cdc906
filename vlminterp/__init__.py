"""vlminterp: TransformerLens-style interpretability for vision-language models.

Importing the package tunes glibc malloc for fast CPU forwards (:mod:`vlminterp.malloc`; opt out
with ``VLMINTERP_MALLOC=0``). The names below load their modules on first use, so importing a leaf module such as
:mod:`vlminterp.hook_names` or :mod:`vlminterp.positions` never pulls in the model stack
(TransformerLens, transformers) or the caches.

Example:
    >>> from vlminterp import HookedVLM, Sample, Condition, PromptBatch
    >>> model = HookedVLM.tiny("llava")
    >>> model.cfg.n_layers
    2
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from vlminterp.malloc import tune_malloc

if TYPE_CHECKING:
    from vlminterp.models.hooked_vlm import Generation, HookedVLM
    from vlminterp.prompts import Condition, PromptBatch, Sample

__all__ = ["HookedVLM", "Generation", "Sample", "Condition", "PromptBatch"]
__version__ = "0.1.0"

# CPU forwards without glibc's mmap/trim churn wherever the library is imported (opt out:
# VLMINTERP_MALLOC=0; see vlminterp.malloc).
tune_malloc()

_HOMES = {
    "HookedVLM": "vlminterp.models.hooked_vlm",
    "Generation": "vlminterp.models.hooked_vlm",
    "Sample": "vlminterp.prompts",
    "Condition": "vlminterp.prompts",
    "PromptBatch": "vlminterp.prompts",
}


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'vlminterp' has no attribute {name!r}")
    value = getattr(importlib.import_module(_HOMES[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
