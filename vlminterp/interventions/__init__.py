"""Interventions: one protocol for steering, ablating and patching a VLM, and the vectors they use.

- :class:`Site` (``site``): where an intervention acts (layers, hook kind, positions, steps).
- :class:`Intervention`, :class:`PreparedRun` (``base``): ``prepare(model, batch)`` says what it does;
  the base class gives ``applied``, ``generate``, ``run_with_cache`` and ``prompts`` to every one.
- :class:`SteeringVectors` (``steering``): per-layer vectors + metadata, safetensors + JSON files.
- :class:`CMRM`, :class:`SampleCMRM` (``cmrm``): cross-modality representation manipulation.
- :class:`SafetyDirection` (``safety_direction``), :class:`ShiftDC` (``shiftdc``), :func:`caption_images`
  (``captioning``).
- :class:`HeadAblation`, :class:`DirectionalAblation`, :class:`DirectionAddition`, :func:`mean_z`
  (``ablation``); :class:`ActivationPatch` (``patching``).

Example:
    >>> from vlminterp.interventions import CMRM, ShiftDC, SafetyDirection, SteeringVectors
"""

from vlminterp.interventions.ablation import DirectionAddition, DirectionalAblation, HeadAblation, mean_z
from vlminterp.interventions.base import Intervention, PreparedRun
from vlminterp.interventions.captioning import QUERY_CONDITIONED_PROMPT, caption_images
from vlminterp.interventions.cmrm import CMRM, SampleCMRM
from vlminterp.interventions.patching import ActivationPatch
from vlminterp.interventions.safety_direction import SafetyDirection
from vlminterp.interventions.shiftdc import ShiftDC
from vlminterp.interventions.site import Site
from vlminterp.interventions.steering import SteeringVectors, SteeringVectorsMismatchError

__all__ = [
    "Site",
    "Intervention",
    "PreparedRun",
    "SteeringVectors",
    "SteeringVectorsMismatchError",
    "CMRM",
    "SampleCMRM",
    "SafetyDirection",
    "ShiftDC",
    "caption_images",
    "QUERY_CONDITIONED_PROMPT",
    "HeadAblation",
    "DirectionalAblation",
    "DirectionAddition",
    "ActivationPatch",
    "mean_z",
]
