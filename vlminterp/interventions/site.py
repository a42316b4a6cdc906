"""Site: where an intervention acts (layers, hook kind, positions, steps), parsed and validated once.

Every intervention holds one :class:`Site`; it is the only parser of ``layers=``, ``positions=`` and
``steps=`` in vlminterp's interventions, so they mean the same thing everywhere:

- ``layers``: ``None`` or ``"all"`` (every decoder layer), ``"second_half"`` (``L//2 .. L-1``,
  ShiftDC's default), an int or a list of ints; negative layers count from the end (``-1`` is the
  last layer). Indices are resolved against the model with :meth:`Site.layer_indices`.
- ``hook``: a short hook kind (``"resid_post"``, ``"z"``, ``"attn_out"``, ...; see
  :mod:`vlminterp.hook_names`), named per layer by the model (``blocks.{l}.hook_resid_post``).
- ``positions``: ``"last"`` (the prompt's last token, then each new token), ``"all"`` (every
  prompt position, then each new token) or negative ints counted from the prompt's end
  (``[-3, -2, -1]``; prompt pass only).
- ``steps``: ``"all"`` (the prompt pass and every generated token) or ``"prefill"`` (the prompt
  pass only).

Example:
    >>> site = Site(layers=-1, hook="resid_post", steps="prefill")
    >>> site.layer_indices(4), site.layers, site.positions
    ((3,), (-1,), 'last')
    >>> Site(layers="second_half").layer_indices(4)
    (2, 3)
"""

from __future__ import annotations

import operator
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from vlminterp.models.hooked_vlm import HookedVLM

__all__ = [
    "Site",
    "LayerSpec",
    "PositionSpec",
    "LAYER_WORDS",
    "POSITION_WORDS",
    "STEPS",
    "check_choice",
    "resolve_layers",
]

#: ``"all"``: every decoder layer; ``"second_half"``: ``L//2 .. L-1``.
LAYER_WORDS = ("all", "second_half")
#: ``"last"``: the last position of each pass; ``"all"``: every prompt position, then each new token.
POSITION_WORDS = ("last", "all")
#: ``"all"``: prefill and every generated token; ``"prefill"``: the prompt pass only.
STEPS = ("all", "prefill")
#: What ``layers=`` accepts: None (= ``"all"``), a word of :data:`LAYER_WORDS`, an int or ints.
LayerSpec = str | int | Iterable[int] | None
#: What ``positions=`` accepts: a word of :data:`POSITION_WORDS`, or negative ints.
PositionSpec = str | int | Sequence[int]


def check_choice(argument: str, value: Any, choices: Collection[str]) -> str:
    """``value`` if it is one of ``choices``, else a ValueError naming the argument and the choices."""
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{argument}={value!r} is not supported. Choose from {list(choices)}.")
    return value


def _ints(argument: str, value: Any, what: str) -> tuple[int, ...]:
    if isinstance(value, (bool, str)):
        raise ValueError(f"{argument}={value!r} is not supported: {what}.")
    try:
        return (operator.index(value),)
    except TypeError:
        pass
    try:
        items = list(value)
        if any(isinstance(x, bool) for x in items):
            raise TypeError
        out = tuple(operator.index(x) for x in items)
    except TypeError:
        raise ValueError(f"{argument}={value!r} is not supported: {what}.") from None
    if not out:
        raise ValueError(f"{argument} is empty: {what}.")
    return out


def _parse_layers(layers: LayerSpec) -> str | tuple[int, ...]:
    what = f"pass None, one of {list(LAYER_WORDS)}, a layer index or a list of layer indices"
    if layers is None:
        return "all"
    if isinstance(layers, str):
        return check_choice("layers", layers, LAYER_WORDS)
    out = _ints("layers", layers, what)
    if len(set(out)) != len(out):
        raise ValueError(f"layers={list(out)} repeats a layer; give each layer once.")
    return out


