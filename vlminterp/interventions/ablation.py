"""Ablations and additions: remove heads or directions, add directions.

Shape glossary: ``batch`` rows, ``pos`` positions (left-padded, so position ``-1`` is every row's
last token), ``head`` attention heads, ``d_head`` head width, ``d_model`` residual width.

- :class:`HeadAblation`: set heads' outputs ``blocks.{l}.attn.hook_z[..., h, :]`` (``[batch, pos,
  head, d_head]``) to zero or to a mean. The attention output is linear in ``z``
  (``attn_out = sum_h z_h W_O^h + b_O``), so this removes exactly what flows from those heads.
- :class:`DirectionalAblation`: ``x <- x - r̂ r̂ᵀ x`` (Arditi et al. 2024), so ``x · r̂ = 0`` afterwards.
  Default sites: :data:`REFUSAL_DIRECTION_HOOKS`, ``resid_pre``, ``attn_out`` and ``mlp_out`` of
  every layer, as andyrdt/refusal_direction (``pipeline/utils/hook_utils.py:
  get_all_direction_ablation_hooks``): a pre-hook on each block's input and hooks on each
  attention and MLP output. Every write into the stream is then free of ``r̂``, so
  ``resid_post`` is too; ablating ``resid_post`` alone (``hook="resid_post"``) differs: the
  attention and MLP of each layer still read the (unablated) direction in their input.
- :class:`DirectionAddition`: ``x <- x + α r`` (``r`` as given; pass a unit vector for unit steps).
  Default site for a plain tensor: ``resid_pre`` of the chosen layers, as refusal_direction's
  activation addition (``get_activation_addition_input_pre_hook`` on block ``l``). Fitted
  :class:`SteeringVectors` are added where they were read (their ``hook``, e.g. ``resid_post``
  of layer ``l``, which is ``resid_pre`` of layer ``l + 1``: one layer later than the authors'
  placement for the same ``l``).

All three are input-free: ``with X.applied(model): model.generate(batch)`` works, as do
``X.generate(model, samples)`` and the other calls of :class:`~vlminterp.interventions.Intervention`.
Activation patching is in :mod:`vlminterp.interventions.patching`.

Example:
    >>> from vlminterp import HookedVLM, Sample, Condition, PromptBatch
    >>> from vlminterp.interventions.ablation import HeadAblation
    >>> model = HookedVLM.tiny("llava")
    >>> batch = PromptBatch.paired(model, [Sample(id="a", query="hi")], [Condition.TEXT_ONLY])
    >>> with HeadAblation([(0, 1), (-1, 3)]).applied(model):
    ...     logits = model.forward(batch)
    >>> model.count_hooks()
    0
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Float
from torch import Tensor

from vlminterp.interventions.base import Intervention, PreparedRun, add_at, finite, model_dtype
from vlminterp.interventions.site import POSITION_WORDS, LayerSpec, Site, check_choice, resolve_layers
from vlminterp.interventions.steering import SteeringVectors
from vlminterp.prompts import Condition, PromptBatch

if TYPE_CHECKING:
    from vlminterp.cache import ActivationStore
    from vlminterp.models.hooked_vlm import HookedVLM

__all__ = ["HeadAblation", "DirectionalAblation", "DirectionAddition", "mean_z", "REFUSAL_DIRECTION_HOOKS"]

ABLATION_MODES = ("zero", "mean")
#: refusal_direction's directional-ablation sites: every layer's input, attention and MLP outputs.
REFUSAL_DIRECTION_HOOKS = ("resid_pre", "attn_out", "mlp_out")


# ---------------------------------------------------------------------- heads
def mean_z(
    model: HookedVLM, batch: PromptBatch, layers: LayerSpec = None
) -> Float[Tensor, "layers head d_head"]:
    """Mean head output ``hook_z`` over every real (non-padding) token of ``batch``, per layer.

    Rows of layers not in ``layers`` are zero. Use it as ``HeadAblation(..., mode="mean", mean_from=...)``.

    Args:
        model: The model to read.
        batch: Reference prompts (padding is excluded from the mean).
        layers: Layers to compute (None/``"all"``, an int or a list; negative: from the end).

    Returns:
        Float32 CPU tensor ``[n_layers, n_heads, d_head]``.
    """
    site = Site(layers=layers, hook="z", positions="all")
    names = site.hook_names(model)
    _, cache = model.run_with_cache(batch, names_filter=names)
    weights = batch.attention_mask.double()
    out = torch.zeros(model.cfg.n_layers, model.cfg.n_heads, model.cfg.d_head)
    for layer, name in zip(site.layer_indices(model.cfg.n_layers), names, strict=True):
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
) -> Float[Tensor, "batch pos head d_head"]:
    out = z.clone()
    out[:, :, heads] = 0.0 if value is None else value.to(z.device, z.dtype)
    return out


class HeadAblation(Intervention):
    """Zero- or mean-ablate attention heads at ``blocks.{l}.attn.hook_z``.

    Args:
        heads: ``[(layer, head), ...]`` (negative layers count from the end).
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
        >>> logits, cache = ablate.run_with_cache(model, batch, names_filter=model.hook_names("z"))
        >>> bool((cache["z", 1][:, :, 0] == mean_z(model, batch)[1, 0]).all())
        True
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
        super().__init__(layers=sorted({layer for layer, _ in pairs}), hook="z", positions="all", steps=steps)
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

    @property
    def layers(self) -> tuple[int, ...]:
        """Layers with at least one ablated head, as given."""
        return self.site.layers

    def prepare(self, model: HookedVLM, batch: PromptBatch | None) -> PreparedRun:
        """One hook per layer setting its heads to zero or to their means (checked, cast to the model)."""
        c = model.cfg
        layers = resolve_layers([layer for layer, _ in self.heads], c.n_layers, "HeadAblation: layers")
        heads = sorted(set(zip(layers, (h for _, h in self.heads), strict=True)))
        if len(heads) != len(self.heads):
            raise ValueError(
                f"HeadAblation heads {list(self.heads)} name a head twice in a {c.n_layers}-layer model."
            )
        bad = [(layer, h) for layer, h in heads if not 0 <= h < c.n_heads]
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
            bad = [(layer, h) for layer, h in heads if not bool(torch.isfinite(means[layer, h]).all())]
            if bad:
                raise ValueError(
                    f"HeadAblation: mean_from is not finite (NaN or inf) at heads {bad}; recompute it."
                )
            means = means.to(model.device, model_dtype(model))
        hooks = []
        for layer in sorted({layer for layer, _ in heads}):
            chosen = [h for lay, h in heads if lay == layer]
            value = None if means is None else means[layer, chosen]
            hooks.append((model.layer_hook("z", layer), partial(_head_hook, heads=chosen, value=value)))
        return PreparedRun(batch, hooks)

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "heads": [list(p) for p in self.heads], "mode": self.mode}


