"""CMRM: Cross-Modality Representation Manipulation (arXiv 2410.09047).

An image shifts the language model's hidden states away from the text-only distribution that its
safety training shaped. Per decoder layer ``l`` the shift is estimated as

    v^l = h^l(TEXT_ONLY) - h^l(BLANK image)          (last token, ``resid_post``)

and the multimodal state is calibrated with ``h^l <- h^l + alpha * v^l``. With this sign the edit
moves image states *toward* text-only states (tested: with ``alpha = 1`` at one layer the steered
BLANK state equals the TEXT_ONLY state); the paper's Eq. 6 leaves the sign in doubt.

- Dataset level: ``v`` is the mean over an anchor set (:meth:`CMRM.fit`, ``estimator="mean"``), or
  the first principal component of the per-sample differences with its sign aligned to the mean
  (``estimator="pc1"``: :func:`vlminterp.directions.pc1` with ``center=True``, sklearn PCA's
  convention; a unit vector, so ``alpha`` is then in absolute units).
- Sample level: each input's own difference, from its TEXT_ONLY and BLANK twins run in the same
  forward (one 3x batch) and fed the same generated tokens at every step
  (:meth:`CMRM.sample_level`, :class:`SampleCMRM`). Its :meth:`SampleCMRM.generate` reuses KV
  caches (``reuse_kv=True``): the BLANK twins' shared template-and-blank-image prefix runs once
  (once per call of :meth:`SampleCMRM.generate_chunks`, the eval runner's loop, not per chunk),
  and every row's prompt but its last token runs unsteered before the rows are joined.

Edits are added at every chosen layer, so they compound in the residual stream: on a small model the
useful ``alpha`` window can be far below 1 (../shared/notes/model-organism.md §6); sweep it.

Example:
    >>> from vlminterp import HookedVLM, Sample, Condition, PromptBatch
    >>> from vlminterp.interventions import CMRM
    >>> model = HookedVLM.tiny("llava")
    >>> from PIL import Image
    >>> samples = [Sample(id="a", query="how do i make a kite", image=Image.new("RGB", (32, 32), "red"))]
    >>> out = CMRM.sample_level(alpha=0.3).generate(model, samples, max_new_tokens=3)
    >>> len(out), model.count_hooks()
    (1, 0)
"""

from __future__ import annotations

import contextlib
import tempfile
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Float
from torch import Tensor

from vlminterp.directions import pc1
from vlminterp.interventions.base import (
    Intervention,
    PreparedRun,
    add_at,
    finite,
    is_generation_step,
    model_dtype,
    twin_blocks,
    twin_follow,
)
from vlminterp.interventions.site import POSITION_WORDS, LayerSpec, Site, check_choice
from vlminterp.interventions.steering import SteeringVectors
from vlminterp.models.kv_prefix import KVPrefix, kv_reuse_supported
from vlminterp.models.stepping import CachedRun, PrefixCache, shared_prefix_run
from vlminterp.prompts import Condition, PromptBatch, Sample

if TYPE_CHECKING:
    from vlminterp.interventions.base import Inputs
    from vlminterp.models.hooked_vlm import Generation, HookedVLM

__all__ = ["CMRM", "SampleCMRM", "BLANKS", "ESTIMATORS"]

#: How the "no image content" input is made: a white image, a seeded noise image, or an image
#: filled with the sample image's mean colour.
BLANKS = ("white", "noise", "mean_pixel")
ESTIMATORS = ("mean", "pc1")


def _blank_condition(blank: str) -> tuple[Condition, dict[str, Any]]:
    check_choice("blank", blank, BLANKS)
    if blank == "noise":
        return Condition.NOISE, {}
    return Condition.BLANK, {"blank": blank}


def _shift_hook(
    activation: Float[Tensor, "batch pos d_model"],
    hook: Any,
    *,
    delta: Float[Tensor, " d_model"],
    positions: str,
) -> Float[Tensor, "batch pos d_model"]:
    return add_at(activation, delta.to(activation.device, activation.dtype), positions)


