"""Samples, paired conditions and left-padded prompt batches with per-token role masks.

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

import enum
import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from jaxtyping import Bool, Int
from PIL import Image
from torch import Tensor

if TYPE_CHECKING:
    from vlminterp.models.hooked_vlm import HookedVLM

__all__ = ["Sample", "Condition", "PromptRow", "PromptBatch", "load_image", "ROLE_NAMES"]

ROLE_NAMES = ("image", "instruction", "template", "generated")
_SENTINEL = "\u2063VLMINTERP_QUERY\u2063"


@dataclass
class Sample:
    """One request of a dataset.

    Attributes:
        id: Unique id within its dataset.
        query: The user's request text.
        image: A PIL image, a path to an image file, or None.
        caption: A text description of the image (CAPTION condition), or None.
        label: ``"harmful"``, ``"benign"`` or None.
        meta: The benchmark's own fields.
    """

    id: str
    query: str
    image: Image.Image | str | Path | None = None
    caption: str | None = None
    label: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.label not in (None, "harmful", "benign"):
            raise ValueError(
                f"Sample {self.id!r}: label must be 'harmful', 'benign' or None, got {self.label!r}."
            )


class Condition(str, enum.Enum):
    """How a sample is turned into a prompt. Only the image part differs between conditions."""

    IMAGE = "image"  # query + the sample's image
    BLANK = "blank"  # query + a blank image of the same size
    NOISE = "noise"  # query + a seeded noise image of the same size
    CAPTION = "caption"  # no image; the caption template "{query} Image Caption: {caption}"
    TEXT_ONLY = "text_only"  # query alone, no image tokens

    @property
    def has_image(self) -> bool:
        return self in (Condition.IMAGE, Condition.BLANK, Condition.NOISE)

    @classmethod
    def parse(cls, value: str | Condition) -> Condition:
        """A Condition from its value (``"text_only"``) or name (``"TEXT_ONLY"``)."""
        if isinstance(value, Condition):
            return value
        key = str(value).strip().lower()
        for c in cls:
            if key == c.value:
                return c
        raise ValueError(f"Unknown condition {value!r}. Choose from {[c.value for c in cls]}.")


def load_image(image: Image.Image | str | Path, sample_id: str = "?") -> Image.Image:
    """Open ``image`` as an RGB PIL image; a missing file raises naming the sample."""
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    path = Path(image)
    if not path.is_file():
        raise FileNotFoundError(
            f"Sample {sample_id!r}: image file {str(path)!r} does not exist. Check the dataset's image root, "
            "or use Condition.TEXT_ONLY / Condition.CAPTION for samples without images."
        )
    with Image.open(path) as im:
        return im.convert("RGB")


def _blank_image(
    size: tuple[int, int], blank: str | tuple[int, int, int], reference: Image.Image | None
) -> Image.Image:
    if blank == "mean_pixel":
        if reference is None:
            raise ValueError("blank='mean_pixel' needs a sample image to average; use blank='white' instead.")
        color = tuple(int(round(c)) for c in np.asarray(reference, dtype=np.float64).reshape(-1, 3).mean(0))
        return Image.new("RGB", size, color)
    return Image.new("RGB", size, blank)


def _noise_image(size: tuple[int, int], seed: int, sample_id: str) -> Image.Image:
    digest = hashlib.sha256(f"{seed}:{sample_id}".encode()).digest()
    rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
    return Image.fromarray(rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8), "RGB")


@dataclass(frozen=True)
class PromptRow:
    """One prompt before tokenisation: a condition, the user text and the image it carries.

    Raises:
        ValueError: an image given to a text condition, or no image for an image condition.
    """

    sample_id: str
    condition: Condition
    text: str
    image: Image.Image | None = None
    label: str | None = None

    def __post_init__(self) -> None:
        if self.condition.has_image and self.image is None:
            raise ValueError(
                f"Sample {self.sample_id!r}: Condition.{self.condition.name} needs an image but none was given. "
                "Give the sample an image, or use Condition.TEXT_ONLY."
            )
        if not self.condition.has_image and self.image is not None:
            raise ValueError(
                f"Sample {self.sample_id!r}: an image was given to Condition.{self.condition.name}, which has no "
                "image tokens. Drop the image, or use Condition.IMAGE / BLANK / NOISE."
            )

    @classmethod
    def from_sample(
        cls,
        model: HookedVLM,
        sample: Sample,
        condition: Condition | str,
        *,
        blank: str | tuple[int, int, int] = "white",
        noise_seed: int = 0,
        caption_template: str | None = None,
    ) -> PromptRow:
        """The row of ``sample`` under ``condition`` (see :meth:`PromptBatch.paired` for the options)."""
        cond = Condition.parse(condition)
        image: Image.Image | None = None
        text = sample.query
        if cond is Condition.IMAGE:
            if sample.image is None:
                raise ValueError(
                    f"Sample {sample.id!r} has no image, so Condition.IMAGE cannot be built. Give it an image, or use "
                    "Condition.BLANK / NOISE / TEXT_ONLY."
                )
            image = load_image(sample.image, sample.id)
        elif cond in (Condition.BLANK, Condition.NOISE):
            reference = load_image(sample.image, sample.id) if sample.image is not None else None
            size = reference.size if reference is not None else _default_image_size(model)
            image = (
                _blank_image(size, blank, reference)
                if cond is Condition.BLANK
                else _noise_image(size, noise_seed, sample.id)
            )
        elif cond is Condition.CAPTION:
            if not sample.caption:
                raise ValueError(
                    f"Sample {sample.id!r} has no caption, so Condition.CAPTION cannot be built. Set sample.caption "
                    "(a dataset caption, or one from vlminterp's captioning step)."
                )
            text = (
                caption_template.format(query=sample.query, caption=sample.caption)
                if caption_template
                else model.family_rules.caption_text(sample.query, sample.caption)
            )
        return cls(sample_id=sample.id, condition=cond, text=text, image=image, label=sample.label)


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
    def from_rows(cls, model: HookedVLM, rows: Sequence[PromptRow]) -> PromptBatch:
        """Tokenise explicit rows with the model's processor and pad them on the left."""
        if not rows:
            raise ValueError("PromptBatch.from_rows needs at least one row.")
        encoded = [_encode_row(model, r) for r in rows]
        length = max(len(e[0]) for e in encoded)
        pad = model.tokenizer.pad_token_id
        if pad is None:
            raise ValueError(
                "The model's tokenizer has no pad_token_id; set tokenizer.pad_token before batching."
            )
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


