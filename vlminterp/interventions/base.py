"""Intervention: hook functions for ``run_with_hooks`` plus a context manager that owns them.

When hooks fire. :meth:`HookedVLM.generate` runs with the KV cache, so a decoder hook sees the
whole prompt once (``[batch, prompt_len, d_model]``, the *prefill*) and then one new token per
step (``[batch, 1, d_model]``). "Prefill only" (``steps="prefill"``) therefore means: act only when
the activation's position dimension is longer than 1. A one-token prompt cannot be told apart from
a generation step and is treated as one (VLM prompts are never one token long). Outside
``generate`` (``run_with_hooks``, ``run_with_cache``) every forward is a prefill.

Hooks are pure: they return a new tensor and never change their input or anything they captured.
Vectors are cast to the model's device and dtype once, in :meth:`Intervention.applied`.

Twin rows. Per-input methods (sample-level CMRM, ShiftDC) need, for each steered prompt, the same
request under other conditions (TEXT_ONLY, BLANK, CAPTION) in the *same* forward, so a hook at
layer ``l`` reads the twins' states at ``l`` and edits only the steered rows. Such batches are
condition-major blocks of ``n`` rows: ``[steered x n, twin_1 x n, ...]`` (what
``PromptBatch.paired`` builds); during generation the twin rows are fed the steered row's tokens
(``HookedVLM.generate(follow=twin_follow(batch, k))``), so every block carries the same suffix.

Example:
    >>> from vlminterp import HookedVLM, Sample, Condition, PromptBatch
    >>> from vlminterp.interventions import CMRM, SteeringVectors
    >>> model = HookedVLM.tiny("llava")
    >>> v = SteeringVectors.zeros(model, method="demo")
    >>> batch = PromptBatch.paired(model, [Sample(id="a", query="hi")], [Condition.TEXT_ONLY])
    >>> with CMRM(v, alpha=1.0).applied(model):
    ...     out = model.generate(batch, max_new_tokens=2)
    >>> model.count_hooks()
    0
"""

from __future__ import annotations

import abc
import contextlib
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from jaxtyping import Float
from torch import Tensor

from vlminterp.prompts import Condition, PromptBatch

if TYPE_CHECKING:
    from vlminterp.models.hooked_vlm import HookedVLM

__all__ = [
    "Intervention",
    "HookFn",
    "STEPS",
    "POSITIONS",
    "check_choice",
    "parse_layers",
    "is_generation_step",
    "add_at",
    "twin_blocks",
    "twin_follow",
]

#: ``fn(activation, hook) -> new activation``, as TransformerLens hook points call it.
HookFn = Callable[[Tensor, Any], Tensor]
#: ``"all"``: prefill and every generated token; ``"prefill"``: the prompt pass only.
STEPS = ("all", "prefill")
#: ``"last"``: the last position of each pass (the prompt's last token at prefill, the new token
#: after it); ``"all"``: every prompt position at prefill, and the new token after it.
POSITIONS = ("last", "all")


def check_choice(name: str, value: str, choices: Collection[str]) -> str:
    """``value`` if it is one of ``choices``, else a ValueError naming both."""
    if value not in choices:
        raise ValueError(f"{name}={value!r} is not supported. Choose from {list(choices)}.")
    return value


def parse_layers(
    layers: str | int | Iterable[int] | None, n_layers: int, default: Sequence[int]
) -> tuple[int, ...]:
    """Layer indices from ``"all"``, an int, a sequence, or None (``default``), validated.

    Raises:
        ValueError: a layer outside ``0 .. n_layers - 1``, a repeated layer, or an unknown string.
    """
    if layers is None:
        chosen = list(default)
    elif isinstance(layers, str):
        check_choice("layers", layers, ("all",))
        chosen = list(range(n_layers))
    elif isinstance(layers, int):
        chosen = [layers]
    else:
        chosen = [int(layer) for layer in layers]
    if not chosen:
        raise ValueError("layers is empty; pass 'all', a layer index or a non-empty list of layers.")
    bad = [layer for layer in chosen if not 0 <= layer < n_layers]
    if bad:
        raise ValueError(f"Layers {bad} are out of range for {n_layers} layers (valid: 0 .. {n_layers - 1}).")
    if len(set(chosen)) != len(chosen):
        raise ValueError(f"layers {chosen} repeats a layer.")
    return tuple(sorted(chosen))


def is_generation_step(activation: Float[Tensor, "batch pos d_model"]) -> bool:
    """True when a hook fires on a KV-cached generation step (one position), not on a prompt."""
    return activation.shape[1] == 1