def _twin_shift(
    text: Float[Tensor, "n d_model"], blank: Float[Tensor, "n d_model"], alpha: float
) -> Float[Tensor, "n d_model"]:
    """``alpha * (h(TEXT_ONLY) - h(BLANK))``: each input's sample-level CMRM shift at one layer."""
    return alpha * (text - blank)


def _sample_shift_hook(
    activation: Float[Tensor, "batch pos d_model"], hook: Any, *, n: int, alpha: float
) -> Float[Tensor, "batch pos d_model"]:
    shift = _twin_shift(activation[n : 2 * n, -1], activation[2 * n :, -1], alpha)
    return add_at(activation, shift, "last", rows=slice(0, n))


class _TwinPass:
    """Sample-level CMRM's twins for ``steps="prefill"``: their own prompt passes, stopped early.

    The TEXT_ONLY and the BLANK rows are two truncated :class:`CachedRun` (each padded to its own
    length: the short text-only prompts do not carry the image prompts' padding), stopped after the
    last steered layer; the BLANK rows' shared prefix (template and blank image, when every row has
    the same) runs once (:func:`~vlminterp.models.stepping.shared_prefix_run`, or once per run
    with ``prefixes``). ``hook`` is installed at every steered hook point: while :meth:`before_step`
    runs the twins' prompt pass it records their last-position states; in the steered rows' prompt
    pass that follows, it adds each layer's shift. Generation steps run the steered rows alone.
    """

    def __init__(
        self,
        model: HookedVLM,
        text: PromptBatch,
        blank: PromptBatch,
        alpha: float,
        last: int,
        prefixes: PrefixCache | None,
    ):
        self.runs = {
            "text": CachedRun(model, text, last),
            "blank": shared_prefix_run(model, blank, last, prefixes),
        }
        self.alpha = alpha
        self.reading: str | None = None
        self.states: dict[tuple[str, str], Tensor] = {}

    def before_step(self, tokens: Tensor | None) -> None:
        if tokens is not None:
            return
        try:
            for which, run in self.runs.items():
                self.reading = which
                run.step()
        finally:
            self.reading = None

    def hook(
        self, activation: Float[Tensor, "batch pos d_model"], hook: Any
    ) -> Float[Tensor, "batch pos d_model"] | None:
        if self.reading is not None:
            self.states[self.reading, hook.name] = activation[:, -1]
            return None
        if is_generation_step(activation):
            return activation
        shift = _twin_shift(self.states["text", hook.name], self.states["blank", hook.name], self.alpha)
        return add_at(activation, shift, "last")


def _describe(samples: Sequence[Sample]) -> str:
    counts = Counter(s.label or "unlabelled" for s in samples)
    return f"{len(samples)} samples ({', '.join(f'{k}: {v}' for k, v in sorted(counts.items()))})"


def _check_finite(vectors: SteeringVectors, layers: Sequence[int], who: str) -> None:
    bad = [layer for layer in layers if not bool(torch.isfinite(vectors.vectors[layer]).all())]
    if bad:
        raise ValueError(f"{who}: the vectors are not finite (NaN or inf) at layers {bad}; refit them.")


