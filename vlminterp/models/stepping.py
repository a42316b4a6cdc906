"""One batch fed through the model step by step with its own KV cache (the state of a generate loop).

:class:`CachedRun` is the loop state of :meth:`HookedVLM.generate` (mask, position ids, image
inputs at the first step, KV cache), so a second batch can run alongside the generated one with the
same rules: per-input interventions run their twin rows (TEXT_ONLY, BLANK, CAPTION) this way,
fed the steered rows' tokens through ``generate(before_step=...)``. With ``stop_after_layer`` the
forward stops once that layer's ``resid_post`` has fired: later layers, the final norm and the
unembedding of rows that are only read at earlier layers are never computed, and their KV cache
holds the layers that ran (all the next step needs). Like HF ``generate``, the prompt pass
unembeds only the last position (``logits_to_keep=1``) unless ``all_logits=True``.

Example:
    >>> from vlminterp import HookedVLM, Sample, Condition, PromptBatch
    >>> model = HookedVLM.tiny("llava")
    >>> batch = PromptBatch.paired(model, [Sample(id="a", query="hi")], [Condition.TEXT_ONLY])
    >>> seen = []
    >>> run = CachedRun(model, batch, stop_after_layer=0)
    >>> with model.hooks([("blocks.0.hook_resid_post", lambda x, hook: seen.append(x.shape[1]))]):
    ...     run.step(), run.step(torch.tensor([5]))
    (None, None)
    >>> seen == [batch.input_ids.shape[1], 1], run.length == batch.input_ids.shape[1] + 1
    (True, True)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from vlminterp.models.compat import check_prefill_cache

if TYPE_CHECKING:
    from vlminterp.models.hooked_vlm import HookedVLM
    from vlminterp.prompts import PromptBatch

__all__ = ["CachedRun", "StopForward"]


class StopForward(Exception):
    """Raised by the stop hook of a truncated :class:`CachedRun` to end its forward early."""


def _stop(activation: Tensor, hook: Any) -> None:
    raise StopForward(hook.name)


class CachedRun:
    """``batch`` run through ``model`` one step at a time, the KV cache kept between steps.

    Args:
        model: The model (hooks installed on it fire on every step).
        batch: The prompts (left-padded).
        stop_after_layer: Stop each forward after this layer's ``resid_post`` (no logits then);
            None runs the whole model.
        all_logits: Unembed every prompt position at the prompt pass (for hooks on ``unembed``);
            default only the last, which is all the next token needs.

    Attributes:
        past: The KV cache after the last step (None before the first).
        length: Positions held so far (prompt plus fed tokens).
    """

    def __init__(
        self,
        model: HookedVLM,
        batch: PromptBatch,
        stop_after_layer: int | None = None,
        all_logits: bool = False,
    ):
        device = model.device
        self.model = model
        self.past: Any = None
        self._prompt = batch.input_ids.to(device)
        self._mask = batch.attention_mask.to(device)
        # Image tensors and per-token kwargs (token_type_ids, ...) describe the prompt: first step only.
        self._first = {k: v.to(device) for k, v in {**batch.image_inputs, **batch.token_inputs}.items()}
        self._positions = batch.position_ids.to(device) if batch.explicit_position_ids else None
        self._stop = None if stop_after_layer is None else model.layer_hook("resid_post", stop_after_layer)
        self._last_logits = not all_logits and _keeps_logits(model)

    @property
    def length(self) -> int:
        return int(self._mask.shape[1])

    def step(self, tokens: Int[Tensor, " batch"] | None = None) -> Float[Tensor, "batch pos d_vocab"] | None:
        """The prompt pass (``tokens=None``, first call) or one fed token per row; the step's logits.

        Returns:
            Logits ``[batch, pos, d_vocab]`` (``pos`` = 1, or the prompt length at the prompt pass with
            ``all_logits``); None when the run stops early.

        Raises:
            ValueError: the prompt pass is asked twice, or tokens are fed before it.
            KVCacheError: the prompt pass left the KV cache without the prompt.
        """
        kwargs: dict[str, Any] = {"use_cache": True}
        if tokens is None:
            if self.past is not None:
                raise ValueError("CachedRun.step(): the prompt already ran; feed tokens now.")
            ids = self._prompt
            kwargs.update(self._first)
            if self._stop is not None:  # a cache object of ours, filled in place by the layers that run
                kwargs["past_key_values"] = _fresh_cache(self.model)
            elif self._last_logits:
                kwargs["logits_to_keep"] = 1
        else:
            if self.past is None:
                raise ValueError("CachedRun.step(tokens): run the prompt first, step() with no tokens.")
            ids = tokens.to(self._prompt.device)[:, None]
            self._mask = torch.cat([self._mask, torch.ones_like(self._mask[:, :1])], dim=1)
            if self._positions is not None:
                self._positions = self._positions[:, -1:] + 1
            kwargs["past_key_values"] = self.past
        kwargs["attention_mask"] = self._mask
        if self._positions is not None:
            kwargs["position_ids"] = self._positions
        if self._stop is None:
            logits, past = self.model.bridge(ids, return_type="logits_and_cache", **kwargs)
        else:
            logits, past = None, kwargs["past_key_values"]
            try:
                with self.model.hooks([(self._stop, _stop)]):
                    self.model.bridge(ids, return_type=None, **kwargs)
            except StopForward:
                pass
            else:
                raise RuntimeError(f"CachedRun: {self._stop} never fired; the forward was not truncated.")
        if tokens is None:
            check_prefill_cache(past, ids.shape[1])
        self.past = past
        return logits


def _fresh_cache(model: HookedVLM) -> Any:
    """An empty HF cache for the language model (what HF makes itself when none is passed)."""
    from transformers import DynamicCache

    return DynamicCache(config=model.hf_model.config.get_text_config(decoder=True))


def _keeps_logits(model: HookedVLM) -> bool:
    """Whether the HF model takes ``logits_to_keep`` (remote-code checkpoints may not)."""
    import inspect

    return "logits_to_keep" in inspect.signature(model.hf_model.forward).parameters
