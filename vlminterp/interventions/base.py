"""Intervention: one protocol for every way of steering a VLM.

An intervention says *where* it acts, a :class:`~vlminterp.interventions.site.Site` (layers, hook
kind, positions, steps), and *what* it does on a given input, :meth:`Intervention.prepare`: for a
batch of prompts (or no batch) it returns a :class:`PreparedRun` holding the batch to run, the hooks,
``follow=`` for twin rows, and which rows are its output. The base class does the rest once:

- :meth:`~Intervention.applied` (context manager; hooks removed on exit, error or not),
- :meth:`~Intervention.generate` (the output rows' :class:`~vlminterp.Generation`, in input order),
- :meth:`~Intervention.generate_chunks` (chunk after chunk of samples, as the eval runner calls it;
  a method may overlap one chunk's work with the next),
- :meth:`~Intervention.run_with_cache` (the output rows' logits and cache),
- :meth:`~Intervention.prompts` (inputs as samples become a batch; twin methods add their rows),
- hook guards: the ``steps`` rule (``"prefill"``: generation steps pass through untouched) and a
  check that the hooks run on the batch they were prepared for.

Inputs are samples (a list of :class:`~vlminterp.Sample`, built with :meth:`Intervention.prompts`)
or a :class:`~vlminterp.PromptBatch`. Input-free methods (dataset CMRM, ablations, direction
addition, patching) also work with no input at all, ``with X.applied(model): model.generate(batch)``.

When hooks fire. :meth:`HookedVLM.generate` runs with the KV cache, so a decoder hook sees the
whole prompt once (``[batch, prompt_len, d_model]``, the *prefill*) and then one new token per
step (``[batch, 1, d_model]``). "Prefill only" (``steps="prefill"``) therefore means: act only when
the activation's position dimension is longer than 1 (VLM prompts are never one token long).
Outside ``generate`` every forward is a prefill. Hooks are pure: they return a new tensor and never
change their input or anything they captured; vectors are cast to the model's device and dtype once,
in :meth:`Intervention.prepare`.

Twin rows. Per-input methods (sample-level CMRM, ShiftDC) need, for each steered prompt, the same
request under other conditions (TEXT_ONLY, BLANK, CAPTION) in the *same* forward, so a hook at
layer ``l`` reads the twins' states at ``l`` and edits only the steered rows. Their batches are
condition-major blocks of ``n`` rows, ``[steered x n, twin_1 x n, ...]``; during generation the twin
rows are fed the steered row's tokens (``PreparedRun.follow``), so every block carries the same suffix.
A method's own :meth:`~Intervention.generate` may instead run the twins as separate KV-cached passes
that stop after the last layer read (:class:`~vlminterp.models.stepping.CachedRun`, stepped from
``HookedVLM.generate(before_step=...)``), when that is tested equal to the one-batch run
(``SampleCMRM`` does).

Example:
    >>> from vlminterp import HookedVLM, Sample, Condition, PromptBatch
    >>> from vlminterp.interventions import CMRM, SteeringVectors
    >>> model = HookedVLM.tiny("llava")
    >>> v = SteeringVectors.zeros(model, method="demo")
    >>> batch = PromptBatch.paired(model, [Sample(id="a", query="hi")], [Condition.TEXT_ONLY])
    >>> with CMRM(v, alpha=1.0).applied(model):
    ...     out = model.generate(batch, max_new_tokens=2)
    >>> len(CMRM(v).generate(model, batch, max_new_tokens=2)), model.count_hooks()
    (1, 0)
"""

from __future__ import annotations

import abc
import contextlib
import dataclasses
import math
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Float
from torch import Tensor

from vlminterp.interventions.site import LayerSpec, PositionSpec, Site
from vlminterp.prompts import Condition, PromptBatch, Sample

if TYPE_CHECKING:
    from vlminterp.cache import ActivationCache
    from vlminterp.hook_names import NamesFilter
    from vlminterp.models.hooked_vlm import Generation, HookedVLM
    from vlminterp.positions import Positions

__all__ = [
    "Intervention",
    "PreparedRun",
    "Inputs",
    "HookFn",
    "is_generation_step",
    "add_at",
    "twin_blocks",
    "twin_follow",
    "finite",
    "model_dtype",
]

#: ``fn(activation, hook) -> new activation``, as TransformerLens hook points call it.
HookFn = Callable[[Tensor, Any], Tensor]
#: What an intervention runs on: samples (built with :meth:`Intervention.prompts`) or prompts.
Inputs = Sequence[Sample] | PromptBatch