def _parse_positions(positions: PositionSpec) -> str | tuple[int, ...]:
    if isinstance(positions, str):
        return check_choice("positions", positions, POSITION_WORDS)
    what = f"pass one of {list(POSITION_WORDS)} or negative positions counted from the end"
    out = _ints("positions", positions, what)
    if any(p >= 0 for p in out):
        raise ValueError(
            f"positions {list(out)} must be negative (counted from the end: -1 is the last token), "
            f"or one of {list(POSITION_WORDS)}."
        )
    return tuple(sorted(set(out)))


def resolve_layers(layers: Iterable[int], n_layers: int, argument: str = "layers") -> tuple[int, ...]:
    """``layers`` (negative ones counted from the end) as indices ``0 .. n_layers - 1``, in the given order.

    Raises:
        ValueError: a layer outside ``-n_layers .. n_layers - 1``; the message names ``argument``.
    """
    layers = list(layers)
    bad = [layer for layer in layers if not -n_layers <= layer < n_layers]
    if bad:
        raise ValueError(
            f"{argument} {bad} are out of range for a {n_layers}-layer model (valid: 0 .. {n_layers - 1}, "
            f"or {-n_layers} .. -1 counted from the end)."
        )
    return tuple(layer % n_layers for layer in layers)


@dataclass(frozen=True)
class Site:
    """Where an intervention acts; the arguments are parsed and checked here, once.

    Attributes:
        layers: ``"all"``, ``"second_half"`` or a tuple of layer indices as given (negative ones
            count from the end); ``None`` is stored as ``"all"``.
        hook: Short hook kind (``"resid_post"``, ``"z"``, ...).
        positions: ``"last"``, ``"all"`` or a sorted tuple of negative positions.
        steps: ``"all"`` or ``"prefill"``.

    Raises:
        ValueError: a value outside the choices (the message names the argument and the choices), an
            empty or repeating layer list, a non-negative explicit position, or explicit positions
            with ``steps="all"`` (they exist on the prompt pass only).
    """

    layers: LayerSpec = None
    hook: str = "resid_post"
    positions: PositionSpec = "last"
    steps: str = "all"

    def __post_init__(self) -> None:
        object.__setattr__(self, "layers", _parse_layers(self.layers))
        if not isinstance(self.hook, str) or not self.hook:
            raise ValueError(f"hook={self.hook!r} is not a hook kind; pass one such as 'resid_post' or 'z'.")
        object.__setattr__(self, "positions", _parse_positions(self.positions))
        check_choice("steps", self.steps, STEPS)
        if isinstance(self.positions, tuple) and self.steps != "prefill":
            raise ValueError(
                f"positions {list(self.positions)} are prompt positions: they need steps='prefill'."
            )

    def layer_indices(self, n_layers: int) -> tuple[int, ...]:
        """The layers as sorted indices of an ``n_layers``-layer model.

        Raises:
            ValueError: a layer out of range, or two layers naming the same index (``[1, -1]`` of 2).
        """
        if self.layers == "all":
            return tuple(range(n_layers))
        if self.layers == "second_half":
            return tuple(range(n_layers // 2, n_layers))
        chosen = resolve_layers(self.layers, n_layers)
        if len(set(chosen)) != len(chosen):
            raise ValueError(
                f"layers={list(self.layers)} names a layer twice in a {n_layers}-layer model; give each layer once."
            )
        return tuple(sorted(chosen))

    def hook_names(self, model: HookedVLM) -> list[str]:
        """The model's hook names of this site, one per layer (unknown names raise, naming close ones)."""
        return [model.layer_hook(self.hook, layer) for layer in self.layer_indices(model.cfg.n_layers)]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields."""
        layers = self.layers if isinstance(self.layers, str) else list(self.layers)
        positions = self.positions if isinstance(self.positions, str) else list(self.positions)
        return {"layers": layers, "hook": self.hook, "positions": positions, "steps": self.steps}
