"""Hooks, caching and gradients of :class:`~vlminterp.models.hooked_vlm.HookedVLM` (a mixin).

TransformerLens semantics on PromptBatch inputs:

- ``hooks(fwd_hooks, bwd_hooks)`` adds hooks and removes exactly those on exit, error or not, so
  ``count_hooks()`` is 0 after every call; inside a hook ``hook.name`` is the name it was
  registered under (``blocks.0.hook_resid_post``), not the bridge alias of the same point;
- ``run_with_hooks(..., bwd_hooks=..., metric=...)`` and ``run_with_cache(..., incl_bwd=True,
  metric=...)`` run ``metric(logits).backward()`` while the hooks are in place; gradients are
  cached under ``name + "_grad"`` as in TransformerLens;
- ``run_with_cache`` with no ``names_filter`` caches every hook that fires (hook points gated off
  by ``set_use_attn_result`` / ``set_use_split_qkv_input`` are skipped, as TransformerLens does);
  ``stop_at_layer=k`` runs blocks ``0..k-1`` only and returns the residual stream there in place
  of the logits, as TransformerLens's ``stop_at_layer`` does.

Forwards that return no KV cache (``forward``, ``run_with_hooks``, ``run_with_cache``) pass
``use_cache=False``: HF would otherwise fill a cache (one concatenation per layer) only to drop it.

Example:
    >>> from vlminterp import HookedVLM, Sample, Condition, PromptBatch
    >>> model = HookedVLM.tiny("llava")
    >>> batch = PromptBatch.paired(model, [Sample(id="a", query="hi")], [Condition.TEXT_ONLY])
    >>> grads = {}
    >>> def save(grad, hook):
    ...     grads[hook.name] = grad
    >>> _ = model.run_with_hooks(
    ...     batch, bwd_hooks=[("blocks.0.hook_resid_post", save)], metric=lambda logits: logits[0, -1].logsumexp(-1)
    ... )
    >>> list(grads), model.count_hooks()
    (['blocks.0.hook_resid_post'], 0)
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from vlminterp.cache.activation_cache import ActivationCache
from vlminterp.hook_names import NamesFilter, hook_layer
from vlminterp.models.stepping import run_until
from vlminterp.positions import Positions, describe_positions, position_selector
from vlminterp.prompts import PromptBatch

__all__ = ["HookingMixin", "HookFn", "FwdHooks", "Metric", "require_batch"]

HookFn = Callable[..., Any]
#: ``[(name_or_predicate, fn), ...]`` as in TransformerLens (forward and backward hooks alike).
FwdHooks = Sequence[tuple[str | Callable[[str], bool], HookFn]]
#: A scalar function of the logits, differentiated by backward hooks and ``incl_bwd`` caching.
Metric = Callable[[Tensor], Tensor]


class HookingMixin:
    """Hook management, forward passes, caching and gradients; mixed into ``HookedVLM``.

    Needs ``self.bridge`` (a ``TransformerBridge``), ``self.device``, ``self.cfg``,
    ``self.resolve_names`` and ``self.layer_hook``.
    """

    bridge: Any
    device: torch.device
    cfg: Any
    resolve_names: Callable[[NamesFilter], list[str]]
    layer_hook: Callable[[str, int], str]

    # ------------------------------------------------------------------ hooks
    def count_hooks(self) -> int:
        """Hooks held by the model's hook points: 0 between vlminterp calls.

        TransformerLens and transformers install a fixed set of internal capture hooks on the first
        forward; those are not hook-point hooks and are not counted here (tests check they do not grow).
        """
        points = {id(hp): hp for hp in self.bridge.hook_dict.values()}  # aliases share a point
        return sum(len(hp.fwd_hooks) + len(hp.bwd_hooks) for hp in points.values())

    @contextlib.contextmanager
    def hooks(self, fwd_hooks: FwdHooks = (), bwd_hooks: FwdHooks = ()) -> Iterator[Any]:
        """Context manager that adds hooks and removes exactly those on exit, error or not.

        Inside a hook, ``hook.name`` is the name the hook was registered under
        (``blocks.0.hook_resid_post``), not the bridge's alias for the same point (``blocks.0.hook_out``).

        Args:
            fwd_hooks: ``[(name_or_predicate, fn), ...]``; ``fn(activation, hook)`` returns a new
                activation or None.
            bwd_hooks: The same for gradients: ``fn(grad, hook)`` sees the gradient w.r.t. the
                activation during ``backward()`` (run it inside the context) and may return a new one.

        Raises:
            ValueError: an unknown hook name, or a hook point gated off by a ``set_use_*`` flag
                (nothing is added then).

        Example:
            >>> from vlminterp import HookedVLM, Sample, Condition, PromptBatch
            >>> model = HookedVLM.tiny("llava")
            >>> batch = PromptBatch.paired(model, [Sample(id="a", query="hi")], [Condition.TEXT_ONLY])
            >>> seen = []
            >>> with model.hooks([("blocks.0.hook_resid_post", lambda x, hook: seen.append(hook.name))]):
            ...     _ = model(batch)
            >>> seen, model.count_hooks()
            (['blocks.0.hook_resid_post'], 0)
        """
        resolved = [
            (name, fn, direction)
            for direction, pairs in (("fwd", fwd_hooks), ("bwd", bwd_hooks))
            for spec, fn in pairs
            for name in self.resolve_names(spec)
        ]
        # TransformerBridge.hook_dict is a property that rebuilds the alias map: read it once, not per hook
        points = self.bridge.hook_dict if resolved else {}
        handles: list[tuple[Any, str, Any]] = []
        try:
            for name, fn, direction in resolved:
                point = points[name]
                self.bridge.check_hooks_to_add(point, name, fn, dir=direction)
                aliases = None if name == point.name else [name]  # hook.name = the registered name
                handles.append((point, direction, point.add_hook(fn, dir=direction, alias_names=aliases)))
            yield self
        finally:
            for point, direction, handle in reversed(handles):
                handle.hook.remove()
                held = point.fwd_hooks if direction == "fwd" else point.bwd_hooks
                if handle in held:
                    held.remove(handle)

    # ------------------------------------------------------------------ running
    def _forward(self, batch: PromptBatch) -> Float[Tensor, "batch pos d_vocab"]:
        require_batch(batch, "forward")
        device = self.device
        kwargs = {k: v.to(device) for k, v in batch.model_kwargs().items()}
        return self.bridge(batch.input_ids.to(device), return_type="logits", use_cache=False, **kwargs)

    def forward(self, batch: PromptBatch) -> Float[Tensor, "batch pos d_vocab"]:
        """Logits of ``batch`` (no gradients)."""
        with torch.no_grad():
            return self._forward(batch)

    __call__ = forward

    def _backward(self, logits: Tensor, metric: Metric, who: str) -> None:
        """``metric(logits).backward()``, after checking that ``metric`` gives a differentiable scalar.

        The weights' ``.grad`` are left as they were: the backward is for the hooks, not for training.
        """
        value = metric(logits)
        if not isinstance(value, Tensor) or value.numel() != 1:
            shape = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
            raise ValueError(
                f"{who}: metric must return a scalar tensor, got {shape}; reduce it (.sum(), .mean())."
            )
        if not value.requires_grad:
            raise ValueError(
                f"{who}: the metric's value has no gradient; compute it from the logits it is given."
            )
        params = [p for p in self.bridge.original_model.parameters() if p.requires_grad]
        saved = [p.grad for p in params]
        try:
            value.backward()
        finally:
            for p, g in zip(params, saved, strict=True):
                p.grad = g

    def run_with_hooks(
        self,
        batch: PromptBatch,
        fwd_hooks: FwdHooks = (),
        grad: bool = False,
        bwd_hooks: FwdHooks = (),
        metric: Metric | None = None,
    ) -> Float[Tensor, "batch pos d_vocab"]:
        """Logits of ``batch`` with hooks active for this one forward (and backward).

        With ``bwd_hooks`` the call runs ``metric(logits).backward()`` while the hooks are in place
        (TransformerLens leaves that to the caller, with ``reset_hooks_end=False``; here no hook
        outlives the call). For a backward of your own, use ``with model.hooks(bwd_hooks=...)``.

        Args:
            batch: The prompts.
            fwd_hooks: ``[(name_or_predicate, fn), ...]`` as in TransformerLens.
            grad: Keep the autograd graph (default off; implied by ``bwd_hooks``).
            bwd_hooks: ``[(name_or_predicate, fn), ...]``; ``fn(grad, hook)`` sees the gradient of
                ``metric`` w.r.t. that activation.
            metric: ``logits -> scalar tensor``; required with ``bwd_hooks``.

        Raises:
            ValueError: ``bwd_hooks`` without a scalar ``metric``.
        """
        if bwd_hooks:
            _require_metric(metric, "run_with_hooks(bwd_hooks=...)")
        with torch.set_grad_enabled(grad or bool(bwd_hooks)), self.hooks(fwd_hooks, bwd_hooks):
            logits = self._forward(batch)
            if bwd_hooks:
                self._backward(logits, metric, "run_with_hooks(bwd_hooks=...)")
                logits = logits.detach()
        return logits

    def _caching_names(self, names_filter: NamesFilter) -> list[list[str]]:
        """Names to cache, grouped per hook point (one hook per point, stored under every name)."""
        if names_filter is not None:
            return [[name] for name in self.resolve_names(names_filter)]
        groups: dict[int, list[str]] = {}
        for name, point in self.bridge.hook_dict.items():
            try:
                self.bridge.check_hooks_to_add(point, name, None)
            except ValueError:  # gated off by a set_use_* flag: the point never fires
                continue
            groups.setdefault(id(point), []).append(name)
        return list(groups.values())

    def run_with_cache(
        self,
        batch: PromptBatch,
        names_filter: NamesFilter = None,
        positions: Positions = None,
        device: str | torch.device = "cpu",
        fwd_hooks: FwdHooks = (),
        incl_bwd: bool = False,
        metric: Metric | None = None,
        stop_at_layer: int | None = None,
    ) -> tuple[Float[Tensor, "batch pos d_out"], ActivationCache]:
        """Logits and an :class:`ActivationCache` of the hooks selected by ``names_filter``.

        Args:
            batch: The prompts.
            names_filter: Hook names to cache (name, names, predicate). None caches every hook that
                fires, under each of its names (``blocks.0.hook_resid_post`` and its bridge alias
                ``blocks.0.hook_out``), as TransformerLens does; with ``positions`` set, hooks without
                the prompt's ``[batch, pos]`` axes (the vision tower) are left out.
            positions: Token positions kept at capture time (:data:`vlminterp.positions.Positions`);
                None keeps all.
                Applies to decoder hooks (``[batch, pos, ...]``); attention patterns are selected on
                their query axis.
            device: Where cached tensors are stored (detached), default CPU.
            fwd_hooks: Interventions active during the run; caching sees their result.
            incl_bwd: Also cache the gradient of ``metric`` w.r.t. each cached activation, under
                ``name + "_grad"`` (TransformerLens's keys).
            metric: ``logits -> scalar tensor``; required with ``incl_bwd``.
            stop_at_layer: Run blocks ``0..stop_at_layer - 1`` only (TransformerLens's
                ``stop_at_layer``, 1..``n_layers``): the forward ends once block
                ``stop_at_layer - 1``'s ``resid_post`` hooks have fired, so later blocks, the final
                norm and the unembedding are not computed. None runs the whole model.

        Returns:
            ``(logits, cache)``; with ``positions="last"`` each ``resid_post`` entry is ``[batch, d_model]``.
            With ``stop_at_layer`` the first item is the residual stream ``[batch, pos, d_model]``
            after block ``stop_at_layer - 1`` (all positions, as any ``fwd_hooks`` left it) instead of logits.

        Raises:
            ValueError: ``incl_bwd`` without a scalar ``metric`` or with ``stop_at_layer``;
                ``stop_at_layer`` out of range, or ``names_filter`` naming a hook the truncated forward
                never reaches (a later block, ``ln_final``, ``unembed``).

        Example:
            >>> from vlminterp import HookedVLM, Sample, Condition, PromptBatch
            >>> model = HookedVLM.tiny("llava")
            >>> batch = PromptBatch.paired(model, [Sample(id="a", query="hi")], [Condition.TEXT_ONLY])
            >>> _, cache = model.run_with_cache(
            ...     batch, "blocks.1.hook_resid_post", incl_bwd=True, metric=lambda logits: logits[0, -1, 5]
            ... )
            >>> sorted(cache)
            ['blocks.1.hook_resid_post', 'blocks.1.hook_resid_post_grad']
            >>> resid, cache = model.run_with_cache(batch, "blocks.0.hook_resid_post", stop_at_layer=1)
            >>> torch.equal(resid, cache["blocks.0.hook_resid_post"])
            True
        """
        if incl_bwd:
            _require_metric(metric, "run_with_cache(incl_bwd=True)")
        require_batch(batch, "run_with_cache")
        groups = self._caching_names(names_filter)
        stop = self._stop_hook(stop_at_layer, groups if names_filter is not None else [], incl_bwd)
        select = position_selector(positions, batch, self.device)
        n, t = batch.input_ids.shape
        store: dict[str, Tensor] = {}

        def make_hook(names: list[str], suffix: str) -> HookFn:
            def cache_hook(activation: Tensor, hook: Any) -> None:
                value = activation
                if select is not None:
                    if names_filter is None and not _has_prompt_axes(names[0], activation, n, t):
                        return
                    value = select(names[0], activation)
                value = value.detach().to(device)
                for name in names:
                    store[name + suffix] = value

            return cache_hook

        caching = [(names[0], make_hook(names, "")) for names in groups]
        grads = [(names[0], make_hook(names, "_grad")) for names in groups] if incl_bwd else []
        with torch.set_grad_enabled(incl_bwd), self.hooks([*fwd_hooks, *caching], grads):
            if stop is None:
                logits = self._forward(batch)
            else:  # the stop hook is added after the caching hooks on the same point, so they fire first
                logits = run_until(self, stop, lambda: self._forward(batch), "run_with_cache")
            if incl_bwd:
                self._backward(logits, metric, "run_with_cache(incl_bwd=True)")
                logits = logits.detach()
        cache = ActivationCache(
            store, positions=describe_positions(positions), meta=batch.to_dict(), model=self.bridge
        )
        return logits, cache

    def _stop_hook(self, stop_at_layer: int | None, groups: list[list[str]], incl_bwd: bool) -> str | None:
        """The ``resid_post`` hook that ends a ``stop_at_layer`` forward (None: no stop), validated.

        ``groups`` are the names asked for explicitly: each must fire before the stop.
        """
        if stop_at_layer is None:
            return None
        n_layers = self.cfg.n_layers
        if (
            isinstance(stop_at_layer, bool)
            or not isinstance(stop_at_layer, int)
            or not 1 <= stop_at_layer <= n_layers
        ):
            raise ValueError(
                f"stop_at_layer must be an int in 1..{n_layers} (blocks 0..stop_at_layer-1 run), "
                f"got {stop_at_layer!r}; pass None to run the whole model."
            )
        if incl_bwd:
            raise ValueError("run_with_cache(incl_bwd=True) differentiates the logits: drop stop_at_layer.")
        late = [names[0] for names in groups if not _before_block(names[0], stop_at_layer)]
        if late:
            raise ValueError(
                f"stop_at_layer={stop_at_layer} ends the forward before {late[:5]} fire: raise stop_at_layer "
                "or leave those hooks out of names_filter."
            )
        return self.layer_hook("resid_post", stop_at_layer - 1)


def require_batch(batch: Any, who: str) -> None:
    """Raise a TypeError saying how to build a PromptBatch when ``batch`` is anything else (e.g. a str)."""
    if not isinstance(batch, PromptBatch):
        raise TypeError(
            f"{who} takes a PromptBatch, got {type(batch).__name__}. Build one from requests: "
            "PromptBatch.paired(model, [Sample(id='a', query='...', image=...)], [Condition.TEXT_ONLY]) "
            "(the chat template and image tokens are applied for you); model.to_tokens(text) gives raw ids."
        )


def _require_metric(metric: Metric | None, who: str) -> None:
    if metric is None:
        raise ValueError(
            f"{who} needs metric=: a function of the logits returning a scalar to differentiate "
            "(e.g. lambda logits: logits[:, -1, token].sum())."
        )


def _has_prompt_axes(name: str, x: Tensor, n: int, t: int) -> bool:
    """Whether ``x`` has the prompt's ``[batch, pos]`` axes (decoder hooks; not the vision tower)."""
    pos_dim = 2 if name.endswith(("hook_pattern", "hook_attn_scores")) else 1
    return x.dim() > pos_dim and x.shape[0] == n and x.shape[pos_dim] == t


def _before_block(name: str, layer: int) -> bool:
    """Whether hook ``name`` fires in a forward that runs blocks ``0..layer-1`` only: a hook of one of
    those blocks or of what runs before the blocks (embeddings, vision tower); not ``ln_final``, ``unembed``.

    Example:
        >>> [_before_block(n, 2) for n in ("blocks.1.hook_z", "blocks.2.attn.hook_z", "ln_final.hook_scale")]
        [True, False, False]
    """
    block = hook_layer(name)
    if block is not None:
        return block < layer
    return name.partition(".")[0] not in ("ln_final", "unembed")