def is_generation_step(activation: Float[Tensor, "batch pos ..."]) -> bool:
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
    fix = f"Pass the samples, or build the batch with {who}.prompts(model, samples)."
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


def finite(argument: str, value: float) -> float:
    """``value`` as a float, or a ValueError naming ``argument`` when it is NaN or infinite."""
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{argument}={value} is not a finite number.")
    return value


def model_dtype(model: HookedVLM) -> torch.dtype:
    """The dtype of the model's weights (what steering vectors are cast to)."""
    return next(model.hf_model.parameters()).dtype


@dataclass(frozen=True, eq=False)
class PreparedRun:
    """What an intervention does on one input: the batch to run, its hooks and its output rows.

    Attributes:
        batch: The prompts to run (None when prepared without inputs).
        fwd_hooks: ``[(hook_name, fn), ...]`` for ``model.hooks``, ``run_with_hooks``, ``generate``.
        follow: ``follow=`` for :meth:`HookedVLM.generate` (twin rows fed their steered row's
            tokens); None: every row is free.
        steered: Rows of ``batch`` that are the intervention's output, in input order; None: all.

    Example:
        >>> from vlminterp import HookedVLM, Sample
        >>> from vlminterp.interventions import CMRM
        >>> from PIL import Image
        >>> model = HookedVLM.tiny("llava")
        >>> x = Sample(id="a", query="hi", image=Image.new("RGB", (32, 32)))
        >>> with CMRM.sample_level(alpha=0.5).applied(model, [x]) as run:
        ...     out = model.generate(run.batch, max_new_tokens=2, follow=run.follow)
        >>> len(run.batch), run.steered, len(run.output(out))
        (3, (0,), 1)
    """

    batch: PromptBatch | None
    fwd_hooks: list[tuple[str, HookFn]]
    follow: list[int | None] | None = None
    steered: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "fwd_hooks", list(self.fwd_hooks))
        if self.batch is None:
            if self.follow is not None or self.steered is not None:
                raise ValueError("PreparedRun: follow and steered rows need a batch.")
            return
        n = len(self.batch)
        if self.follow is not None and len(self.follow) != n:
            raise ValueError(f"PreparedRun: follow has {len(self.follow)} entries for {n} rows.")
        if self.steered is not None:
            steered = tuple(int(i) for i in self.steered)
            if not steered or any(not 0 <= i < n for i in steered) or len(set(steered)) != len(steered):
                raise ValueError(f"PreparedRun: steered rows {list(steered)} are not distinct rows of {n}.")
            object.__setattr__(self, "steered", steered)

    @property
    def rows(self) -> list[int]:
        """The output rows (every row unless ``steered`` says otherwise)."""
        if self.batch is None:
            raise ValueError("This run was prepared without inputs; it has no rows.")
        return list(range(len(self.batch))) if self.steered is None else list(self.steered)

    def _all_rows(self) -> bool:
        return self.steered is None or self.rows == list(range(len(self.batch)))

    def output(self, generation: Generation) -> Generation:
        """The output rows of a generation of :attr:`batch`."""
        if self._all_rows():
            return generation
        from vlminterp.models.hooked_vlm import Generation

        rows = self.rows
        return Generation(
            tokens=[generation.tokens[i] for i in rows],
            texts=[generation.texts[i] for i in rows],
            batch=generation.batch.select(rows),
        )

    def output_cache(
        self, logits: Float[Tensor, "batch pos d_vocab"], cache: ActivationCache
    ) -> tuple[Float[Tensor, "rows pos d_vocab"], ActivationCache]:
        """The output rows of logits and a cache of :attr:`batch`."""
        if self._all_rows():
            return logits, cache
        from vlminterp.cache import ActivationCache

        rows = torch.tensor(self.rows)
        data = {name: value[rows.to(value.device)] for name, value in cache.items()}
        meta = self.batch.select(self.rows).to_dict()
        return logits[rows.to(logits.device)], ActivationCache(
            data, positions=cache.positions, meta=meta, model=cache.model
        )


def _guarded(fn: HookFn, who: str, prefill_only: bool, rows: int | None) -> HookFn:
    """``fn`` behind the base class's checks: the batch it was prepared for, and the steps rule."""

    def hook(activation: Tensor, hook: Any) -> Tensor:
        if rows is not None and activation.shape[0] != rows:
            raise ValueError(
                f"{who} was prepared for a batch of {rows} rows but a forward ran {activation.shape[0]} rows. "
                "Run the prepared batch: `with x.applied(model, inputs) as run: model.generate(run.batch, "
                "follow=run.follow)`."
            )
        if prefill_only and is_generation_step(activation):
            return activation
        return fn(activation, hook)

    return hook


