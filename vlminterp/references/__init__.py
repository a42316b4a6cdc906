"""Independent references for generation: plain ``transformers``, plain torch hooks, full recompute.

vlminterp generates with the KV cache through the TransformerLens bridge, and steers with
TransformerLens hook points. The references here share none of that:

- :mod:`~vlminterp.references.hf_model`: a second HF model loaded from the same folder, read and
  edited with torch forward hooks on its decoder layers.
- :mod:`~vlminterp.references.greedy`: a greedy loop that recomputes the whole sequence at every
  step without a cache, and HF's own ``generate``.
- :mod:`~vlminterp.references.steered`: each steering rule written out as torch hooks
  (``resid_post`` = a decoder layer's output; ``attn.hook_z`` = the input of ``o_proj``, by head).
- :mod:`~vlminterp.references.checks`: :func:`run_references` (the engine of ``vlminterp doctor``),
  vlminterp's generation through its public entry points against those references, token for token.

Prompts are still built with :class:`~vlminterp.prompts.PromptBatch` (the inputs, not what is checked).

Example:
    >>> from vlminterp import HookedVLM
    >>> from vlminterp.references import run_references
    >>> model = HookedVLM.tiny("llava")
    >>> [r.passed for r in run_references(model, max_new_tokens=3)]
    [True, True, True, True, True, True]
"""

from vlminterp.references.checks import (
    ReferenceCheck,
    ReferenceResult,
    noise_image,
    reference_checks,
    reference_samples,
    run_references,
)
from vlminterp.references.greedy import Steering, StepContext, Tokens, greedy_no_cache, hf_generate
from vlminterp.references.hf_model import hf_decoder_layers, hf_forward, load_reference_model
from vlminterp.references.steered import (
    reference_cmrm,
    reference_head_ablation,
    reference_sample_cmrm,
    reference_shiftdc,
)

__all__ = [
    "ReferenceResult",
    "ReferenceCheck",
    "StepContext",
    "Steering",
    "Tokens",
    "load_reference_model",
    "hf_decoder_layers",
    "hf_forward",
    "noise_image",
    "reference_samples",
    "greedy_no_cache",
    "hf_generate",
    "reference_cmrm",
    "reference_sample_cmrm",
    "reference_shiftdc",
    "reference_head_ablation",
    "reference_checks",
    "run_references",
]
