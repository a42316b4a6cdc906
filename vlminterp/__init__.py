"""vlminterp: TransformerLens-style interpretability for vision-language models.

Example:
    >>> from vlminterp import HookedVLM, Sample, Condition, PromptBatch
    >>> model = HookedVLM.tiny("llava")
    >>> model.cfg.n_layers
    2
"""

from vlminterp.models.hooked_vlm import Generation, HookedVLM
from vlminterp.prompts import Condition, PromptBatch, Sample

__all__ = ["HookedVLM", "Generation", "Sample", "Condition", "PromptBatch"]
__version__ = "0.1.0"
