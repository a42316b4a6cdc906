"""Interventions: hook functions that steer a VLM, and the steering vectors they use.

- :class:`Intervention` (``base``): ``hooks(batch)`` for ``run_with_hooks``, ``applied(model, batch)``.
- :class:`SteeringVectors` (``steering``): per-layer vectors + metadata, safetensors + JSON files.
- :class:`CMRM`, :class:`SampleCMRM` (``cmrm``): cross-modality representation manipulation.
- :class:`SafetyDirection`, :class:`ShiftDC` (``shiftdc``), :func:`caption_images` (``captioning``).

Example:
    >>> from vlminterp.interventions import CMRM, ShiftDC, SafetyDirection, SteeringVectors
"""

from vlminterp.interventions.base import Intervention
from vlminterp.interventions.captioning import QUERY_CONDITIONED_PROMPT, caption_images
from vlminterp.interventions.cmrm import CMRM, SampleCMRM
from vlminterp.interventions.shiftdc import SafetyDirection, ShiftDC
from vlminterp.interventions.steering import SteeringVectors, SteeringVectorsMismatchError

__all__ = [
    "Intervention",
    "SteeringVectors",
    "SteeringVectorsMismatchError",
    "CMRM",
    "SampleCMRM",
    "SafetyDirection",
    "ShiftDC",
    "caption_images",
    "QUERY_CONDITIONED_PROMPT",
]
from vlminterp.interventions.ablation import (  # noqa: E402
    ActivationPatch,
    DirectionAddition,
    DirectionalAblation,
    HeadAblation,
    mean_z,
)

__all__ += ["HeadAblation", "DirectionalAblation", "DirectionAddition", "ActivationPatch", "mean_z"]
