"""Token positions: the one vocabulary of position selections, checked and applied here.

A selection (:data:`Positions`) picks token positions of a left-padded
:class:`~vlminterp.prompts.PromptBatch`, where every row's last prompt token sits at ``pos - 1``:

- ``None``: every position (the ``pos`` axis stays);
- ``"last"``: each row's last token;
- ``"last_instruction"``: each row's last instruction token (from the batch's role masks);
- ``"mean_text"``: the mean over each row's real text tokens (image tokens and padding excluded);
- an int: one position for every row, counted like a Python index (``-2``: second to last);
- an index tensor: 1-D ``[k]`` (the same positions in every row) or 2-D ``[batch, k]`` (per row);
  the ``pos`` axis becomes ``k``.

The names and ints give one vector per row: they are what a dataset-scale store keeps
(``check_positions(..., per_row=True)``). ``HookedVLM.run_with_cache`` takes every selection and
applies it with :func:`position_selector` at capture time, so a cache never holds what it drops.

Example:
    >>> check_positions("last_instruction")
    'last_instruction'
    >>> check_positions(None, per_row=True)
    Traceback (most recent call last):
    ...
    ValueError: positions=None is not supported where one vector per row is kept ...
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from jaxtyping import Int
from torch import Tensor

if TYPE_CHECKING:
    from vlminterp.prompts import PromptBatch

__all__ = [
    "Positions",
    "POSITION_NAMES",
    "check_positions",
    "positions_from_text",
    "describe_positions",
    "position_selector",
]

#: A position selection: None (all), a name of :data:`POSITION_NAMES`, an int or an index tensor.
Positions = None | str | int | Tensor
#: The named selections; each gives one vector per row.
POSITION_NAMES = ("last", "last_instruction", "mean_text")
#: Hooks whose position axis is the query axis 2 (``[batch, head_index, query_pos, key_pos]``).
_QUERY_AXIS_HOOKS = ("hook_pattern", "hook_attn_scores")


def check_positions(positions: Any, *, per_row: bool = False) -> Positions:
    """``positions`` validated (numpy ints become ints), or an error naming the valid choices.

    Args:
        positions: The selection to check.
        per_row: Accept only selections that give one vector per row (the names and ints), as an
            ``ActivationStore`` keeps them.

    Raises:
        ValueError: not a selection (or not a per-row one); the message lists the choices.
    """
    if isinstance(positions, np.integer):
        positions = int(positions)
    names = list(POSITION_NAMES)
    if isinstance(positions, str):
        if positions not in POSITION_NAMES:
            rest = "or an int" if per_row else "an int, an index tensor, or None for every position"
            raise ValueError(f"Unknown positions {positions!r}: choose from {names}, {rest}.")
        return positions
    if isinstance(positions, bool) or not (positions is None or isinstance(positions, (int, Tensor))):
        kinds = f"one of {names} or an int" if per_row else f"None, one of {names}, an int or an index tensor"
        raise ValueError(f"positions must be {kinds}; got {positions!r}.")
    if per_row and not isinstance(positions, int):
        shown = positions if positions is None else f"<tensor of shape {tuple(positions.shape)}>"
        raise ValueError(
            f"positions={shown} is not supported where one vector per row is kept (ActivationStore): "
            f"choose from {names} or an int. Use model.run_with_cache(positions=...) for full sequences "
            "(None) or index tensors."
        )
    return positions


def positions_from_text(text: str) -> str | int:
    """A per-row selection from the text of a ``--positions`` option: a name of :data:`POSITION_NAMES` or an int.

    Example:
        >>> positions_from_text("-2"), positions_from_text("last")
        (-2, 'last')
    """
    if text in POSITION_NAMES:
        return text
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"--positions {text!r}: choose from {list(POSITION_NAMES)} or an int.") from None


def describe_positions(positions: Positions) -> Any:
    """``positions`` as JSON-ready data (an index tensor becomes nested lists)."""
    return positions.tolist() if isinstance(positions, Tensor) else positions


def _row_index(positions: Positions, batch: PromptBatch) -> Int[Tensor, "batch k"] | None:
    """Per-row position indices ``[batch, k]`` for gather-style selections, or None."""
    if isinstance(positions, Tensor):
        idx = positions.long()
        t = batch.input_ids.shape[1]
        if idx.numel() and not bool(((idx >= -t) & (idx < t)).all()):
            raise ValueError(
                f"positions tensor has indices outside [-{t}, {t}) for a batch of {t} positions."
            )
        idx = idx % t  # negative indices count from the end, as with ints
        if idx.dim() == 1:
            return idx.unsqueeze(0).expand(len(batch), -1)
        if idx.dim() == 2 and idx.shape[0] == len(batch):
            return idx
        raise ValueError(
            f"positions tensor must be 1-D (shared positions) or [batch={len(batch)}, k]; got shape {tuple(idx.shape)}."
        )
    if positions == "last_instruction":
        mask = batch.instruction_mask
        if not bool(mask.any(-1).all()):
            raise ValueError("positions='last_instruction': some rows have no instruction tokens.")
        pos = torch.arange(mask.shape[1]).expand_as(mask)
        return torch.where(mask, pos, -1).max(-1).values.unsqueeze(-1)
    return None


def position_selector(
    positions: Positions, batch: PromptBatch, device: str | torch.device = "cpu"
) -> Callable[[str, Tensor], Tensor] | None:
    """A function ``(hook name, activation) -> selected activation`` for ``batch``, or None for all.

    The selector takes decoder activations ``[batch, pos, ...]`` (attention patterns and scores on
    their query axis) and returns ``[batch, ...]`` for names and ints, ``[batch, k, ...]`` for index
    tensors. Index and weight tensors are built once, on ``device``.

    Args:
        positions: The selection (checked here).
        batch: The batch the activations come from (its length, role and attention masks).
        device: Where the activations live.

    Raises:
        ValueError: an invalid selection, or (when called) an activation without the batch's
            ``[batch, pos]`` axes, such as a vision-tower hook.

    Example:
        >>> from vlminterp import HookedVLM, Sample, Condition, PromptBatch
        >>> model = HookedVLM.tiny("llava")
        >>> batch = PromptBatch.paired(model, [Sample(id="a", query="what is this ?")], [Condition.TEXT_ONLY])
        >>> x = torch.randn(1, batch.input_ids.shape[1], 64)
        >>> select = position_selector("last", batch)
        >>> torch.equal(select("blocks.0.hook_resid_post", x), x[:, -1])
        True
    """
    positions = check_positions(positions)
    if positions is None:
        return None
    n, t = batch.input_ids.shape
    index = _row_index(positions, batch)
    index = None if index is None else index.to(device)
    text_weights = None
    if positions == "mean_text":
        text = (batch.attention_mask.bool() & ~batch.image_mask).to(device)
        text_weights = text.float() / text.sum(-1, keepdim=True).clamp(min=1)

    def select(name: str, x: Tensor) -> Tensor:
        pos_dim = 2 if name.endswith(_QUERY_AXIS_HOOKS) else 1
        if x.dim() <= pos_dim or x.shape[0] != n or x.shape[pos_dim] != t:
            raise ValueError(
                f"positions={describe_positions(positions)!r} applies to decoder hooks shaped [batch, pos, ...]; "
                f"{name!r} has shape {tuple(x.shape)}. Cache it in a separate call with positions=None."
            )
        x = x.movedim(pos_dim, 1)
        if positions == "last":
            return x[:, -1]
        if isinstance(positions, int):
            return x[:, positions]
        if text_weights is not None:
            w = text_weights.to(x.dtype).view(n, t, *([1] * (x.dim() - 2)))
            return (x * w).sum(1)
        gathered = x.gather(1, index.view(n, -1, *([1] * (x.dim() - 2))).expand(n, -1, *x.shape[2:]))
        return gathered[:, 0] if positions == "last_instruction" else gathered

    return select