class Intervention(abc.ABC):
    """Base class of every intervention: a :class:`Site` (where) and :meth:`prepare` (what).

    Subclasses call ``super().__init__(layers=..., hook=..., positions=..., steps=...)`` and
    implement :meth:`prepare`; per-input methods with twin rows also override :meth:`prompts`.
    The hooks ``prepare`` returns need not check ``steps`` or the batch size: the base class wraps
    them.

    Args:
        layers: ``None``/``"all"``, ``"second_half"``, an int or ints (negative: from the end).
        hook: Short hook kind the intervention acts on (``"resid_post"``, ``"z"``, ...).
        positions: ``"last"``, ``"all"`` or negative ints (prompt positions, ``steps="prefill"``).
        steps: ``"all"`` (prompt and every generated token) or ``"prefill"`` (prompt pass only).
        n_layers: The model's layer count when it is known already (from vectors): layers are then
            checked now instead of at the first run.

    Example:
        >>> import torch
        >>> from vlminterp import HookedVLM, Sample
        >>> from vlminterp.interventions import Intervention, PreparedRun
        >>> class AddAtLast(Intervention):
        ...     def __init__(self, vector, layers=None):
        ...         super().__init__(layers=layers, hook="resid_post", positions="last")
        ...         self.vector = vector
        ...     def prepare(self, model, batch):
        ...         def hook(x, hook):
        ...             return add_at(x, self.vector.to(x.device, x.dtype), "last")
        ...         return PreparedRun(batch, [(name, hook) for name in self.site.hook_names(model)])
        >>> from PIL import Image
        >>> model = HookedVLM.tiny("llava")
        >>> x = Sample(id="a", query="hi", image=Image.new("RGB", (32, 32)))
        >>> out = AddAtLast(torch.ones(64), layers=-1).generate(model, [x], max_new_tokens=2)
        >>> len(out), model.count_hooks()
        (1, 0)
    """

    def __init__(
        self,
        *,
        layers: LayerSpec = None,
        hook: str = "resid_post",
        positions: PositionSpec = "last",
        steps: str = "all",
        n_layers: int | None = None,
    ):
        self.site = Site(layers=layers, hook=hook, positions=positions, steps=steps)
        if n_layers is not None:
            self.site.layer_indices(n_layers)

    @property
    def steps(self) -> str:
        """``"all"`` or ``"prefill"`` (from the site)."""
        return self.site.steps

    @property
    def positions(self) -> str | tuple[int, ...]:
        """``"last"``, ``"all"`` or negative positions (from the site)."""
        return self.site.positions

    @property
    def hook(self) -> str:
        """The short hook kind (from the site)."""
        return self.site.hook

    # ------------------------------------------------------------------ what a subclass defines
    @abc.abstractmethod
    def prepare(self, model: HookedVLM, batch: PromptBatch | None) -> PreparedRun:
        """The run of this intervention on ``batch`` (None: no inputs, for input-free methods).

        Check the model (vector sizes, layers), cast tensors to its device and dtype, run any
        unsteered pass the method needs, and return the hooks. Raise naming what to pass when the
        method needs inputs and ``batch`` is None or not in the layout of :meth:`prompts`.
        """

    def prompts(
        self,
        model: HookedVLM,
        samples: Sequence[Sample],
        condition: Condition | str = Condition.IMAGE,
        **prompt_options: Any,
    ) -> PromptBatch:
        """The batch this intervention runs on for ``samples`` whose steered rows are under ``condition``.

        One row per sample here; methods with twin rows override it. ``prompt_options`` go to
        :meth:`PromptBatch.paired` (``blank=``, ``noise_seed=``, ``caption_template=``).
        """
        return PromptBatch.paired(model, samples, [condition], **prompt_options)

    # ------------------------------------------------------------------ what the base class does
    def _batch(self, model: HookedVLM, inputs: Inputs | None) -> PromptBatch | None:
        if inputs is None or isinstance(inputs, PromptBatch):
            return inputs
        items = [inputs] if isinstance(inputs, Sample) else list(inputs)
        wrong = sorted({type(s).__name__ for s in items if not isinstance(s, Sample)})
        if isinstance(inputs, Sample) or wrong:
            raise TypeError(
                f"{type(self).__name__}: inputs must be a list of Samples or a PromptBatch; got "
                f"{type(inputs).__name__ if isinstance(inputs, Sample) else wrong}. Pass [sample] for one sample."
            )
        if not items:
            raise ValueError(f"{type(self).__name__}: no inputs; pass at least one sample.")
        return self.prompts(model, items)

    def prepared(self, model: HookedVLM, inputs: Inputs | None = None) -> PreparedRun:
        """:meth:`prepare` on ``inputs`` (samples go through :meth:`prompts`), with guarded hooks.

        Use it to combine runs yourself (:func:`vlminterp.sweeps.sweep` stacks several in one
        forward); :meth:`applied` is the usual way in.
        """
        batch = self._batch(model, inputs)
        run = self.prepare(model, batch)
        who = type(self).__name__
        if not isinstance(run, PreparedRun):
            raise TypeError(f"{who}.prepare must return a PreparedRun, got {type(run).__name__}.")
        if batch is not None and run.batch is None:
            raise ValueError(f"{who}.prepare was given a batch but returned a run without one.")
        rows = None if run.batch is None else len(run.batch)
        prefill_only = self.site.steps == "prefill"
        hooks = [(name, _guarded(fn, who, prefill_only, rows)) for name, fn in run.fwd_hooks]
        return dataclasses.replace(run, fwd_hooks=hooks)

    @contextlib.contextmanager
    def applied(self, model: HookedVLM, inputs: Inputs | None = None) -> Iterator[PreparedRun]:
        """Install the hooks on ``model`` for the ``with`` block; they are removed on exit, error or not.

        Args:
            model: The model to steer.
            inputs: Samples or a PromptBatch (needed by per-input methods); None for input-free ones.

        Yields:
            The :class:`PreparedRun`: run ``run.batch`` (with ``follow=run.follow`` in generation).
        """
        run = self.prepared(model, inputs)
        with model.hooks(run.fwd_hooks):
            yield run

    def generate(
        self, model: HookedVLM, inputs: Inputs, max_new_tokens: int = 32, **generate_kwargs: Any
    ) -> Generation:
        """Steered generation; returns the output rows only (one per input, in input order).

        ``generate_kwargs`` go to :meth:`HookedVLM.generate` (``do_sample``, ``temperature``, ...).
        """
        if inputs is None:
            raise ValueError(f"{type(self).__name__}.generate needs inputs: samples or a PromptBatch.")
        with self.applied(model, inputs) as run:
            out = model.generate(
                run.batch, max_new_tokens=max_new_tokens, follow=run.follow, **generate_kwargs
            )
        return run.output(out)

    def generate_chunks(
        self,
        model: HookedVLM,
        chunks: Iterable[Sequence[Sample]],
        condition: Condition | str = Condition.IMAGE,
        max_new_tokens: int = 32,
        **prompt_options: Any,
    ) -> Iterator[Generation]:
        """Steered generation of each chunk of samples in turn, each yielded once done (the eval runner's loop).

        Here ``self.generate(model, self.prompts(model, chunk, condition, **prompt_options))`` per
        chunk. A method may overlap a chunk's work with the next chunk's, or reuse what chunks
        share, and yield the same generations sooner (ShiftDC decodes later chunks' captions in the
        forwards of earlier chunks' responses; sample-level CMRM computes the BLANK twins' shared
        head once).

        Example:
            >>> from vlminterp import HookedVLM, Sample
            >>> from vlminterp.interventions import CMRM, SteeringVectors
            >>> model = HookedVLM.tiny("llava")
            >>> chunks = [[Sample(id="a", query="hi")], [Sample(id="b", query="yo")]]
            >>> cmrm = CMRM(SteeringVectors.zeros(model, method="demo"))
            >>> [len(g) for g in cmrm.generate_chunks(model, chunks, "text_only", max_new_tokens=2)]
            [1, 1]
        """
        for chunk in chunks:
            yield self.generate(
                model, self.prompts(model, chunk, condition, **prompt_options), max_new_tokens
            )

    def run_with_cache(
        self,
        model: HookedVLM,
        inputs: Inputs,
        names_filter: NamesFilter = None,
        positions: Positions = None,
        device: str | torch.device = "cpu",
    ) -> tuple[Float[Tensor, "rows pos d_vocab"], ActivationCache]:
        """Steered logits and cache of the output rows (see :meth:`HookedVLM.run_with_cache`).

        For the twin rows too, run ``model.run_with_cache(run.batch, ...)`` inside :meth:`applied`.
        """
        if inputs is None:
            raise ValueError(f"{type(self).__name__}.run_with_cache needs inputs: samples or a PromptBatch.")
        with self.applied(model, inputs) as run:
            logits, cache = model.run_with_cache(
                run.batch, names_filter=names_filter, positions=positions, device=device
            )
        return run.output_cache(logits, cache)

    def to_dict(self) -> dict[str, Any]:
        """Metadata for results files (no tensors)."""
        return {"method": type(self).__name__, **self.site.to_dict()}