# ---------------------------------------------------------------------- directions
class _DirectionIntervention(Intervention):
    """Shared set-up of :class:`DirectionalAblation` and :class:`DirectionAddition`.

    ``direction`` is ``[d_model]`` (the same at every layer), ``[n_layers, d_model]`` or
    SteeringVectors (hook and layer count from them; the chosen layers must be fitted).
    """

    def __init__(
        self,
        direction: Tensor | SteeringVectors,
        layers: LayerSpec,
        hook: str | Sequence[str] | None,
        positions: str,
        steps: str,
        default_hook: str | Sequence[str] = "resid_pre",
    ):
        who = type(self).__name__
        fitted: SteeringVectors | None = direction if isinstance(direction, SteeringVectors) else None
        table = direction.vectors if fitted is not None else direction
        if not isinstance(table, Tensor) or table.dim() not in (1, 2):
            kind = tuple(table.shape) if isinstance(table, Tensor) else type(table).__name__
            raise ValueError(
                f"{who}: direction must be [d_model], [n_layers, d_model] or SteeringVectors; got {kind}."
            )
        n_layers = table.shape[0] if table.dim() == 2 else None
        check_choice("positions", positions, POSITION_WORDS)
        chosen = hook or default_hook
        self.hooks: tuple[str, ...] = (chosen,) if isinstance(chosen, str) else tuple(chosen)
        if not self.hooks or len(set(self.hooks)) != len(self.hooks):
            raise ValueError(f"{who}: hook must name one hook kind or distinct kinds; got {hook!r}.")
        super().__init__(
            layers=layers, hook=self.hooks[0], positions=positions, steps=steps, n_layers=n_layers
        )
        self.direction = table.detach().float().cpu()
        self.fitted = fitted
        if fitted is not None:
            fitted.check_layers(self.site.layer_indices(fitted.n_layers))
        rows = (
            [self.direction]
            if n_layers is None
            else [self.direction[i] for i in self.site.layer_indices(n_layers)]
        )
        if not all(bool(torch.isfinite(v).all()) for v in rows):
            raise ValueError(f"{who}: the direction is not finite (NaN or inf) at the chosen layers.")

    def _vectors(self, model: HookedVLM) -> dict[int, Float[Tensor, " d_model"]]:
        """Float32 CPU vector per chosen layer of ``model``, checked against its sizes."""
        c, who = model.cfg, type(self).__name__
        layers = self.site.layer_indices(c.n_layers)
        if self.fitted is not None:
            self.fitted.check_compatible(model, layers)
        if self.direction.dim() == 2 and self.direction.shape[0] != c.n_layers:
            raise ValueError(
                f"{who}: the direction has {self.direction.shape[0]} rows (layers) but the model has {c.n_layers}."
            )
        if self.direction.shape[-1] != c.d_model:
            raise ValueError(
                f"{who}: vectors must be [d_model={c.d_model}]; got {tuple(self.direction.shape)}."
            )
        return {
            layer: self.direction if self.direction.dim() == 1 else self.direction[layer] for layer in layers
        }

    def _hooks(self, model: HookedVLM, make: Any) -> list[tuple[str, Any]]:
        """``(name, make(vector))`` at every chosen hook kind of every chosen layer."""
        vectors = self._vectors(model)
        return [
            (model.layer_hook(kind, layer), make(v)) for kind in self.hooks for layer, v in vectors.items()
        ]

    def to_dict(self) -> dict[str, Any]:
        fitted = {"direction": self.fitted.metadata()} if self.fitted is not None else {}
        return super().to_dict() | {"hooks": list(self.hooks)} | fitted


