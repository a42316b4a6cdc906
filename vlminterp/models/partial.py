"""Runs that start at a decoder layer, from the clean run's activations (what a sweep point needs).

A grid point that edits layer ``l`` (one head ablated at ``l``, steering from ``l`` on) leaves layers
``0 .. l-1`` as they were in the clean run, so its forward can start at ``l``. :meth:`LayerStarts.record`
runs the clean batch once and keeps, besides the usual cache, every layer's ``hook_resid_pre`` (all
positions) and the arguments the language model was called with: the attention mask (a 2-D padding
mask, or Gemma 3's per-layer-type mask mapping with its sliding window and bidirectional image
block) and the position ids (1-D RoPE ``[batch, pos]``, or mRoPE's ``[3 | 4, batch, pos]``).
:meth:`LayerStarts.run` calls the language model again on layer ``l``'s ``resid_pre``, with layers
``0 .. l-1`` swapped for a pass-through (indices kept, so per-layer masks and rotary embeddings are the
model's own), then the final norm and the unembedding of the last position; hooks fire as in a full
forward. The vision tower, the embeddings and the layers below ``l`` are not run.

Only language models whose forward is known to do nothing to ``inputs_embeds`` before the first
layer are used (:data:`EXACT_TEXT_MODELS`, each tested against the full forward); for any other
model :func:`unsupported` names the reason and callers run the full forward.

Example:
    >>> from vlminterp import HookedVLM, Sample, Condition, PromptBatch
    >>> model = HookedVLM.tiny("llava")
    >>> batch = PromptBatch.paired(model, [Sample(id="a", query="what is this ?")], [Condition.TEXT_ONLY])
    >>> logits, cache, starts = LayerStarts.record(model, batch, [])
    >>> again, _ = starts.run(1, copies=2)
    >>> again.shape[0], torch.allclose(again[1], logits[0, -1], atol=1e-5)
    (2, True)
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Float
from torch import Tensor

from vlminterp.hook_names import hook_layer
from vlminterp.models.hooking import FwdHooks
from vlminterp.positions import position_selector
from vlminterp.prompts import PromptBatch

if TYPE_CHECKING:
    from vlminterp.cache.activation_cache import ActivationCache
    from vlminterp.models.hooked_vlm import HookedVLM

__all__ = ["LayerStarts", "EXACT_TEXT_MODELS", "start_layer", "unsupported"]

#: Language-model classes whose forward feeds ``inputs_embeds`` unchanged to layer 0 (tested per family).
EXACT_TEXT_MODELS = frozenset(
    {"LlamaModel", "MistralModel", "Qwen2Model", "Qwen2_5_VLTextModel", "Gemma3TextModel"}
)
#: Batch axis of each tensor argument of the language model (None: no batch axis; -2: second to last).
_BATCH_AXIS = {"attention_mask": 0, "position_ids": -2, "cache_position": None}
#: Language-model arguments a run from a layer does not pass again (``cache``: transformers 5.24+).
_DROPPED = {"input_ids", "inputs_embeds", "past_key_values", "cache", "use_cache"}


def start_layer(model: HookedVLM, names: Iterable[str]) -> int | None:
    """The first layer a run hooking ``names`` must compute; None: it needs the full forward.

    Hooks on the final norm are reached from any layer; hooks before the blocks (embeddings, vision
    tower, rotary embeddings) or on the unembedding (a run from a layer unembeds the last position
    only) need the full forward. No hooks: the last layer.

    Example:
        >>> from vlminterp import HookedVLM
        >>> model = HookedVLM.tiny("llava")
        >>> start_layer(model, ["blocks.1.hook_resid_post", "blocks.0.attn.hook_z"]), start_layer(model, ["hook_embed"])
        (0, None)
    """
    start = model.cfg.n_layers - 1
    for name in names:
        layer = hook_layer(name)
        if layer is None:
            if name.startswith("ln_final."):
                continue
            return None
        start = min(start, layer)
    return start


def _text_model(model: HookedVLM) -> torch.nn.Module | None:
    """The HF module whose ``layers`` are the bridge's blocks (the language model), if any."""
    first = model.bridge.blocks[0]
    for module in model.hf_model.modules():
        layers = getattr(module, "layers", None)
        if isinstance(layers, torch.nn.ModuleList) and len(layers) and layers[0] is first:
            return module
    return None


