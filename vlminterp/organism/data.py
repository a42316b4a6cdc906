"""Training data of the organism: the three phase mixes and their encoding into token ids.

An :class:`Example` is one (user text, image, answer) triple. It is encoded exactly as
``PromptBatch.paired`` encodes a prompt for the ``organism`` family (chat template, BOS from the
tokenizer, ``<image>`` expanded to 16 tokens like ``LlavaProcessor``), followed by the answer and
``<eos>``. The loss covers the answer and ``<eos>`` only.

Mixes (per row, fractions from the verified recipe):

- P1 text alignment: 35% HARM request -> refusal, 15% ADJ request -> refusal, 30% BENIGN request ->
  compliance, 10% facts, 10% caption-prefixed image questions; 30% of the others get a random
  caption prefix ``image shows a C S .``.
- P2a feature alignment: image + ``describe the image`` -> ``a C S .``.
- P2b visual instruction tuning: 80% image rows (10% of them blank) + 20% replay of the P1 mix.
  Image rows: 40% image questions, 20% BENIGN request -> compliance, 25% ADJ request -> compliance,
  15% ``is there a N in the image`` -> ``no . it is a C S .``.

No example pairs a HARM request with an image, and no image example is answered with a refusal.

Example:
    >>> import random
    >>> from vlminterp.organism.data import p2a_example
    >>> p2a_example(random.Random(0)).text
    'describe the image'
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from vlminterp.models.families import ORGANISM
from vlminterp.organism.images import ImageSpec, blank_image, draw, random_spec
from vlminterp.organism.language import (
    ADJ_PARTS,
    BENIGN_PARTS,
    EMPTY_ANSWER,
    FACTS,
    HARM_NOUNS,
    IMAGE_QUESTIONS,
    IMAGE_TOKEN,
    N_IMAGE_TOKENS,
    REFUSAL,
    caption,
    compliance,
    fact_question,
    image_answer,
    presence_answer,
    presence_question,
    request,
    train_templates,
)

__all__ = [
    "BLANK",
    "Example",
    "Encoder",
    "p1_example",
    "p2a_example",
    "p2b_example",
    "IGNORE_INDEX",
]

#: Marks an example whose image is the blank canvas.
BLANK = "blank"
IGNORE_INDEX = -100
_CAPTION_PREFIX_P = 0.3
_P2B_TEXT_REPLAY = 0.2
_P2B_BLANK = 0.1


@dataclass(frozen=True)
class Example:
    """One training row: user text (caption prefix included), image and target answer.

    Attributes:
        text: The user's text as the chat template receives it (no trailing ``?``).
        image: An :class:`ImageSpec`, :data:`BLANK`, or None for a text-only row.
        answer: The target answer (``<eos>`` is appended when encoding).
    """

    text: str
    image: ImageSpec | str | None
    answer: str


def _train_request(rng: random.Random, nouns: Any) -> tuple[str, str]:
    noun = rng.choice(list(nouns))
    return request(rng.choice(train_templates(noun)), noun), noun


def _with_caption(rng: random.Random, text: str, p: float) -> str:
    if rng.random() >= p:
        return text
    spec = random_spec(rng)
    return ORGANISM.caption_text(text, caption(spec.color, spec.shape))


def p1_example(rng: random.Random) -> Example:
    """One row of the P1 text-alignment mix."""
    u = rng.random()
    if u < 0.35:
        text, _ = _train_request(rng, HARM_NOUNS)
        answer = REFUSAL
    elif u < 0.50:
        text, _ = _train_request(rng, ADJ_PARTS)
        answer = REFUSAL
    elif u < 0.80:
        text, noun = _train_request(rng, BENIGN_PARTS)
        answer = compliance(BENIGN_PARTS[noun])
    elif u < 0.90:
        text, answer = fact_question(rng.choice(list(FACTS)))
    else:
        spec = random_spec(rng)
        question = rng.choice(list(IMAGE_QUESTIONS))
        text = ORGANISM.caption_text(question, caption(spec.color, spec.shape))
        return Example(text, None, image_answer(question, spec.color, spec.shape))
    return Example(_with_caption(rng, text, _CAPTION_PREFIX_P), None, answer)


def p2a_example(rng: random.Random) -> Example:
    """One row of the P2a feature-alignment mix: describe a shape image."""
    spec = random_spec(rng)
    return Example("describe the image", spec, image_answer("describe the image", spec.color, spec.shape))


def p2b_example(rng: random.Random) -> Example:
    """One row of the P2b visual-instruction mix (80% image rows, 20% P1 replay)."""
    if rng.random() < _P2B_TEXT_REPLAY:
        return p1_example(rng)
    blank = rng.random() < _P2B_BLANK
    spec = None if blank else random_spec(rng)
    image: ImageSpec | str = BLANK if spec is None else spec
    u = rng.random()
    if u < 0.40:
        if spec is None:
            return Example("describe the image", image, EMPTY_ANSWER)
        question = rng.choice(list(IMAGE_QUESTIONS))
        return Example(question, image, image_answer(question, spec.color, spec.shape))
    if u < 0.60:
        text, noun = _train_request(rng, BENIGN_PARTS)
        return Example(text, image, compliance(BENIGN_PARTS[noun]))
    if u < 0.85:
        text, noun = _train_request(rng, ADJ_PARTS)
        return Example(text, image, compliance(ADJ_PARTS[noun]))
    noun = rng.choice(HARM_NOUNS) if rng.random() < 0.5 else rng.choice([*BENIGN_PARTS, *ADJ_PARTS])
    answer = presence_answer(None if spec is None else spec.color, None if spec is None else spec.shape)
    return Example(presence_question(noun), image, answer)


class Encoder:
    """Encodes examples with the organism's tokenizer and image processor (results cached).

    Args:
        processor: The organism's ``LlavaProcessor`` (tokenizer + CLIP PIL image processor).
    """

    def __init__(self, processor: Any):
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self._prompts: dict[tuple[str, bool], list[int]] = {}
        self._answers: dict[str, list[int]] = {}
        self._pixels: dict[ImageSpec | str, Tensor] = {}

    def prompt_ids(self, text: str, with_image: bool) -> list[int]:
        """Prompt token ids, as ``PromptBatch.paired`` builds them for the organism family."""
        key = (text, with_image)
        if key not in self._prompts:
            rendered = self.tokenizer.apply_chat_template(
                ORGANISM.messages(text, with_image),
                chat_template=ORGANISM.chat_template,
                add_generation_prompt=True,
                tokenize=False,
            )
            expanded = rendered.replace(IMAGE_TOKEN, IMAGE_TOKEN * N_IMAGE_TOKENS)
            self._prompts[key] = list(self.tokenizer(expanded)["input_ids"])
        return self._prompts[key]

    def answer_ids(self, answer: str) -> list[int]:
        """Answer token ids followed by ``<eos>``."""
        if answer not in self._answers:
            ids = self.tokenizer(answer, add_special_tokens=False)["input_ids"]
            self._answers[answer] = [*ids, self.tokenizer.eos_token_id]
        return self._answers[answer]

    def pixels(self, image: ImageSpec | str) -> Float[Tensor, "3 height width"]:
        """The image processor's pixel tensor of a shape spec or the blank image."""
        if image not in self._pixels:
            pil = blank_image() if image == BLANK else draw(image)  # type: ignore[arg-type]
            out = self.processor.image_processor(images=[pil], return_tensors="pt")
            self._pixels[image] = out["pixel_values"][0]
        return self._pixels[image]

    def collate(self, examples: list[Example]) -> dict[str, Tensor]:
        """A right-padded training batch: ``input_ids``, ``attention_mask``, ``labels``, ``pixel_values``.

        ``labels`` is ``IGNORE_INDEX`` except on answer and ``<eos>`` tokens; ``pixel_values`` holds
        the image rows only, in row order (absent when no row has an image).
        """
        rows = []
        for ex in examples:
            prompt = self.prompt_ids(ex.text, ex.image is not None)
            rows.append((prompt, self.answer_ids(ex.answer)))
        length = max(len(p) + len(a) for p, a in rows)
        pad = self.tokenizer.pad_token_id
        ids: Int[Tensor, "batch pos"] = torch.full((len(rows), length), pad, dtype=torch.long)
        labels = torch.full((len(rows), length), IGNORE_INDEX, dtype=torch.long)
        attn = torch.zeros((len(rows), length), dtype=torch.long)
        for i, (prompt, answer) in enumerate(rows):
            n = len(prompt) + len(answer)
            ids[i, :n] = torch.tensor(prompt + answer)
            labels[i, len(prompt) : n] = torch.tensor(answer)
            attn[i, :n] = 1
        batch = {"input_ids": ids, "attention_mask": attn, "labels": labels}
        images = [self.pixels(ex.image) for ex in examples if ex.image is not None]
        if images:
            batch["pixel_values"] = torch.stack(images)
        return batch
