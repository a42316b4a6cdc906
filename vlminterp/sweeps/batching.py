"""Stacked forwards: several prepared runs of a sweep in one forward, each block with its own hooks.

Grid points share a forward: their prepared batches are stacked along the batch axis and block
``i`` carries point ``i``'s hooks (every hook acts on its own rows only, so a block is exactly the
run of that point alone; batched == one-at-a-time is tested in ``tests/integration/test_sweeps.py``).

Forwards start at the first layer their hooks act on: :func:`clean` records the clean run's layer
inputs (:class:`~vlminterp.models.partial.LayerStarts`), and :func:`observe` runs a stack of points on
the clean batch from the lowest layer any of them hooks, skipping the vision tower, the embeddings and
the layers below (exact: tested against the full forward). Points with their own rows (twins of
per-input methods), generating metrics and models that :func:`~vlminterp.models.partial.unsupported`
names run the full forward.

Example:
    >>> from vlminterp import HookedVLM, PromptBatch, Sample
    >>> model = HookedVLM.tiny("llava")
    >>> plain = PromptBatch.paired(model, [Sample(id="a", query="hi")], ["text_only"])
    >>> [o.logits.shape[0] for o in observe(model, [Part.of(None, plain)] * 2, [], None)]
    [1, 1]
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from vlminterp.interventions.base import HookFn, Intervention, PreparedRun
from vlminterp.models.partial import LayerStarts, start_layer
from vlminterp.prompts import Condition, PromptBatch, Sample
from vlminterp.sweeps.metrics import Observation

if TYPE_CHECKING:
    from vlminterp.models.hooked_vlm import HookedVLM

__all__ = ["Part", "clean", "observe", "packs", "prepared", "stacked_hooks"]

logger = logging.getLogger(__name__)


@dataclass
class Part:
    """One run inside a stacked forward: its rows, hooks, ``follow`` and output rows (None run: unsteered)."""

    batch: PromptBatch
    hooks: list[tuple[str, HookFn]]
    follow: list[int | None] | None
    rows: list[int]

    @classmethod
    def of(cls, run: PreparedRun | None, plain: PromptBatch) -> Part:
        if run is None:
            return cls(plain, [], None, list(range(len(plain))))
        return cls(run.batch, run.fwd_hooks, run.follow, run.rows)


def stacked_hooks(
    model: HookedVLM, hook_lists: list[list[tuple[Any, HookFn]]], sizes: list[int]
) -> list[tuple[str, HookFn]]:
    """One hook per name for consecutive blocks of ``sizes`` rows: block ``i`` gets ``hook_lists[i]``."""
    by_name: dict[str, list[tuple[int, HookFn]]] = {}
    for i, hooks in enumerate(hook_lists):
        for spec, fn in hooks:
            for name in model.resolve_names(spec):
                by_name.setdefault(name, []).append((i, fn))

    def make(entries: list[tuple[int, HookFn]]) -> HookFn:
        def hook(x: Tensor, hook: Any) -> Tensor:
            chunks = list(x.split(sizes, dim=0))
            for i, fn in entries:
                out = fn(chunks[i], hook)
                if out is not None:
                    chunks[i] = out
            return torch.cat(chunks, dim=0)

        return hook

    return [(name, make(entries)) for name, entries in by_name.items()]


def clean(
    model: HookedVLM,
    batch: PromptBatch,
    capture: list[str],
    max_new_tokens: int | None,
    from_layers: bool = True,
) -> tuple[Observation, LayerStarts | None]:
    """The unsteered observation of ``batch``, and its layer inputs when points may start at a layer.

    Returns ``(observation, None)`` when every point runs the full forward: ``from_layers=False``, a
    generating metric, or a model whose runs cannot start at a layer (logged, naming the reason).
    """
    if max_new_tokens is not None or not from_layers:
        return observe(model, [Part.of(None, batch)], capture, max_new_tokens)[0], None
    logits, cache, starts = LayerStarts.record(model, batch, capture)
    observed = Observation(
        logits=logits[:, -1].float().cpu(), captured={name: cache[name].float() for name in capture}
    )
    if starts.problem is not None:
        logger.info(
            "sweep: every point of %s runs the full forward (runs from a layer are not exact here: %s).",
            model.cfg.model_id,
            starts.problem,
        )
        return observed, None
    return observed, starts


def observe(
    model: HookedVLM,
    parts: list[Part],
    capture: list[str],
    max_new_tokens: int | None,
    starts: LayerStarts | None = None,
) -> list[Observation]:
    """One observation per part (its output rows), all in one forward of the parts' rows stacked.

    With ``starts`` (from :func:`clean`) and parts that all run its clean batch, the forward starts at
    the lowest layer the parts hook (the full forward when a hook acts before the blocks); parts that
    start at different layers run in one forward per start layer, so none computes layers below its own.
    """
    if starts is not None and max_new_tokens is None and len(parts) > 1:
        begins = [_begin(model, p, starts) for p in parts]
        if None not in begins and len(set(begins)) > 1:
            found: dict[int, Observation] = {}
            for begin in dict.fromkeys(begins):
                chosen = [i for i, b in enumerate(begins) if b == begin]
                same = observe(model, [parts[i] for i in chosen], capture, None, starts)
                found.update(zip(chosen, same, strict=True))
            return [found[i] for i in range(len(parts))]
    sizes = [len(p.batch) for p in parts]
    first = parts[0].batch
    if all(p.batch is first for p in parts):
        stacked = first if len(parts) == 1 else first.select(list(range(len(first))) * len(parts))
    else:
        stacked = PromptBatch.concat([p.batch for p in parts])
    offsets = [sum(sizes[:i]) for i in range(len(parts))]
    follow = None
    if any(p.follow is not None for p in parts):
        follow = [
            None if f is None else o + f
            for p, o in zip(parts, offsets, strict=True)
            for f in (p.follow or [None] * len(p.batch))
        ]
    fwd_hooks = stacked_hooks(model, [p.hooks for p in parts], sizes)
    start = None
    on_clean = starts is not None and all(p.batch is starts.batch for p in parts)
    if on_clean and max_new_tokens is None and follow is None:
        start = start_layer(model, [name for name, _ in fwd_hooks])
    if start is not None:
        last, cache = starts.run(start, len(parts), fwd_hooks, capture)
        last = last.float().cpu()
    else:
        logits, cache = model.run_with_cache(
            stacked, names_filter=capture, positions="last", fwd_hooks=fwd_hooks
        )
        last = logits[:, -1].float().cpu()
    texts = None
    if max_new_tokens is not None:
        texts = model.generate(
            stacked, max_new_tokens=max_new_tokens, fwd_hooks=fwd_hooks, follow=follow
        ).texts
    out = []
    for p, o in zip(parts, offsets, strict=True):
        rows = [o + r for r in p.rows]
        out.append(
            Observation(
                logits=last[rows],
                captured={name: cache[name][rows].float().cpu() for name in capture},
                texts=None if texts is None else [texts[r] for r in rows],
            )
        )
    return out


def _begin(model: HookedVLM, part: Part, starts: LayerStarts) -> int | None:
    """The layer ``part`` can start at from ``starts`` (None: it needs the full forward)."""
    if part.batch is not starts.batch or part.follow is not None:
        return None
    return start_layer(model, [name for spec, _ in part.hooks for name in model.resolve_names(spec)])


def packs(parts: list[Part], max_rows: int) -> list[list[Part]]:
    """Consecutive parts per forward: as many as fit in ``max_rows`` rows (at least one)."""
    packs: list[list[Part]] = [[]]
    for p in parts:
        if packs[-1] and sum(len(q.batch) for q in packs[-1]) + len(p.batch) > max_rows:
            packs.append([])
        packs[-1].append(p)
    return packs


def prepared(
    iv: Intervention,
    model: HookedVLM,
    samples: list[Sample],
    cond: Condition,
    plain: PromptBatch,
    options: Mapping[str, Any],
) -> PreparedRun:
    """``iv`` prepared for ``samples``: on the plain batch, unless ``iv`` builds its own rows (twins)."""
    own = type(iv).prompts is not Intervention.prompts
    run = iv.prepared(model, iv.prompts(model, samples, cond, **options) if own else plain)
    if [run.batch.sample_ids[i] for i in run.rows] != plain.sample_ids:
        raise ValueError(
            f"sweep: the output rows of {type(iv).__name__} are not the sweep's samples in order; its prepare "
            "must keep one output row per input."
        )
    return run