def add_at(
    activation: Float[Tensor, "batch pos d_model"],
    delta: Float[Tensor, "*rows d_model"],
    positions: str = "last",
    rows: Tensor | slice = slice(None),
) -> Float[Tensor, "batch pos d_model"]:
    """A new tensor: ``activation`` with ``delta`` added at ``positions`` of ``rows``.

    Args:
        activation: A decoder activation ``[batch, pos, d_model]`` (left-padded: last = ``pos - 1``).
        delta: One vector ``[d_model]`` for every chosen row, or one per chosen row ``[rows, d_model]``.
        positions: ``"last"`` or ``"all"``.
        rows: Row selection (index tensor or slice); default every row.
    """
    out = activation.clone()
    if positions == "last":
        out[rows, -1] = out[rows, -1] + delta
    else:
        out[rows] = out[rows] + (delta.unsqueeze(-2) if delta.dim() == 2 else delta)
    return out


def twin_blocks(batch: PromptBatch, twins: Sequence[Collection[Condition]], who: str) -> int:
    """Rows per block ``n`` of a ``[steered x n, twin_1 x n, ...]`` batch, validated.

    Args:
        batch: The batch a per-input intervention will run on.
        twins: For each twin block, the conditions its rows may have.
        who: The intervention's name, for the error message.

    Raises:
        ValueError: the batch does not have ``1 + len(twins)`` aligned blocks.
    """
    k = 1 + len(twins)
    fix = f"Build it with {who}.prompts(model, samples) (or use {who}.generate)."
    if len(batch) % k:
        raise ValueError(f"{who} needs a batch of {k} blocks of equal size; got {len(batch)} rows. {fix}")
    n = len(batch) // k
    ids = batch.sample_ids[:n]
    for b, allowed in enumerate(twins, start=1):
        block = slice(b * n, (b + 1) * n)
        if batch.sample_ids[block] != ids:
            raise ValueError(
                f"{who}: block {b} of the batch does not hold the same samples as block 0. {fix}"
            )
        wrong = sorted({c.value for c in batch.conditions[block] if c not in allowed})
        if wrong:
            raise ValueError(
                f"{who}: block {b} must hold {sorted(c.value for c in allowed)} rows, found {wrong}. {fix}"
            )
    return n


def twin_follow(batch: PromptBatch, k: int) -> list[int | None]:
    """``follow=`` for :meth:`HookedVLM.generate`: twin rows are fed their block-0 row's tokens."""
    n = len(batch) // k
    return [None] * n + [i for _ in range(k - 1) for i in range(n)]


class Intervention(abc.ABC):
    """Base class of every intervention: a list of hooks, and a context manager that owns them.

    Subclasses set ``steps`` (one of :data:`STEPS`) and implement :meth:`hooks`. Override
    :meth:`bind` when the hooks need the model (a compatibility check, a cast, unsteered passes).

    Example:
        >>> from vlminterp import HookedVLM
        >>> from vlminterp.interventions import CMRM, SteeringVectors
        >>> model = HookedVLM.tiny("llava")
        >>> cmrm = CMRM(SteeringVectors.zeros(model, method="demo"), steps="prefill")
        >>> cmrm.on_prefill, cmrm.on_generation
        (True, False)
    """

    steps: str = "all"

    @property
    def on_prefill(self) -> bool:
        """Whether the hooks act on the prompt pass."""
        return True

    @property
    def on_generation(self) -> bool:
        """Whether the hooks act on every generated token too."""
        return self.steps == "all"

    @abc.abstractmethod
    def hooks(self, batch: PromptBatch | None = None) -> list[tuple[str, HookFn]]:
        """``[(hook_name, fn), ...]`` for ``model.run_with_hooks(batch, fwd_hooks=...)``.

        Args:
            batch: The batch the hooks will run on (needed by per-input interventions).
        """

    def bind(self, model: HookedVLM, batch: PromptBatch | None = None) -> Intervention:
        """This intervention made ready for ``model`` (checked, cast to its device and dtype)."""
        return self

    @contextlib.contextmanager
    def applied(self, model: HookedVLM, batch: PromptBatch | None = None) -> Iterator[HookedVLM]:
        """Install the hooks on ``model`` for the ``with`` block; they are removed on exit, error or not.

        Args:
            model: The model to steer.
            batch: The batch that will run inside the block (per-input interventions need it).
        """
        bound = self.bind(model, batch)
        with model.hooks(bound.hooks(batch)):
            yield model

    def to_dict(self) -> dict[str, Any]:
        """Metadata for results files (no tensors)."""
        return {"method": type(self).__name__, "steps": self.steps}
