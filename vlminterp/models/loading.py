"""Loading a checkpoint's family rules and processor, without installing anything at run time.

:func:`choose_family` detects (or checks the requested) :class:`~vlminterp.models.families.Family`
of a checkpoint; :func:`load_processor` loads its processor, through the family's own loader when
``AutoProcessor`` cannot, and raises :class:`ProcessorLoadError` instead of installing packages
(importing this module disables TransformerLens's ``pip install torchvision`` fallback).

Example:
    >>> from vlminterp.testing import tiny_vlm_dir
    >>> from transformers import AutoConfig
    >>> choose_family(AutoConfig.from_pretrained(tiny_vlm_dir("llava")), None, "tiny").name
    'llava'
"""

from __future__ import annotations

import logging
from typing import Any

import transformer_lens.model_bridge.sources.transformers.helpers as _tl_helpers

from vlminterp.models.families import Family, family_for_config, get_family

__all__ = ["ProcessorLoadError", "choose_family", "load_processor"]

logger = logging.getLogger(__name__)


class ProcessorLoadError(RuntimeError):
    """The checkpoint's processor could not be loaded (vlminterp never installs packages to fix it)."""


def _torchvision_importable() -> bool:
    """TransformerLens' ``_ensure_torchvision`` without the ``pip install`` fallback."""
    try:
        import torchvision  # noqa: F401
    except Exception:
        return False
    return True


# TransformerLens 4.3 runs `pip install torchvision` inside the user's interpreter when a processor
# fails to load; on CPU-wheel machines that replaces torch with a multi-GB CUDA build. Never.
_tl_helpers._ensure_torchvision = _torchvision_importable


def choose_family(config: Any, family: str | None, source: str) -> Family:
    """The checkpoint's family: detected from the config, or the one named by ``family=``."""
    if family is None:
        return family_for_config(config)
    rules = get_family(family)
    declared = getattr(config, "vlminterp_family", None)
    model_type = getattr(config, "model_type", None)
    if declared is not None and declared != rules.name:
        raise ValueError(
            f"Family {rules.name!r} does not match checkpoint {source!r}, which declares vlminterp_family="
            f"{declared!r} in its config. Omit family= to use it."
        )
    if declared is None and rules.model_types and model_type not in rules.model_types:
        try:
            detected = family_for_config(config).name
        except ValueError:
            detected = None
        if detected is not None:
            raise ValueError(
                f"Family {rules.name!r} does not match checkpoint {source!r} (model_type={model_type!r} is "
                f"family {detected!r}; {rules.name!r} handles model types {list(rules.model_types)}). Omit family= "
                "to detect it."
            )
        logger.info(
            "%s: model_type=%r is not a registered family; using the prompt rules of family %r as asked.",
            source,
            model_type,
            rules.name,
        )
    return rules


def load_processor(source: str, rules: Family, trust_remote_code: bool = False) -> Any:
    """The checkpoint's processor: ``AutoProcessor``, else the family's own loader (no torchvision)."""
    from transformers import AutoProcessor

    try:
        processor = AutoProcessor.from_pretrained(source, trust_remote_code=trust_remote_code)
    except Exception as err:
        if rules.load_processor is None:
            raise _processor_error(source, err) from err
        processor = None
    if not hasattr(processor, "image_processor") and rules.load_processor is not None:
        try:
            processor = rules.load_processor(source)
        except Exception as err:
            raise _processor_error(source, err) from err
    if not hasattr(processor, "image_processor"):
        raise ProcessorLoadError(
            f"{source!r} loaded a {type(processor).__name__}, not a multimodal processor with an image processor, "
            f"and family {rules.name!r} has no load_processor of its own."
        )
    return processor


def _processor_error(source: str, err: Exception) -> ProcessorLoadError:
    return ProcessorLoadError(
        f"Could not load the processor of {source!r}: {type(err).__name__}: {err}. vlminterp never installs "
        "packages at run time; save a processor with a PIL image processor (*ImageProcessorPil) next to "
        "the weights, or install what the error names yourself."
    )
