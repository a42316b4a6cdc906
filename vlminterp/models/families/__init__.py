"""VLM families: the :class:`Family` record, the registry, and one module per checkpoint format.

Importing this package imports every sibling module, and each registers its families (``llava``,
``llava_next``, ``llava_onevision``, ``qwen2_5_vl``, ``gemma3``, ``idefics3``, ``smolvlm``,
``mistral3`` and the shipped ``organism``). A new format is a new module here.

Example:
    >>> from vlminterp.models.families import family_names
    >>> "llava" in family_names()
    True
"""

import importlib
import pkgutil

from vlminterp.models.families.base import (
    SHIFTDC_CAPTION_TEMPLATE,
    Family,
    family_for_config,
    family_names,
    get_family,
    register_family,
)
from vlminterp.models.families.llava import (
    LLAVA,
    LLAVA_15_CHAT_TEMPLATE,
    LLAVA_NEXT,
    LLAVA_ONEVISION,
    ORGANISM,
)

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = [
    "Family",
    "register_family",
    "get_family",
    "family_for_config",
    "family_names",
    "SHIFTDC_CAPTION_TEMPLATE",
    "LLAVA",
    "LLAVA_NEXT",
    "LLAVA_ONEVISION",
    "ORGANISM",
    "LLAVA_15_CHAT_TEMPLATE",
]