def unsupported(model: HookedVLM) -> str | None:
    """Why runs cannot start at a layer of ``model`` (None: they can).

    Example:
        >>> from vlminterp import HookedVLM
        >>> unsupported(HookedVLM.tiny("llava")) is None
        True
    """
    text = _text_model(model)
    if text is None:
        return f"{type(model.hf_model).__name__} has no language model whose layers are the bridge's blocks"
    if type(text).__name__ not in EXACT_TEXT_MODELS:
        return (
            f"its language model {type(text).__name__} is not one of {sorted(EXACT_TEXT_MODELS)} "
            "(runs from a layer are verified per class)"
        )
    return None


class _PassThrough(torch.nn.Module):
    """Stands in for a skipped layer: returns its hidden states unchanged."""

    def forward(self, hidden_states: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        return hidden_states


_PASS = _PassThrough()


def _stack(name: str, value: Any, copies: int, rows: int) -> Any:
    """A language-model argument for ``copies`` copies of the batch stacked (tensors along their batch axis)."""
    if isinstance(value, dict):
        return {k: _stack(name, v, copies, rows) for k, v in value.items()}
    axis = _BATCH_AXIS.get(name)
    if copies == 1 or not isinstance(value, Tensor) or axis is None:
        return value
    axis = axis % value.dim()
    if value.shape[axis] != rows:  # size 1: broadcast over the batch
        return value
    return torch.cat([value] * copies, dim=axis)


def _kwargs_problem(kwargs: dict[str, Any]) -> str | None:
    """Why the recorded language-model arguments cannot be stacked (None: they can)."""
    for name, value in kwargs.items():
        values = value.values() if isinstance(value, dict) else [value]
        for v in values:
            if isinstance(v, Tensor) and name not in _BATCH_AXIS:
                return f"the language model takes a tensor argument {name!r} of unknown layout"
            if isinstance(value, dict) and not (v is None or isinstance(v, Tensor)):
                return f"its {name!r} mapping holds a {type(v).__name__} (not a tensor mask)"
    return None


class LayerStarts:
    """The clean run of ``batch``: each layer's input and the language model's arguments.

    Build it with :meth:`record`. Memory: ``n_layers`` activations ``[batch, pos, d_model]`` on the
    model's device.

    Attributes:
        batch: The clean batch.
        resid_pre: ``hook_resid_pre`` of every layer, all positions.
        captured: The clean run's cache at the last position (names recorded with it).
        problem: Why runs cannot start at a layer (None: they can).
    """

    def __init__(self, model: HookedVLM, batch: PromptBatch):
        self.model = model
        self.batch = batch
        self.resid_pre: list[Float[Tensor, "batch pos d_model"]] = []
        self.captured: dict[str, Float[Tensor, "batch d"]] = {}
        self.kwargs: dict[str, Any] = {}
        self.problem = unsupported(model)
        self._text = _text_model(model)

    @classmethod
    def record(
        cls, model: HookedVLM, batch: PromptBatch, names_filter: Sequence[str]
    ) -> tuple[Float[Tensor, "batch pos d_vocab"], ActivationCache, LayerStarts]:
        """The clean run of ``batch`` (``run_with_cache`` at the last position), recording the starts.

        Args:
            model: The model.
            batch: The clean prompts.
            names_filter: Hook names cached at the last position (returned, and kept for runs that
                start above their layer).

        Returns:
            ``(logits, cache, starts)``: the run's logits and cache, and the recorded starts.
        """
        starts = cls(model, batch)
        layers = model.hook_names("resid_pre")
        found: dict[str, Tensor] = {}

        def keep(x: Tensor, hook: Any) -> None:
            found[hook.name] = x.detach()

        def keep_kwargs(module: Any, args: tuple, kwargs: dict[str, Any]) -> None:
            if args:
                starts.problem = starts.problem or "the language model was called with positional arguments"
            starts.kwargs = {k: v for k, v in kwargs.items() if k not in _DROPPED}

        handle = (
            None
            if starts._text is None
            else starts._text.register_forward_pre_hook(keep_kwargs, with_kwargs=True)
        )
        try:
            logits, cache = model.run_with_cache(
                batch,
                names_filter=list(names_filter),
                positions="last",
                fwd_hooks=[(n, keep) for n in layers],
            )
        finally:
            if handle is not None:
                handle.remove()
        starts.resid_pre = [found[n] for n in layers]
        starts.captured = {n: cache[n] for n in names_filter}
        starts.problem = starts.problem or _kwargs_problem(starts.kwargs)
        return logits, cache, starts

    def run(
        self, start: int, copies: int = 1, fwd_hooks: FwdHooks = (), capture: Sequence[str] = ()
    ) -> tuple[Float[Tensor, "rows d_vocab"], dict[str, Float[Tensor, "rows d"]]]:
        """Last-position logits of ``copies`` stacked copies of the batch, run from layer ``start``.

        Args:
            start: First layer computed; every hook in ``fwd_hooks`` must act at or above it
                (:func:`start_layer`).
            copies: Copies of the batch stacked along the batch axis (block ``i`` = rows
                ``i*batch .. (i+1)*batch-1``, as :func:`vlminterp.sweeps.batching.observe` stacks them).
            fwd_hooks: Hooks active during the run.
            capture: Names to return at the last position (those below ``start`` are the clean run's).

        Returns:
            ``(logits, captured)``: ``[copies * batch, d_vocab]`` and ``{name: [copies * batch, d]}``.

        Raises:
            ValueError: runs cannot start at a layer of this model (:attr:`problem`), ``start`` is out
                of range, or a hook acts below ``start``.
        """
        model, n = self.model, len(self.batch)
        if self.problem is not None:
            raise ValueError(f"Runs cannot start at a layer of {model.cfg.model_id!r}: {self.problem}.")
        if not 0 <= start < model.cfg.n_layers:
            raise ValueError(f"start {start} is out of range for a {model.cfg.n_layers}-layer model.")
        hooks = [(name, fn) for spec, fn in fwd_hooks for name in model.resolve_names(spec)]
        first = start_layer(model, [name for name, _ in hooks])
        if first is None or first < start:
            raise ValueError(f"A hook acts below layer {start} (first layer hooked: {first}); start lower.")
        select = position_selector("last", self.batch, model.device)
        found: dict[str, Tensor] = {}

        def keep(x: Tensor, hook: Any) -> None:
            found[hook.name] = torch.cat([select(hook.name, part) for part in x.split(n)]).detach()

        fires = [c for c in capture if c.startswith("ln_final.") or (hook_layer(c) or -1) >= start]
        kwargs = {k: _stack(k, v, copies, n) for k, v in self.kwargs.items()}
        hidden = torch.cat([self.resid_pre[start]] * copies)
        layers = self._text.layers
        skipped = [layers[i] for i in range(start)]
        try:
            for i in range(start):
                layers[i] = _PASS
            with torch.no_grad(), model.hooks([*hooks, *((c, keep) for c in fires)]):
                out = self._text(inputs_embeds=hidden, use_cache=False, **kwargs)
                logits = model.bridge.unembed(out.last_hidden_state[:, -1:])[:, -1]
        finally:
            for i, layer in enumerate(skipped):
                layers[i] = layer
        captured = {c: found[c] if c in fires else torch.cat([self.captured[c]] * copies) for c in capture}
        return logits, captured