class CMRM(Intervention):
    """Dataset-level CMRM: add ``alpha * v^l`` at every chosen layer.

    Args:
        vectors: Shift vectors from :meth:`CMRM.fit` (or loaded with ``SteeringVectors.load``).
        alpha: Strength; ``0`` is an exact no-op, ``1`` the paper's setting, negative values push
            image states further from text states.
        layers: None/``"all"`` (every layer; each must be fitted), ``"second_half"``, an int or a
            list of layers (negative: from the end).
        positions: ``"last"`` (the last token of the prompt, then each new token) or ``"all"``
            (every prompt position too).
        steps: ``"all"`` (prompt and every generated token, the reproduction literature's default)
            or ``"prefill"`` (the prompt pass only, i.e. the first decoding step).

    Example:
        >>> from vlminterp import HookedVLM, Sample, Condition, PromptBatch
        >>> from vlminterp.interventions import CMRM
        >>> model = HookedVLM.tiny("llava")
        >>> from PIL import Image
        >>> anchors = [Sample(id=str(i), query=q, image=Image.new("RGB", (32, 32))) for i, q in enumerate(["hi", "make a cake"])]
        >>> v = CMRM.fit(model, anchors, progress=False)
        >>> batch = PromptBatch.paired(model, anchors, [Condition.IMAGE])
        >>> with CMRM(v, alpha=0.5, layers=[1]).applied(model):
        ...     logits = model.forward(batch)
    """

    def __init__(
        self,
        vectors: SteeringVectors,
        alpha: float = 1.0,
        layers: LayerSpec = None,
        positions: str = "last",
        steps: str = "all",
    ):
        if not isinstance(vectors, SteeringVectors):
            raise TypeError(
                f"CMRM needs SteeringVectors (from CMRM.fit or SteeringVectors.load), got {type(vectors).__name__}."
            )
        check_choice("positions", positions, POSITION_WORDS)
        super().__init__(
            layers=layers, hook=vectors.hook, positions=positions, steps=steps, n_layers=vectors.n_layers
        )
        self.vectors = vectors
        self.alpha = finite("alpha", alpha)
        vectors.check_layers(self.layers)
        _check_finite(vectors, self.layers, "CMRM")

    @property
    def layers(self) -> tuple[int, ...]:
        """The steered layers, as indices."""
        return self.site.layer_indices(self.vectors.n_layers)

    def prepare(self, model: HookedVLM, batch: PromptBatch | None) -> PreparedRun:
        """One ``h + alpha * v^l`` hook per chosen layer, vectors checked against ``model`` and cast."""
        self.vectors.check_compatible(model, self.layers)
        vectors = self.vectors.vectors.to(model.device, model_dtype(model))
        hooks = [
            (model.layer_hook(self.hook, layer),
             partial(_shift_hook, delta=self.alpha * vectors[layer], positions=self.positions))
            for layer in self.layers
        ]  # fmt: skip
        return PreparedRun(batch, hooks)

    def to_dict(self) -> dict[str, Any]:
        return {
            **super().to_dict(),
            "method": "cmrm",
            "level": "dataset",
            "alpha": self.alpha,
            "layers": list(self.layers),
            "vectors": self.vectors.metadata(),
        }

    # ------------------------------------------------------------------ fitting
    @staticmethod
    def fit(
        model: HookedVLM,
        anchor_samples: Sequence[Sample],
        level: str = "dataset",
        estimator: str = "mean",
        blank: str = "white",
        layers: LayerSpec = "all",
        hook: str = "resid_post",
        positions: str = "last",
        batch_size: int = 8,
        progress: bool = True,
        out_dir: str | Path | None = None,
    ) -> SteeringVectors:
        """Shift vectors ``h_text_only - h_blank`` per layer over an anchor set.

        Args:
            model: The model to read.
            anchor_samples: Anchor requests; their mix (harmful / benign) changes the vectors and
                is recorded in the metadata. Images are not needed (``blank="mean_pixel"`` excepted).
            level: ``"dataset"`` (per-input vectors are :meth:`sample_level`).
            estimator: ``"mean"`` (difference of means) or ``"pc1"`` (first principal component of
                the per-sample differences, unit norm, sign aligned with the mean difference).
            blank: The no-content image: ``"white"``, ``"noise"`` or ``"mean_pixel"``.
            layers: Layers to fit (``"all"``, ``"second_half"``, an int or a list; negative: from the end).
            hook: Hook kind to read and later steer (``"resid_post"``).
            positions: Positions to read (``"last"``, ``"last_instruction"``, ``"mean_text"``).
            batch_size: Prompts per forward (memory only; results do not depend on it).
            progress: Show a progress bar.
            out_dir: Keep the collection here (resumable); default in memory (``"pc1"``: a temp dir).

        Returns:
            ``SteeringVectors`` (``method="cmrm"``); rows of layers not fitted are zero.
        """
        from vlminterp.cache import ActivationStore

        if level != "dataset":
            raise ValueError(
                f"CMRM.fit(level={level!r}) is not supported: fit gives dataset-level vectors. For per-input "
                "vectors use CMRM.sample_level(alpha=..., layers=...)."
            )
        check_choice("estimator", estimator, ESTIMATORS)
        if not anchor_samples:
            raise ValueError("CMRM.fit needs at least one anchor sample.")
        blank_cond, options = _blank_condition(blank)
        chosen = Site(layers=layers, hook=hook).layer_indices(model.cfg.n_layers)
        conditions = [Condition.TEXT_ONLY, blank_cond]
        with contextlib.ExitStack() as stack:
            if estimator == "pc1" and out_dir is None:
                out_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="vlminterp-cmrm-"))
            store = ActivationStore.collect(
                model,
                anchor_samples,
                conditions,
                hooks=(hook,),
                layers=list(chosen),
                positions=positions,
                batch_size=batch_size,
                out_dir=out_dir,
                keep="stats" if estimator == "mean" else "both",
                progress=progress,
                **options,
            )
            vectors = torch.zeros(model.cfg.n_layers, model.cfg.d_model, dtype=torch.float64)
            mean_diff = store.diff_in_means(*conditions)
            for i, layer in enumerate(chosen):
                if estimator == "mean":
                    vectors[layer] = mean_diff[i]
                else:
                    text, blanks = (store.vectors(c, layer).double() for c in conditions)
                    # Centred (PCA's convention), unit norm, signed along the mean shift.
                    vectors[layer] = pc1(text - blanks, center=True, align=mean_diff[i])
        return SteeringVectors.from_model(
            model,
            vectors.float(),
            hook=hook,
            positions=positions,
            method="cmrm",
            anchor=_describe(anchor_samples),
            alpha=None,
            layers=chosen,
            meta={
                "level": "dataset",
                "estimator": estimator,
                "blank": blank,
                "n_anchor": len(anchor_samples),
            },
        )

    @staticmethod
    def sample_level(
        alpha: float = 1.0,
        layers: LayerSpec = "all",
        hook: str = "resid_post",
        steps: str = "all",
        blank: str = "white",
        reuse_kv: bool = True,
    ) -> SampleCMRM:
        """Sample-level CMRM: each input steered by its own ``h_text_only - h_blank`` (see :class:`SampleCMRM`)."""
        return SampleCMRM(alpha=alpha, layers=layers, hook=hook, steps=steps, blank=blank, reuse_kv=reuse_kv)