def _ablate_hook(
    x: Float[Tensor, "batch pos d_model"], hook: Any, *, unit: Float[Tensor, " d_model"], positions: str
) -> Float[Tensor, "batch pos d_model"]:
    r = unit.to(x.device, x.dtype)
    if positions == "last":
        last = x[:, -1:]
        return torch.cat([x[:, :-1], last - (last @ r)[..., None] * r], dim=1)
    return x - (x @ r)[..., None] * r


class DirectionalAblation(_DirectionIntervention):
    """Remove a direction from the residual stream: ``x <- x - r̂ r̂ᵀ x`` (Arditi et al. 2024).

    Args:
        direction: ``[d_model]`` (the same at every layer), ``[n_layers, d_model]`` or
            :class:`SteeringVectors`. Each layer's vector is normalised once, when the
            intervention is prepared for a model.
        layers: None/``"all"`` (every layer), ``"second_half"``, an int or a list (negative: from the end).
        hook: Hook kind or kinds; default :data:`REFUSAL_DIRECTION_HOOKS` (``resid_pre``,
            ``attn_out``, ``mlp_out``: refusal_direction's sites). ``"resid_post"`` ablates the
            layer outputs alone.
        positions: ``"all"`` (default, as Arditi et al.) or ``"last"``.
        steps: ``"all"`` (prompt and every generated token) or ``"prefill"``.

    Example:
        >>> import torch
        >>> from vlminterp import HookedVLM
        >>> model = HookedVLM.tiny("llava")
        >>> [name for name, _ in DirectionalAblation(torch.ones(64), layers=0).prepared(model).fwd_hooks]
        ['blocks.0.hook_resid_pre', 'blocks.0.hook_attn_out', 'blocks.0.hook_mlp_out']
    """

    def __init__(
        self,
        direction: Tensor | SteeringVectors,
        layers: LayerSpec = None,
        hook: str | Sequence[str] | None = None,
        positions: str = "all",
        steps: str = "all",
    ):
        super().__init__(direction, layers, hook, positions, steps, default_hook=REFUSAL_DIRECTION_HOOKS)
        if self.direction.dim() == 1:
            if not bool(self.direction.norm() > 0):
                raise ValueError("DirectionalAblation: the direction is zero, so it has no unit vector.")
        else:
            chosen = self.site.layer_indices(self.direction.shape[0])
            zero = [layer for layer in chosen if not bool(self.direction[layer].norm() > 0)]
            if zero:
                raise ValueError(
                    f"DirectionalAblation: the direction is zero at layers {zero}; drop those layers."
                )

    def prepare(self, model: HookedVLM, batch: PromptBatch | None) -> PreparedRun:
        """One ``x - r̂ r̂ᵀ x`` hook per chosen site and layer, ``r̂`` normalised in float32 and cast to the model."""
        dtype = model_dtype(model)
        return PreparedRun(
            batch,
            self._hooks(
                model,
                lambda v: partial(
                    _ablate_hook, unit=(v / v.norm()).to(model.device, dtype), positions=self.positions
                ),
            ),
        )


