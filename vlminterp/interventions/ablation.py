"""Ablations and patches: remove heads or directions, add directions, patch activations between runs.

Shape glossary: ``batch`` rows, ``pos`` positions (left-padded, so position ``-1`` is every row's
last token), ``head`` attention heads, ``d_head`` head width, ``d_model`` residual width.

- :class:`HeadAblation`: set heads' outputs ``blocks.{l}.attn.hook_z[..., h, :]`` (``[batch, pos,
  head, d_head]``) to zero or to a mean. The attention output is linear in ``z``
  (``attn_out = sum_h z_h W_O^h + b_O``), so this removes exactly what flows from those heads.
- :class:`DirectionalAblation`: ``x <- x - r̂ r̂ᵀ x`` (Arditi et al. 2024), so ``x · r̂ = 0`` afterwards.
- :class:`DirectionAddition`: ``x <- x + α r`` (``r`` as given; pass a unit vector for unit steps).
- :class:`ActivationPatch`: copy activations of a source run (a cache of the same rows, e.g. the
  TEXT_ONLY twins) into this run at chosen hooks and positions. Positions count from the end, so
  a source run of another length (no image tokens) lines up with the target at its last tokens.

Example:
    >>> from vlminterp import HookedVLM, Sample, Condition, PromptBatch
    >>> from vlminterp.interventions.ablation import HeadAblation
    >>> model = HookedVLM.tiny("llava")
    >>> batch = PromptBatch.paired(model, [Sample(id="a", query="hi")], [Condition.TEXT_ONLY])
    >>> with HeadAblation([(0, 1), (1, 3)]).applied(model):
    ...     logits = model.forward(batch)
    >>> model.count_hooks()
    0
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Float
from torch import Tensor

from vlminterp.interventions.base import (
    POSITIONS,
    STEPS,
    HookFn,
    Intervention,
    add_at,
    check_choice,
    is_generation_step,
)
from vlminterp.interventions.steering import SteeringVectors
from vlminterp.models.names import layer_hook_name
from vlminterp.prompts import Condition, PromptBatch

if TYPE_CHECKING:
    from vlminterp.cache import ActivationStore
    from vlminterp.models.hooked_vlm import HookedVLM

__all__ = ["HeadAblation", "DirectionalAblation", "DirectionAddition", "ActivationPatch", "mean_z"]

ABLATION_MODES = ("zero", "mean")


def _model_dtype(model: HookedVLM) -> torch.dtype:
    return next(model.hf_model.parameters()).dtype


def _check_layers(layers: Iterable[int], n_layers: int, who: str) -> None:
    bad = sorted({layer for layer in layers if not 0 <= layer < n_layers})
    if bad:
        raise ValueError(
            f"{who}: layers {bad} are out of range for a {n_layers}-layer model (0 .. {n_layers - 1})."
        )


# ---------------------------------------------------------------------- heads
def mean_z(
    model: HookedVLM, batch: PromptBatch, layers: Iterable[int] | None = None
) -> Float[Tensor, "layers head d_head"]:
    """Mean head output ``hook_z`` over every real (non-padding) token of ``batch``, per layer.

    Rows of layers not in ``layers`` are zero. Use it as ``HeadAblation(..., mode="mean", mean_from=...)``.

    Args:
        model: The model to read.
        batch: Reference prompts (padding is excluded from the mean).
        layers: Layers to compute (default all).

    Returns:
        Float32 CPU tensor ``[n_layers, n_heads, d_head]``.
    """
    chosen = list(range(model.cfg.n_layers)) if layers is None else list(layers)
    _check_layers(chosen, model.cfg.n_layers, "mean_z")
    names = model.hook_names("z", chosen)
    _, cache = model.run_with_cache(batch, names_filter=names)
    weights = batch.attention_mask.double()
    out = torch.zeros(model.cfg.n_layers, model.cfg.n_heads, model.cfg.d_head)
    for layer, name in zip(chosen, names, strict=True):
        z = cache[name].double()  # [batch, pos, head, d_head]
        out[layer] = (torch.einsum("bp,bphd->hd", weights, z) / weights.sum()).float()
    return out


def _means_from_store(store: ActivationStore, model: HookedVLM, condition: Condition | str | None) -> Tensor:
    """``[n_layers, n_heads, d_head]`` means of hook ``z`` from an ActivationStore (zeros elsewhere)."""
    if "z" not in store.hooks:
        raise ValueError(
            f"mean_from store has hooks {list(store.hooks)}, not 'z'. Collect it with "
            "ActivationStore.collect(..., hooks=('z',)) or pass mean_z(model, batch)."
        )
    if condition is None:
        if len(store.conditions) != 1:
            raise ValueError(
                f"mean_from store holds conditions {[c.value for c in store.conditions]}; choose one with mean_condition=."
            )
        condition = store.conditions[0]
    c = model.cfg
    out = torch.zeros(c.n_layers, c.n_heads, c.d_head)
    means = store.mean(condition, hook="z").float()
    for i, layer in enumerate(store.layers):
        out[layer] = means[i].reshape(c.n_heads, c.d_head)
    return out


def _head_hook(
    z: Float[Tensor, "batch pos head d_head"],
    hook: Any,
    *,
    heads: list[int],
    value: Float[Tensor, "k d_head"] | None,
    steps: str,
) -> Float[Tensor, "batch pos head d_head"]:
    if steps == "prefill" and is_generation_step(z):
        return z
    out = z.clone()
    out[:, :, heads] = 0.0 if value is None else value.to(z.device, z.dtype)
    return out


class HeadAblation(Intervention):
    """Zero- or mean-ablate attention heads at ``blocks.{l}.attn.hook_z``.

    Args:
        heads: ``[(layer, head), ...]``.
        mode: ``"zero"`` or ``"mean"``.
        mean_from: For ``mode="mean"``: a ``[n_layers, n_heads, d_head]`` tensor (:func:`mean_z`),
            or an :class:`~vlminterp.cache.ActivationStore` that collected hook ``"z"``.
        mean_condition: Which condition of a ``mean_from`` store to average (needed if it holds several).
        steps: ``"all"`` (prompt and every generated token) or ``"prefill"``.

    Example:
        >>> from vlminterp import HookedVLM, Sample, Condition, PromptBatch
        >>> model = HookedVLM.tiny("llava")
        >>> batch = PromptBatch.paired(model, [Sample(id="a", query="hi")], [Condition.TEXT_ONLY])
        >>> ablate = HeadAblation([(1, 0)], mode="mean", mean_from=mean_z(model, batch))
        >>> model.run_with_hooks(batch, ablate.bind(model).hooks()).shape[0]
        1
    """

    def __init__(
        self,
        heads: Iterable[tuple[int, int]],
        mode: str = "zero",
        mean_from: Tensor | ActivationStore | None = None,
        mean_condition: Condition | str | None = None,
        steps: str = "all",
    ):
        pairs = []
        for item in heads:
            if not (isinstance(item, Sequence) and len(item) == 2):
                raise ValueError(f"HeadAblation heads must be (layer, head) pairs; got {item!r}.")
            pairs.append((int(item[0]), int(item[1])))
        if not pairs:
            raise ValueError("HeadAblation needs at least one (layer, head) pair.")
        if len(set(pairs)) != len(pairs):
            raise ValueError(f"HeadAblation heads {pairs} repeat a pair.")
        self.heads = tuple(sorted(pairs))
        self.mode = check_choice("mode", mode, ABLATION_MODES)
        if mode == "mean" and mean_from is None:
            raise ValueError(
                "HeadAblation(mode='mean') needs mean_from= (mean_z(model, batch) or an ActivationStore)."
            )
        if mode == "zero" and mean_from is not None:
            raise ValueError(
                "HeadAblation(mode='zero') takes no mean_from; use mode='mean' to ablate to a mean."
            )
        self.mean_from = mean_from
        self.mean_condition = mean_condition
        self.steps = check_choice("steps", steps, STEPS)

    @property
    def layers(self) -> list[int]:
        """Layers with at least one ablated head."""
        return sorted({layer for layer, _ in self.heads})

    def bind(self, model: HookedVLM, batch: PromptBatch | None = None) -> HeadAblation:
        """A copy checked against ``model`` with the means as a ``[n_layers, n_heads, d_head]`` tensor."""
        c = model.cfg
        _check_layers(self.layers, c.n_layers, "HeadAblation")
        bad = [(layer, h) for layer, h in self.heads if not 0 <= h < c.n_heads]
        if bad:
            raise ValueError(f"HeadAblation: heads {bad} are out of range for {c.n_heads} heads per layer.")
        means = self.mean_from
        if self.mode == "mean":
            if not isinstance(means, Tensor):
                means = _means_from_store(means, model, self.mean_condition)
            if tuple(means.shape) != (c.n_layers, c.n_heads, c.d_head):
                raise ValueError(
                    f"HeadAblation mean_from must be [n_layers={c.n_layers}, n_heads={c.n_heads}, d_head={c.d_head}], "
                    f"got {tuple(means.shape)}. Compute it with mean_z(model, batch)."
                )
            means = means.to(model.device, _model_dtype(model))
        return HeadAblation(self.heads, self.mode, means, self.mean_condition, self.steps)

    def hooks(self, batch: PromptBatch | None = None) -> list[tuple[str, HookFn]]:
        if self.mode == "mean" and not isinstance(self.mean_from, Tensor):
            raise ValueError(
                "HeadAblation with a mean_from store needs the model: use applied(model) or bind(model).hooks()."
            )
        out = []
        for layer in self.layers:
            heads = [h for lay, h in self.heads if lay == layer]
            value = None if self.mode == "zero" else self.mean_from[layer, heads]
            out.append(
                (layer_hook_name("z", layer), partial(_head_hook, heads=heads, value=value, steps=self.steps))
            )
        return out

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "heads": [list(p) for p in self.heads], "mode": self.mode}


# ---------------------------------------------------------------------- directions
def _directions(
    direction: Tensor | SteeringVectors, layers: int | Iterable[int] | None, who: str
) -> tuple[dict[int, Tensor], str]:
    """Per-layer float32 vectors from a ``[d_model]`` / ``[n_layers, d_model]`` tensor or SteeringVectors."""
    hook = "resid_post"
    if isinstance(direction, SteeringVectors):
        hook, default, table = direction.hook, direction.layers, direction.vectors
    elif isinstance(direction, Tensor) and direction.dim() == 2:
        default, table = tuple(range(direction.shape[0])), direction
    elif isinstance(direction, Tensor) and direction.dim() == 1:
        if layers is None:
            raise ValueError(f"{who}: a single [d_model] direction needs layers= (which layers to act on).")
        default, table = (), None
    else:
        kind = tuple(direction.shape) if isinstance(direction, Tensor) else type(direction).__name__
        raise ValueError(
            f"{who}: direction must be [d_model], [n_layers, d_model] or SteeringVectors; got {kind}."
        )
    chosen = (
        list(default)
        if layers is None
        else ([layers] if isinstance(layers, int) else [int(x) for x in layers])
    )
    if not chosen or len(set(chosen)) != len(chosen):
        raise ValueError(f"{who}: layers must be a non-empty list without repeats; got {chosen}.")
    if table is not None:
        _check_layers(chosen, table.shape[0], who)
    vectors = {
        layer: (direction if table is None else table[layer]).detach().float().cpu() for layer in chosen
    }
    return vectors, hook


class _DirectionIntervention(Intervention):
    """Shared state of :class:`DirectionalAblation` and :class:`DirectionAddition`."""

    def __init__(self, vectors: dict[int, Tensor], hook: str, positions: str, steps: str):
        self.vectors = vectors
        self.hook = hook
        self.positions = check_choice("positions", positions, POSITIONS)
        self.steps = check_choice("steps", steps, STEPS)

    @property
    def layers(self) -> list[int]:
        return sorted(self.vectors)

    def _bound_vectors(self, model: HookedVLM) -> dict[int, Tensor]:
        c = model.cfg
        _check_layers(self.layers, c.n_layers, type(self).__name__)
        wrong = {layer: tuple(v.shape) for layer, v in self.vectors.items() if tuple(v.shape) != (c.d_model,)}
        if wrong:
            raise ValueError(
                f"{type(self).__name__}: vectors must be [d_model={c.d_model}]; got shapes {wrong}."
            )
        return {layer: v.to(model.device, _model_dtype(model)) for layer, v in self.vectors.items()}

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "layers": self.layers, "hook": self.hook, "positions": self.positions}


def _ablate_hook(
    x: Float[Tensor, "batch pos d_model"], hook: Any, *, unit: Tensor, positions: str, steps: str
) -> Float[Tensor, "batch pos d_model"]:
    if steps == "prefill" and is_generation_step(x):
        return x
    r = unit.to(x.device, x.dtype)
    if positions == "last":
        last = x[:, -1:]
        return torch.cat([x[:, :-1], last - (last @ r)[..., None] * r], dim=1)
    return x - (x @ r)[..., None] * r


class DirectionalAblation(_DirectionIntervention):
    """Remove a direction from the residual stream: ``x <- x - r̂ r̂ᵀ x`` (Arditi et al. 2024).

    Args:
        direction: ``[d_model]`` (same at every layer; then ``layers`` is required),
            ``[n_layers, d_model]`` or :class:`SteeringVectors` (its hook and fitted layers by default).
            Each layer's vector is normalised once, here.
        layers: Layers to act on.
        hook: Hook kind (default the vectors' hook, else ``"resid_post"``).
        positions: ``"all"`` (default, as Arditi et al.) or ``"last"``.
        steps: ``"all"`` (prompt and every generated token) or ``"prefill"``.

    Example:
        >>> import torch
        >>> from vlminterp import HookedVLM
        >>> model = HookedVLM.tiny("llava")
        >>> ablate = DirectionalAblation(torch.ones(64), layers=[0, 1])
        >>> [name for name, _ in ablate.hooks()]
        ['blocks.0.hook_resid_post', 'blocks.1.hook_resid_post']
    """

    def __init__(
        self,
        direction: Tensor | SteeringVectors,
        layers: int | Iterable[int] | None = None,
        hook: str | None = None,
        positions: str = "all",
        steps: str = "all",
    ):
        vectors, default_hook = _directions(direction, layers, "DirectionalAblation")
        zero = [layer for layer, v in vectors.items() if not bool(v.norm() > 0)]
        if zero:
            raise ValueError(
                f"DirectionalAblation: the direction is zero (or not finite) at layers {zero}; drop those layers."
            )
        units = {layer: v / v.norm() for layer, v in vectors.items()}
        super().__init__(units, hook or default_hook, positions, steps)

    def bind(self, model: HookedVLM, batch: PromptBatch | None = None) -> DirectionalAblation:
        bound = self._bound_vectors(model)
        out = DirectionalAblation.__new__(DirectionalAblation)
        _DirectionIntervention.__init__(out, bound, self.hook, self.positions, self.steps)
        return out

    def hooks(self, batch: PromptBatch | None = None) -> list[tuple[str, HookFn]]:
        return [
            (
                layer_hook_name(self.hook, layer),
                partial(_ablate_hook, unit=v, positions=self.positions, steps=self.steps),
            )
            for layer, v in sorted(self.vectors.items())
        ]


def _add_hook(
    x: Float[Tensor, "batch pos d_model"], hook: Any, *, delta: Tensor, positions: str, steps: str
) -> Float[Tensor, "batch pos d_model"]:
    if steps == "prefill" and is_generation_step(x):
        return x
    return add_at(x, delta.to(x.device, x.dtype), positions)


class DirectionAddition(_DirectionIntervention):
    """Add a direction to the residual stream: ``x <- x + α r`` (``r`` as given, not normalised).

    Args:
        direction: ``[d_model]`` (then ``layers`` is required), ``[n_layers, d_model]`` or SteeringVectors.
        alpha: Strength ``α``.
        layers: Layers to act on.
        hook: Hook kind (default the vectors' hook, else ``"resid_post"``).
        positions: ``"all"`` (default) or ``"last"``.
        steps: ``"all"`` or ``"prefill"``.

    Example:
        >>> import torch
        >>> add = DirectionAddition(torch.ones(64), alpha=2.0, layers=1)
        >>> add.to_dict()["alpha"], add.layers
        (2.0, [1])
    """

    def __init__(
        self,
        direction: Tensor | SteeringVectors,
        alpha: float = 1.0,
        layers: int | Iterable[int] | None = None,
        hook: str | None = None,
        positions: str = "all",
        steps: str = "all",
    ):
        vectors, default_hook = _directions(direction, layers, "DirectionAddition")
        super().__init__(vectors, hook or default_hook, positions, steps)
        self.alpha = float(alpha)

    def bind(self, model: HookedVLM, batch: PromptBatch | None = None) -> DirectionAddition:
        out = DirectionAddition.__new__(DirectionAddition)
        _DirectionIntervention.__init__(
            out, self._bound_vectors(model), self.hook, self.positions, self.steps
        )
        out.alpha = self.alpha
        return out

    def hooks(self, batch: PromptBatch | None = None) -> list[tuple[str, HookFn]]:
        return [
            (
                layer_hook_name(self.hook, layer),
                partial(_add_hook, delta=self.alpha * v, positions=self.positions, steps=self.steps),
            )
            for layer, v in sorted(self.vectors.items())
        ]

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "alpha": self.alpha}


# ---------------------------------------------------------------------- patching
def _patch_hook(
    x: Float[Tensor, "batch pos ..."],
    hook: Any,
    *,
    source: Float[Tensor, "batch src_pos ..."],
    positions: list[int] | None,
    heads: list[int] | None,
    name: str,
) -> Float[Tensor, "batch pos ..."]:
    if is_generation_step(x):
        return x
    if source.shape[0] != x.shape[0] or source.shape[2:] != x.shape[2:]:
        raise ValueError(
            f"ActivationPatch at {name!r}: the source cache has shape {tuple(source.shape)} but the run has "
            f"{tuple(x.shape)}; the source must come from a run of the same rows (same order) as this batch."
        )
    if positions is None and source.shape[1] != x.shape[1]:
        raise ValueError(
            f"ActivationPatch at {name!r}: positions='all' needs source and run of equal length, got "
            f"{source.shape[1]} and {x.shape[1]}. Patch positions counted from the end instead (e.g. positions=[-1])."
        )
    idx = list(range(-x.shape[1], 0)) if positions is None else positions
    if -min(idx) > min(x.shape[1], source.shape[1]):
        raise ValueError(
            f"ActivationPatch at {name!r}: position {min(idx)} is outside a run of {x.shape[1]} and a source of "
            f"{source.shape[1]} positions."
        )
    src = source.to(x.device, x.dtype)
    out = x.clone()
    if heads is None:
        out[:, idx] = src[:, idx]
    else:
        patched = out[:, idx]
        patched[:, :, heads] = src[:, idx][:, :, heads]
        out[:, idx] = patched
    return out


class ActivationPatch(Intervention):
    """Copy activations of a source run into this run (prompt pass only).

    Args:
        source_cache: An :class:`~vlminterp.cache.ActivationCache` (or ``{hook name: tensor}``) of a run
            of the same rows, captured with ``positions=None`` (``[batch, src_pos, ...]``) or, for
            ``positions="last"``, with ``positions="last"`` (``[batch, ...]``).
        hooks: Hook names to patch (each must be in the cache), e.g. ``model.hook_names("resid_post", [3])``.
        positions: ``"all"`` (source and run of equal length), ``"last"``, or negative ints counted
            from the end (``[-3, -2, -1]``); left padding aligns every row's last token.
        heads: For head-shaped hooks (``attn.hook_z``, ``[batch, pos, head, d_head]``): patch only these heads.

    Example:
        >>> from vlminterp import HookedVLM, Sample, Condition, PromptBatch
        >>> model = HookedVLM.tiny("llava")
        >>> text = PromptBatch.paired(model, [Sample(id="a", query="hi")], [Condition.TEXT_ONLY])
        >>> _, cache = model.run_with_cache(text, names_filter=model.hook_names("resid_post", [1]))
        >>> patch = ActivationPatch(cache, model.hook_names("resid_post", [1]), positions="last")
        >>> bool((model.run_with_hooks(text, patch.hooks()) == model.forward(text)).all())
        True
    """

    steps = "prefill"

    def __init__(
        self,
        source_cache: Mapping[str, Tensor],
        hooks: str | Sequence[str],
        positions: str | int | Sequence[int] = "all",
        heads: Sequence[int] | None = None,
    ):
        names = [hooks] if isinstance(hooks, str) else list(hooks)
        if not names:
            raise ValueError("ActivationPatch needs at least one hook name.")
        missing = [n for n in names if n not in source_cache]
        if missing:
            raise ValueError(
                f"ActivationPatch: hooks {missing} are not in the source cache (it holds {sorted(source_cache)[:8]}). "
                "Capture them with model.run_with_cache(source_batch, names_filter=...)."
            )
        self.positions = self._positions(positions)
        captured_last = getattr(source_cache, "positions", None) == "last"
        if captured_last and self.positions != [-1]:
            raise ValueError(
                "ActivationPatch: a cache captured with positions='last' can only patch positions='last'."
            )
        self.sources = {n: source_cache[n].unsqueeze(1) if captured_last else source_cache[n] for n in names}
        self.heads = None if heads is None else [int(h) for h in heads]

    @staticmethod
    def _positions(positions: str | int | Sequence[int]) -> list[int] | None:
        if isinstance(positions, str):
            check_choice("positions", positions, ("all", "last"))
            return None if positions == "all" else [-1]
        idx = [positions] if isinstance(positions, int) else [int(p) for p in positions]
        if not idx or any(p >= 0 for p in idx):
            raise ValueError(
                f"ActivationPatch positions {idx} must be negative (counted from the end: -1 is the last token), "
                "or 'all' / 'last'."
            )
        return sorted(set(idx))

    def hooks(self, batch: PromptBatch | None = None) -> list[tuple[str, HookFn]]:
        return [
            (name, partial(_patch_hook, source=src, positions=self.positions, heads=self.heads, name=name))
            for name, src in self.sources.items()
        ]

    def to_dict(self) -> dict[str, Any]:
        positions = "all" if self.positions is None else self.positions
        return {**super().to_dict(), "hooks": list(self.sources), "positions": positions, "heads": self.heads}
