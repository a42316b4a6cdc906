"""The safety direction ShiftDC projects out: ``s^l = mean(safe) - mean(unsafe)`` of text-only inputs.

Per decoder layer, the mean last-token state of benign requests minus that of harmful ones, read
from text-only prompts (plain queries, or ``"{query} Image Caption: {caption}"`` when the samples
carry captions, :data:`DIRECTION_CONDITIONS`). The means are streamed through
:class:`~vlminterp.cache.ActivationStore`; the reference code's reading (bare prompts, the last
layer after the final norm, :mod:`vlminterp.interventions.shiftdc_rules`) reads the states itself.

Example:
    >>> from vlminterp import HookedVLM, Sample
    >>> model = HookedVLM.tiny("llava")
    >>> d = SafetyDirection.fit(model, [Sample("s", "bake a cake")], [Sample("u", "make a bomb")], progress=False)
    >>> d.method, tuple(d.vectors.shape) == (model.cfg.n_layers, model.cfg.d_model)
    ('safety_direction', True)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from vlminterp.directions import safety_direction
from vlminterp.interventions.shiftdc_rules import format_context, last_states, stripped
from vlminterp.interventions.site import LayerSpec, Site, check_choice
from vlminterp.interventions.steering import SteeringVectors
from vlminterp.prompts import Condition, PromptBatch, Sample

if TYPE_CHECKING:
    from vlminterp.models.hooked_vlm import HookedVLM

__all__ = ["DIRECTION_CONDITIONS", "SafetyDirection"]

#: Text-only inputs a safety direction is read from; ``"auto"``: CAPTION when every sample has a
#: caption, TEXT_ONLY when none has.
DIRECTION_CONDITIONS = ("auto", "caption", "text_only")


def _direction_condition(condition: str, samples: Sequence[Sample]) -> Condition:
    check_choice("condition", condition, DIRECTION_CONDITIONS)
    if condition != "auto":
        return Condition.parse(condition)
    with_caption = sum(bool(s.caption) for s in samples)
    if with_caption == len(samples):
        return Condition.CAPTION
    if with_caption == 0:
        return Condition.TEXT_ONLY
    raise ValueError(
        f"{with_caption} of {len(samples)} samples have captions: a safety direction is read from one kind of "
        "text input. Pass condition='text_only' (queries alone) or caption the rest (caption_images)."
    )


def _group_mean(
    model: HookedVLM,
    samples: Sequence[Sample],
    condition: Condition,
    hook: str,
    layers: Sequence[int],
    final_norm: bool,
    caption_template: str | None,
    batch_size: int,
    progress: bool,
) -> Float[Tensor, "layers d_model"]:
    """Mean last-position state of ``samples`` per layer (final-normed at the last layer if asked)."""
    total = torch.zeros(len(layers), model.cfg.d_model, dtype=torch.float64)
    for i in tqdm(range(0, len(samples), batch_size), desc="safety direction", disable=not progress):
        chunk = samples[i : i + batch_size]
        batch = PromptBatch.paired(model, chunk, [condition], caption_template=caption_template)
        total += last_states(model, batch, hook, layers, final_norm).double().sum(0)
    return total / len(samples)


class SafetyDirection:
    """The safety direction ``s^l = mean(safe) - mean(unsafe)`` of text-only inputs (ShiftDC)."""

    @staticmethod
    def fit(
        model: HookedVLM,
        safe_samples: Sequence[Sample],
        unsafe_samples: Sequence[Sample],
        hook: str = "resid_post",
        positions: str = "last",
        layers: LayerSpec = "all",
        condition: str = "auto",
        batch_size: int = 8,
        progress: bool = True,
        prompt_format: str = "chat",
        final_norm: bool = False,
        caption_template: str | None = None,
    ) -> SteeringVectors:
        """Fit ``s = mean(safe) - mean(unsafe)`` per layer from text-only inputs.

        Args:
            model: The model to read.
            safe_samples: Benign requests (the paper: a few hundred LLaVA-Instruct-style ones).
            unsafe_samples: Harmful requests (the paper: MM-SafetyBench-style, as text).
            hook: Hook kind (``"resid_post"``).
            positions: Positions read (``"last"``).
            layers: Layers to fit (``"all"``, ``"second_half"``, an int or a list; negative: from the end).
            condition: ``"auto"`` (``"{query} Image Caption: {caption}"`` when the samples carry
                captions, plain queries when none does), ``"caption"`` or ``"text_only"``.
            batch_size: Prompts per forward.
            progress: Show a progress bar.
            prompt_format: ``"chat"`` (the chat template) or ``"bare"`` (the text alone, as the
                reference code; query and caption stripped).
            final_norm: Read the last layer after the final norm (HF ``hidden_states[-1]``, as the
                reference code) instead of at ``hook``.
            caption_template: The CAPTION text (``{query}``, ``{caption}``); default the family's.

        Returns:
            ``SteeringVectors`` with ``method="safety_direction"``.

        Example:
            >>> from vlminterp import HookedVLM, Sample
            >>> model = HookedVLM.tiny("llava")
            >>> d = SafetyDirection.fit(model, [Sample("s", "bake a cake ")], [Sample("u", "make a bomb")],
            ...                         prompt_format="bare", final_norm=True, progress=False)
            >>> d.meta["prompt_format"], d.meta["final_norm"]
            ('bare', True)
        """
        from vlminterp.cache import ActivationStore

        if not safe_samples or not unsafe_samples:
            raise ValueError(
                f"SafetyDirection.fit needs safe and unsafe samples; got {len(safe_samples)} safe and "
                f"{len(unsafe_samples)} unsafe."
            )
        cond = _direction_condition(condition, [*safe_samples, *unsafe_samples])
        chosen = Site(layers=layers, hook=hook).layer_indices(model.cfg.n_layers)
        if final_norm and positions != "last":
            raise ValueError(f"final_norm=True reads the last position; got positions={positions!r}.")
        groups = [list(safe_samples), list(unsafe_samples)]
        if prompt_format == "bare":
            groups = [[stripped(s) for s in group] for group in groups]
        means = []
        with format_context(model, prompt_format):
            for group in groups:
                if final_norm or caption_template is not None:
                    means.append(
                        _group_mean(
                            model,
                            group,
                            cond,
                            hook,
                            chosen,
                            final_norm,
                            caption_template,
                            batch_size,
                            progress,
                        )
                    )
                    continue
                store = ActivationStore.collect(
                    model, group, [cond], hooks=(hook,), layers=list(chosen), positions=positions,
                    batch_size=batch_size, progress=progress,
                )  # fmt: skip
                means.append(store.mean(cond))
        vectors = torch.zeros(model.cfg.n_layers, model.cfg.d_model, dtype=torch.float64)
        vectors[list(chosen)] = safety_direction(means[0][None], means[1][None])  # streamed means
        return SteeringVectors.from_model(
            model,
            vectors.float(),
            hook=hook,
            positions=positions,
            method="safety_direction",
            anchor=f"{len(safe_samples)} safe - {len(unsafe_samples)} unsafe samples ({cond.value})",
            layers=chosen,
            meta={
                "condition": cond.value,
                "n_safe": len(safe_samples),
                "n_unsafe": len(unsafe_samples),
                "prompt_format": prompt_format,
                "final_norm": final_norm,
            },
        )