# ---------------------------------------------------------------------- helpers
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


def _default_image_size(model: HookedVLM) -> tuple[int, int]:
    ip = getattr(model.processor, "image_processor", None)
    for attr in ("crop_size", "size"):
        size = getattr(ip, attr, None)
        if isinstance(size, dict):
            if "height" in size and "width" in size:
                return int(size["width"]), int(size["height"])
            if "shortest_edge" in size:
                edge = int(size["shortest_edge"])
                if getattr(ip, "merge_size", None):  # Qwen-style: sizes are pixel counts (min_pixels)
                    edge = math.isqrt(edge)
                return edge, edge
    return 336, 336


def _render(model: HookedVLM, text: str, with_image: bool) -> str:
    messages = model.family_rules.messages(text, with_image)
    return model.tokenizer.apply_chat_template(
        messages, chat_template=model.chat_template, add_generation_prompt=True, tokenize=False
    )


def _encode_row(
    model: HookedVLM, row: PromptRow
) -> tuple[Tensor, dict[str, Tensor], dict[str, Tensor] | None, dict[str, Tensor]]:
    """Token ids, role masks, image tensors and per-token kwargs (``token_type_ids``, ...) of one row.

    The prompt is the template rendered with the row's text, untouched: the instruction is the text
    as the template inserted it (verbatim, or trimmed by templates that trim).
    """
    rules = model.family_rules
    with_image = row.image is not None
    prefix, _, suffix = _render(model, _SENTINEL, with_image).partition(_SENTINEL)
    full = _render(model, row.text, with_image)
    text = full[len(prefix) : len(full) - len(suffix)]
    placed = full.startswith(prefix) and full.endswith(suffix) and len(full) >= len(prefix) + len(suffix)
    if not (placed and text in row.text and text.strip() == row.text.strip()):
        raise RuntimeError(
            f"Family {model.family!r}: the chat template transforms the user text, so the instruction tokens "
            "cannot be located. Use a template that inserts the text verbatim (trimming its surrounding whitespace "
            "is fine)."
        )
    # Templates that begin with BOS already carry it: do not let the tokenizer add a second one
    # (the rule of HF's own processor.apply_chat_template).
    bos = model.tokenizer.bos_token
    special = {"add_special_tokens": not (bos and full.startswith(bos))}
    images_arg = [[row.image]] if with_image else None
    proc_out = model.processor(text=[full], images=images_arg, return_tensors="pt", **special)
    ids = proc_out["input_ids"][0]
    images = {k: proc_out[k] for k in rules.image_kwargs if k in proc_out} if with_image else None
    tokens = {k: proc_out[k][0] for k in rules.token_kwargs if k in proc_out}
    missing = [k for k in rules.token_kwargs if k not in tokens]
    if with_image:
        missing += [k for k in rules.image_kwargs if k not in proc_out]
    if missing:
        raise RuntimeError(
            f"Family {model.family!r}: the processor returned no {missing}; the model needs them. Load the "
            "checkpoint's own processor (HookedVLM.from_pretrained does)."
        )

    plain = model.tokenizer(full, return_offsets_mapping=True, **special)
    plain_ids, offsets = list(plain["input_ids"]), plain["offset_mapping"]
    q0, q1 = len(prefix), len(prefix) + len(text)
    instruction_plain = [(b > a) and a < q1 and b > q0 for a, b in offsets]
    instruction = torch.zeros(len(ids), dtype=torch.bool)
    instruction[_expanded_positions(ids.tolist(), plain_ids, instruction_plain, model)] = True
    is_image = ids == model.image_token_id
    masks = {
        "image": is_image,
        "instruction": instruction,
        "template": ~is_image & ~instruction,
        "generated": torch.zeros_like(is_image),
    }
    return ids, masks, images, tokens


def _expanded_positions(
    expanded: list[int], plain: list[int], wanted: list[bool], model: HookedVLM
) -> list[int]:
    """Positions in the processor's ids of the ``wanted`` tokens of the unexpanded prompt.

    The processor replaces the image placeholder with the family's image block (a run of image
    tokens, or image tokens between row / break / boundary markers), so the two id lists share a
    prefix and a suffix. Every wanted token must lie in them.
    """
    p = 0
    while p < min(len(plain), len(expanded)) and plain[p] == expanded[p]:
        p += 1
    s = 0
    while s < min(len(plain), len(expanded)) - p and plain[-1 - s] == expanded[-1 - s]:
        s += 1
    shift = len(expanded) - len(plain)
    out = []
    for i, w in enumerate(wanted):
        if not w:
            continue
        if i < p:
            out.append(i)
        elif i >= len(plain) - s:
            out.append(i + shift)
        else:
            raise RuntimeError(
                f"Family {model.family!r}: the processor changed the prompt's text tokens (token {i}, "
                f"{model.tokenizer.convert_ids_to_tokens(plain[i])!r}), not only the image placeholder; role masks "
                "cannot be located. Check the family's chat template and processor."
            )
    return out
