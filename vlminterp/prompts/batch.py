"""Left-padded prompt batches with per-token role masks, built from paired conditions.

Shape glossary: ``batch`` rows (one per (condition, sample) pair), ``pos`` token positions after
left padding (the last real token of every row is at ``pos - 1``).

Role masks (bool ``[batch, pos]``), so analyses never search strings:

- ``image``: image placeholder tokens (filled with image features by the model).
- ``instruction``: the user's text (the query; for CAPTION the whole ``query + caption`` text) as
  the chat template inserts it: verbatim, or without its surrounding whitespace where the template
  trims it (Gemma 3's ``| trim``), so the tokens are the template's own.
- ``template``: every other real prompt token (BOS, role markers, generation prompt).
- ``generated``: tokens appended after the prompt by :meth:`PromptBatch.with_suffix`.

Example:
    >>> from vlminterp import HookedVLM, Sample, Condition, PromptBatch
    >>> model = HookedVLM.tiny("llava")
    >>> from PIL import Image
    >>> s = Sample(id="s0", query="what color is the car ?", image=Image.new("RGB", (40, 30), "red"))
    >>> batch = PromptBatch.paired(model, [s], [Condition.IMAGE, Condition.TEXT_ONLY])
    >>> batch.conditions, int(batch.image_mask[1].sum())
    ([<Condition.IMAGE: 'image'>, <Condition.TEXT_ONLY: 'text_only'>], 0)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Bool, Int
from torch import Tensor

from vlminterp.prompts.encoding import ROLE_NAMES, encode_row, encode_rows
from vlminterp.prompts.rows import PromptRow
from vlminterp.prompts.samples import Condition, Sample

if TYPE_CHECKING:
    from vlminterp.models.hooked_vlm import HookedVLM

__all__ = ["PromptBatch"]


@dataclass
class PromptBatch:
    """A left-padded batch of prompts with role masks, ready for ``HookedVLM``.

    Build it with :meth:`paired` (from samples) or :meth:`from_rows`. Rows are ordered
    condition-major: all samples under the first condition, then the second, ...

    Attributes:
        input_ids: Token ids, left-padded.
        attention_mask: 1 for real tokens, 0 for padding.
        masks: Role masks ``image``, ``instruction``, ``template``, ``generated``.
        row_images: Per row, the processor's image tensors (``pixel_values``, ...) or None.
        token_inputs: Per-token processor outputs the family's model takes (``token_type_ids``,
            ``mm_token_type_ids``), left-padded with 0 like ``input_ids``.
        conditions: Condition of every row.
        sample_ids: Sample id of every row.
        labels: Sample label of every row.
        texts: Rendered prompt text of every row (before image-token expansion).
        family: Family name of the model the batch was built for.
    """

    input_ids: Int[Tensor, "batch pos"]
    attention_mask: Int[Tensor, "batch pos"]
    masks: dict[str, Bool[Tensor, "batch pos"]]
    row_images: list[dict[str, Tensor] | None]
    token_inputs: dict[str, Int[Tensor, "batch pos"]]
    conditions: list[Condition]
    sample_ids: list[str]
    labels: list[str | None]
    texts: list[str]
    family: str
    explicit_position_ids: bool = True
    pad_token_id: int = 0

    # ------------------------------------------------------------------ construction
    @classmethod
    def paired(
        cls,
        model: HookedVLM,
        samples: Sequence[Sample],
        conditions: Sequence[Condition | str],
        *,
        blank: str | tuple[int, int, int] = "white",
        noise_seed: int = 0,
        caption_template: str | None = None,
    ) -> PromptBatch:
        """Prompts for every (condition, sample) pair, with the model family's chat template.

        Args:
            model: The model whose processor and family rules are used.
            samples: The requests.
            conditions: Conditions to build, e.g. ``[Condition.IMAGE, Condition.TEXT_ONLY]``.
            blank: Colour of BLANK images (a PIL colour, an RGB tuple, or ``"mean_pixel"`` of the image).
            noise_seed: Seed of NOISE images (each sample gets its own stream from it).
            caption_template: CAPTION text, default the family's (``"{query} Image Caption: {caption}"``).

        Returns:
            A PromptBatch of ``len(conditions) * len(samples)`` rows, condition-major.
        """
        if not samples:
            raise ValueError("PromptBatch.paired needs at least one sample.")
        conds = [Condition.parse(c) for c in conditions]
        if not conds:
            raise ValueError(
                f"PromptBatch.paired needs at least one condition; choose from {list(Condition)}."
            )
        options = {"blank": blank, "noise_seed": noise_seed, "caption_template": caption_template}
        rows = [PromptRow.from_sample(model, s, cond, **options) for cond in conds for s in samples]
        return cls.from_rows(model, rows)

    @classmethod
    def from_rows(cls, model: HookedVLM, rows: Sequence[PromptRow], *, batched: bool = True) -> PromptBatch:
        """Tokenise explicit rows with the model's processor and pad them on the left.

        Args:
            model: The model whose processor and family rules are used.
            rows: The prompt rows, in batch order.
            batched: One processor call for all rows (:func:`~vlminterp.prompts.encoding.encode_rows`),
                else one per row; both build the same batch.
        """
        if not rows:
            raise ValueError("PromptBatch.from_rows needs at least one row.")
        pad = model.tokenizer.pad_token_id
        if pad is None:
            raise ValueError(
                "The model's tokenizer has no pad_token_id; set tokenizer.pad_token before batching."
            )
        encoded = encode_rows(model, rows) if batched else [encode_row(model, r) for r in rows]
        length = max(len(e[0]) for e in encoded)
        n = len(rows)
        ids = torch.full((n, length), pad, dtype=torch.long)
        attn = torch.zeros((n, length), dtype=torch.long)
        masks = {k: torch.zeros((n, length), dtype=torch.bool) for k in ROLE_NAMES}
        tokens = {k: torch.zeros((n, length), dtype=torch.long) for k in model.family_rules.token_kwargs}
        images: list[dict[str, Tensor] | None] = []
        for i, (row_ids, row_masks, row_images, row_tokens) in enumerate(encoded):
            t = len(row_ids)
            ids[i, length - t :] = row_ids
            attn[i, length - t :] = 1
            for k, m in row_masks.items():
                masks[k][i, length - t :] = m
            for k, v in row_tokens.items():
                tokens[k][i, length - t :] = v
            images.append(row_images)
        return cls(
            input_ids=ids,
            attention_mask=attn,
            masks=masks,
            row_images=images,
            token_inputs=tokens,
            conditions=[r.condition for r in rows],
            sample_ids=[r.sample_id for r in rows],
            labels=[r.label for r in rows],
            texts=[r.text for r in rows],
            family=model.family,
            explicit_position_ids=model.family_rules.explicit_position_ids,
            pad_token_id=pad,
        )

    # ------------------------------------------------------------------ views
    def __len__(self) -> int:
        return self.input_ids.shape[0]

    @property
    def image_mask(self) -> Bool[Tensor, "batch pos"]:
        return self.masks["image"]

    @property
    def instruction_mask(self) -> Bool[Tensor, "batch pos"]:
        return self.masks["instruction"]

    @property
    def template_mask(self) -> Bool[Tensor, "batch pos"]:
        return self.masks["template"]

    @property
    def generated_mask(self) -> Bool[Tensor, "batch pos"]:
        return self.masks["generated"]

    @property
    def position_ids(self) -> Int[Tensor, "batch pos"]:
        """Positions counted over real tokens (padding gets 1, as in HF ``generate``)."""
        pos = self.attention_mask.cumsum(-1) - 1
        return pos.masked_fill(self.attention_mask == 0, 1)

    @property
    def image_inputs(self) -> dict[str, Tensor]:
        """The image tensors of the image rows, concatenated in row order."""
        present = [r for r in self.row_images if r is not None]
        if not present:
            return {}
        return {k: _cat_padded([r[k] for r in present]) for k in present[0]}

    def model_kwargs(self) -> dict[str, Tensor]:
        """Keyword arguments for the HF/bridge forward (except ``input_ids``)."""
        kwargs: dict[str, Tensor] = {
            "attention_mask": self.attention_mask,
            **self.image_inputs,
            **self.token_inputs,
        }
        if self.explicit_position_ids:
            kwargs["position_ids"] = self.position_ids
        return kwargs

    def rows(self, condition: Condition | str) -> list[int]:
        """Indices of the rows built under ``condition``."""
        cond = Condition.parse(condition)
        return [i for i, c in enumerate(self.conditions) if c == cond]

    def select(self, index: Sequence[int] | slice) -> PromptBatch:
        """A batch of the chosen rows (columns that are padding in every chosen row are dropped)."""
        idx = list(range(len(self)))[index] if isinstance(index, slice) else list(index)
        if not idx:
            raise ValueError("PromptBatch.select needs at least one row.")
        t = torch.tensor(idx, dtype=torch.long)
        attn = self.attention_mask[t]
        keep = int(attn.sum(-1).max())
        cols = slice(attn.shape[1] - keep, None)
        return replace(
            self,
            input_ids=self.input_ids[t][:, cols],
            attention_mask=attn[:, cols],
            masks={k: m[t][:, cols] for k, m in self.masks.items()},
            token_inputs={k: v[t][:, cols] for k, v in self.token_inputs.items()},
            row_images=[self.row_images[i] for i in idx],
            conditions=[self.conditions[i] for i in idx],
            sample_ids=[self.sample_ids[i] for i in idx],
            labels=[self.labels[i] for i in idx],
            texts=[self.texts[i] for i in idx],
        )

    def split(self, batch_size: int) -> list[PromptBatch]:
        """Consecutive sub-batches of at most ``batch_size`` rows."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
        return [self.select(slice(i, i + batch_size)) for i in range(0, len(self), batch_size)]

    @classmethod
    def concat(cls, batches: Sequence[PromptBatch]) -> PromptBatch:
        """One batch of the rows of ``batches`` in order, left-padded to the longest (same family).

        Example:
            >>> from vlminterp import HookedVLM, Sample, Condition
            >>> model = HookedVLM.tiny("llava")
            >>> a = PromptBatch.paired(model, [Sample(id="a", query="hi")], [Condition.TEXT_ONLY])
            >>> b = PromptBatch.paired(model, [Sample(id="b", query="how do i make a kite")], [Condition.TEXT_ONLY])
            >>> both = PromptBatch.concat([a, b])
            >>> both.sample_ids, both.input_ids.shape[1] == b.input_ids.shape[1] > a.input_ids.shape[1]
            (['a', 'b'], True)
        """
        if not batches:
            raise ValueError("PromptBatch.concat needs at least one batch.")
        first = batches[0]
        if any(b.family != first.family for b in batches):
            raise ValueError(
                f"PromptBatch.concat: batches of families {sorted({b.family for b in batches})}; build them for one model."
            )
        length = max(b.input_ids.shape[1] for b in batches)

        def cat(get: Any, value: Any) -> Tensor:
            parts = []
            for b in batches:
                t = get(b)
                padded = torch.full((t.shape[0], length), value, dtype=t.dtype)
                padded[:, length - t.shape[1] :] = t
                parts.append(padded)
            return torch.cat(parts)

        return replace(
            first,
            input_ids=cat(lambda b: b.input_ids, first.pad_token_id),
            attention_mask=cat(lambda b: b.attention_mask, 0),
            masks={k: cat(lambda b, k=k: b.masks[k], False) for k in first.masks},
            token_inputs={k: cat(lambda b, k=k: b.token_inputs[k], 0) for k in first.token_inputs},
            row_images=[r for b in batches for r in b.row_images],
            conditions=[c for b in batches for c in b.conditions],
            sample_ids=[i for b in batches for i in b.sample_ids],
            labels=[lab for b in batches for lab in b.labels],
            texts=[t for b in batches for t in b.texts],
        )

    def with_suffix(self, suffix: Sequence[Sequence[int]]) -> PromptBatch:
        """The batch with ``suffix[i]`` appended to row ``i`` (marked ``generated``), re-padded on the left."""
        if len(suffix) != len(self):
            raise ValueError(f"with_suffix needs one token list per row ({len(self)}), got {len(suffix)}.")
        extra = max((len(s) for s in suffix), default=0)
        n, t = self.input_ids.shape
        ids = torch.full((n, t + extra), self.pad_token_id, dtype=torch.long)
        attn = torch.zeros((n, t + extra), dtype=torch.long)
        masks = {k: torch.zeros((n, t + extra), dtype=torch.bool) for k in ROLE_NAMES}
        tokens = {k: torch.zeros((n, t + extra), dtype=v.dtype) for k, v in self.token_inputs.items()}
        for i, s in enumerate(suffix):
            shift = extra - len(s)  # left-pad shorter suffixes so every row ends at the last column
            ids[i, shift : shift + t] = self.input_ids[i]
            attn[i, shift : shift + t] = self.attention_mask[i]
            for k in ROLE_NAMES:
                masks[k][i, shift : shift + t] = self.masks[k][i]
            for k, v in self.token_inputs.items():
                tokens[k][i, shift : shift + t] = v[i]
            if s:
                ids[i, t + shift :] = torch.as_tensor(list(s), dtype=torch.long)
                attn[i, t + shift :] = 1
                masks["generated"][i, t + shift :] = True
        return replace(self, input_ids=ids, attention_mask=attn, masks=masks, token_inputs=tokens)

    def to_dict(self) -> dict[str, Any]:
        """Row metadata (no tensors) for results files."""
        return {
            "family": self.family,
            "conditions": [c.value for c in self.conditions],
            "sample_ids": list(self.sample_ids),
            "labels": list(self.labels),
        }


def _cat_padded(tensors: Sequence[Tensor]) -> Tensor:
    """Concatenate per-image tensors on dim 0, zero-padding every other dim to the largest.

    Processors pad a batch the same way (LLaVA-NeXT tiles, Idefics3 crops, Pixtral height and
    width); the models drop the padding using ``image_sizes`` / all-zero crops.
    """
    shape = [max(t.shape[d] for t in tensors) for d in range(1, tensors[0].dim())]
    padded = []
    for t in tensors:
        pad: list[int] = []
        for d in reversed(range(1, t.dim())):
            pad += [0, shape[d - 1] - t.shape[d]]
        padded.append(torch.nn.functional.pad(t, pad) if any(pad) else t)
    return torch.cat(padded, dim=0)