def _add_hook(
    x: Float[Tensor, "batch pos d_model"], hook: Any, *, delta: Float[Tensor, " d_model"], positions: str
) -> Float[Tensor, "batch pos d_model"]:
    return add_at(x, delta.to(x.device, x.dtype), positions)


class DirectionAddition(_DirectionIntervention):
    """Add a direction to the residual stream: ``x <- x + α r`` (``r`` as given, not normalised).

    Steering vectors applied as they are: pass :class:`SteeringVectors` (or a tensor) and ``alpha``.

    Args:
        direction: ``[d_model]`` (the same at every layer), ``[n_layers, d_model]`` or SteeringVectors.
        alpha: Strength ``α`` (finite).
        layers: None/``"all"`` (every layer), ``"second_half"``, an int or a list (negative: from the end).
        hook: Hook kind (or kinds): default the vectors' hook for :class:`SteeringVectors`, else
            ``"resid_pre"`` (refusal_direction's activation addition at block ``l``'s input).
        positions: ``"all"`` (default) or ``"last"``.
        steps: ``"all"`` or ``"prefill"``.

    Example:
        >>> import torch
        >>> add = DirectionAddition(torch.ones(64), alpha=2.0, layers=-1)
        >>> add.to_dict()["alpha"], add.site.layers
        (2.0, (-1,))
    """

    def __init__(
        self,
        direction: Tensor | SteeringVectors,
        alpha: float = 1.0,
        layers: LayerSpec = None,
        hook: str | Sequence[str] | None = None,
        positions: str = "all",
        steps: str = "all",
    ):
        fitted = direction.hook if isinstance(direction, SteeringVectors) else "resid_pre"
        super().__init__(direction, layers, hook, positions, steps, default_hook=fitted)
        self.alpha = finite("alpha", alpha)

    def prepare(self, model: HookedVLM, batch: PromptBatch | None) -> PreparedRun:
        """One ``x + α r`` hook per chosen site and layer, ``r`` cast to the model."""
        dtype = model_dtype(model)
        return PreparedRun(
            batch,
            self._hooks(
                model,
                lambda v: partial(
                    _add_hook, delta=self.alpha * v.to(model.device, dtype), positions=self.positions
                ),
            ),
        )

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "alpha": self.alpha}
