"""Samples, paired conditions and left-padded prompt batches with per-token role masks.

- :mod:`~vlminterp.prompts.samples`: :class:`Sample` (a request) and :class:`Condition` (how it is
  shown: with its image, a blank or noise image, its caption, or text only).
- :mod:`~vlminterp.prompts.rows`: :class:`PromptRow`, one sample under one condition.
- :mod:`~vlminterp.prompts.encoding`: tokenising rows, with the role of every token.
- :mod:`~vlminterp.prompts.splitting`: one processor call for a batch, split back per row.
- :mod:`~vlminterp.prompts.batch`: :class:`PromptBatch`, the left-padded batch with role masks.

Example:
    >>> from vlminterp import HookedVLM
    >>> model = HookedVLM.tiny("llava")
    >>> batch = PromptBatch.paired(model, [Sample(id="a", query="hi")], [Condition.TEXT_ONLY])
    >>> len(batch), batch.sample_ids
    (1, ['a'])
"""

from vlminterp.prompts.batch import PromptBatch
from vlminterp.prompts.encoding import ROLE_NAMES
from vlminterp.prompts.rows import PromptRow
from vlminterp.prompts.samples import Condition, ImageLoadError, Sample, load_image

__all__ = ["Sample", "Condition", "PromptRow", "PromptBatch", "load_image", "ImageLoadError", "ROLE_NAMES"]