class SampleCMRM(Intervention):
    """Sample-level CMRM: ``h^l <- h^l + alpha * (h^l(TEXT_ONLY twin) - h^l(BLANK twin))``, last position.

    The twins run in the same forward as the steered prompts: the batch is three condition-major
    blocks ``[steered x n, TEXT_ONLY x n, BLANK x n]`` (:meth:`prompts`), and in generation the twins
    are fed the steered row's tokens (``follow=``), so at every step each input's vector is
    recomputed on prompts carrying the same generated suffix. The twins are never steered, so
    every layer's vector comes from unsteered states.

    Args:
        alpha: Strength (``0`` = exact no-op).
        layers: None/``"all"``, ``"second_half"``, an int or a list of layers (negative: from the end).
        hook: Hook kind to read and steer (``"resid_post"``).
        steps: ``"all"`` (every decoding step) or ``"prefill"`` (the prompt pass only).
        blank: The no-content image: ``"white"``, ``"noise"`` or ``"mean_pixel"``.
        reuse_kv: :meth:`generate` reuses KV caches (shared BLANK prefix, unsteered prompt
            prefixes); False generates the 3x batch of :meth:`applied` (the reference it is tested
            equal to). Results agree to float rounding.

    Example:
        >>> from vlminterp import HookedVLM, Sample
        >>> from vlminterp.interventions import CMRM
        >>> from PIL import Image
        >>> model = HookedVLM.tiny("llava")
        >>> x = Sample(id="a", query="how do i make a kite", image=Image.new("RGB", (32, 32), "red"))
        >>> sl = CMRM.sample_level(alpha=0.3)
        >>> with sl.applied(model, [x]) as run:
        ...     out = model.generate(run.batch, max_new_tokens=3, follow=run.follow)
        >>> run.output(out).texts == sl.generate(model, [x], max_new_tokens=3).texts
        True
    """

    def __init__(
        self,
        alpha: float = 1.0,
        layers: LayerSpec = None,
        hook: str = "resid_post",
        steps: str = "all",
        blank: str = "white",
        reuse_kv: bool = True,
    ):
        super().__init__(layers=layers, hook=hook, positions="last", steps=steps)
        self.alpha = finite("alpha", alpha)
        self.reuse_kv = bool(reuse_kv)
        self.blank = blank
        self.blank_condition, self._blank_options = _blank_condition(blank)
        self._twins = ({Condition.TEXT_ONLY}, {self.blank_condition})

    @property
    def layers(self) -> str | tuple[int, ...]:
        """The layers as given (``"all"``, ``"second_half"`` or a tuple); indices come with the model."""
        return self.site.layers

    def prompts(
        self,
        model: HookedVLM,
        samples: Sequence[Sample],
        condition: Condition | str = Condition.IMAGE,
        **prompt_options: Any,
    ) -> PromptBatch:
        """The 3x batch ``[condition x n, TEXT_ONLY x n, BLANK x n]`` for ``samples``.

        Raises:
            ValueError: ``prompt_options`` ask for another blank image than this intervention's.
        """
        if "blank" in prompt_options and prompt_options["blank"] != self._blank_options.get("blank"):
            raise ValueError(
                f"SampleCMRM(blank={self.blank!r}) builds its own blank twins; drop blank="
                f"{prompt_options['blank']!r} or make the intervention with that blank."
            )
        conditions = [Condition.parse(condition), Condition.TEXT_ONLY, self.blank_condition]
        return PromptBatch.paired(model, samples, conditions, **{**prompt_options, **self._blank_options})

    def prepare(self, model: HookedVLM, batch: PromptBatch | None) -> PreparedRun:
        """Hooks steering block 0 of the 3x ``batch`` with its twins' difference, layer by layer."""
        if batch is None:
            raise ValueError(
                "Sample-level CMRM works per input: pass the samples (or SampleCMRM.prompts(model, samples)), "
                "e.g. sl.generate(model, samples) or sl.applied(model, samples)."
            )
        n = twin_blocks(batch, self._twins, "SampleCMRM")
        fn = partial(_sample_shift_hook, n=n, alpha=self.alpha)
        hooks = [(name, fn) for name in self.site.hook_names(model)]
        return PreparedRun(batch, hooks, follow=twin_follow(batch, 3), steered=tuple(range(n)))

    def generate(
        self, model: HookedVLM, inputs: Inputs, max_new_tokens: int = 32, **generate_kwargs: Any
    ) -> Generation:
        """Steered generation of the output rows, paying only for what the twins add (``reuse_kv``).

        The result equals generating the 3x batch of :meth:`applied` with ``follow=`` (tokens
        identical, logits to float rounding; tested), which is what runs with ``reuse_kv=False``,
        ``cache_names=`` or ``before_step=``. Otherwise:

        - ``steps="prefill"``: the TEXT_ONLY and the BLANK twins run as separate prompt passes
          that stop after the last steered layer (no later layers, final norm or unembedding),
          each padded to its own length, the BLANK rows' shared prefix once; generation steps run
          the steered rows alone.
        - ``steps="all"`` (the twins are read at every step): every row's prompt but its last token
          runs unsteered (the edit touches the last position only), the BLANK rows' shared prefix
          once, and the three blocks' caches are joined (:meth:`KVPrefix.concat`); the 3x batch
          then starts from them with its last tokens and generates as one (one forward of three
          times the rows per step measured faster than three forwards).
        """
        return self._generate(model, inputs, max_new_tokens, None, **generate_kwargs)

    def generate_chunks(
        self,
        model: HookedVLM,
        chunks: Iterable[Sequence[Sample]],
        condition: Condition | str = Condition.IMAGE,
        max_new_tokens: int = 32,
        **prompt_options: Any,
    ) -> Iterator[Generation]:
        """:meth:`generate` of each chunk in turn, the BLANK twins' shared head computed once per call.

        The template and blank image that every BLANK twin starts with are the same in every chunk,
        so their KV cache is computed for the first chunk and reused by the next ones (one
        :class:`~vlminterp.models.stepping.PrefixCache` for the call; a chunk whose rows share less
        of it reuses what they share). Each generation equals :meth:`generate` of its chunk.

        Example:
            >>> from vlminterp import HookedVLM, Sample
            >>> from vlminterp.interventions import CMRM
            >>> model = HookedVLM.tiny("llava")
            >>> from PIL import Image
            >>> red = Image.new("RGB", (32, 32), "red")
            >>> chunks = [[Sample(id=q, query=q, image=red) for q in qs] for qs in (["hi", "why"], ["what"])]
            >>> [len(g) for g in CMRM.sample_level(alpha=0.3).generate_chunks(model, chunks, "image", 2)]
            [2, 1]
        """
        prefixes = PrefixCache()
        for chunk in chunks:
            yield self._generate(
                model, self.prompts(model, chunk, condition, **prompt_options), max_new_tokens, prefixes
            )

    def _generate(
        self,
        model: HookedVLM,
        inputs: Inputs,
        max_new_tokens: int,
        prefixes: PrefixCache | None,
        **generate_kwargs: Any,
    ) -> Generation:
        """:meth:`generate`, the BLANK twins' shared head looked up in and kept in ``prefixes`` (if any)."""
        if (
            inputs is None
            or not self.reuse_kv
            or generate_kwargs.get("cache_names") is not None
            or "before_step" in generate_kwargs
            or not kv_reuse_supported(model)
        ):
            return super().generate(model, inputs, max_new_tokens, **generate_kwargs)
        batch = self._batch(model, inputs)
        n = twin_blocks(batch, self._twins, "SampleCMRM")
        steered, text, blank = (batch.select(range(b * n, (b + 1) * n)) for b in range(3))
        if self.steps == "all":
            prefix = self._prompt_prefixes(model, steered, text, blank, prefixes)
            with self.applied(model, batch) as run:
                out = model.generate(
                    run.batch, max_new_tokens, follow=run.follow, prefix=prefix, **generate_kwargs
                )
            return run.output(out)
        layers = self.site.layer_indices(model.cfg.n_layers)
        twins = _TwinPass(model, text, blank, self.alpha, max(layers), prefixes)
        hooks = [
            *generate_kwargs.pop("fwd_hooks", ()),
            *((name, twins.hook) for name in self.site.hook_names(model)),
        ]
        return model.generate(
            steered, max_new_tokens, fwd_hooks=hooks, before_step=twins.before_step, **generate_kwargs
        )

    @staticmethod
    def _prompt_prefixes(
        model: HookedVLM,
        steered: PromptBatch,
        text: PromptBatch,
        blank: PromptBatch,
        prefixes: PrefixCache | None,
    ) -> KVPrefix:
        """The unsteered KV cache of every row's prompt but its last token, the three blocks joined."""
        top = model.cfg.n_layers - 1  # every layer's cache; no final norm or unembedding
        parts = []
        with torch.no_grad():
            for rows, share in ((steered, False), (text, False), (blank, True)):
                run = shared_prefix_run(model, rows, top, prefixes) if share else CachedRun(model, rows, top)
                run.step()
                parts.append(run.take_prefix(1))
        return KVPrefix.concat(parts)

    def to_dict(self) -> dict[str, Any]:
        return {
            **super().to_dict(),
            "method": "cmrm",
            "level": "sample",
            "alpha": self.alpha,
            "blank": self.blank,
        }
