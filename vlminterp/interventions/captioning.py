"""Captions for ShiftDC's text twins: the VLM's own (query-conditioned), the dataset's, or any callable.

ShiftDC compares an image input with a text-only twin ``"{query} Image Caption: {caption}"``. The
paper has the VLM caption its own image, conditioned on the request
(:data:`QUERY_CONDITIONED_PROMPT`); datasets such as VLSafe ship captions; any other captioner is a
callable ``Sample -> str``. Captions can be cached in a JSON file (written atomically after every
batch), so a long run resumes without captioning again. A cached caption is keyed by the model's
:func:`~vlminterp.cache.identity.model_fingerprint` (not the folder it was loaded from), the
prompt, the length limit and the sample's id, query and image content (:class:`CaptionCache`): the
same checkpoint copied elsewhere reuses the cache, another model or another image does not.

Example:
    >>> from vlminterp import HookedVLM, Sample
    >>> from vlminterp.interventions.captioning import caption_images
    >>> from PIL import Image
    >>> model = HookedVLM.tiny("llava")
    >>> s = Sample(id="a", query="what is this ?", image=Image.new("RGB", (32, 32), "red"))
    >>> [c.caption for c in caption_images(model, [s], source=lambda sample: "a red square")]
    ['a red square']
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from vlminterp.cache.identity import model_fingerprint
from vlminterp.io import read_json, write_json_atomic
from vlminterp.prompts import Condition, PromptBatch, Sample, load_image

if TYPE_CHECKING:
    from vlminterp.models.hooked_vlm import HookedVLM
    from vlminterp.models.kv_prefix import KVPrefix

#: For a chunk of samples and their caption prompts, the KV cache of those prompts' first tokens
#: (computed already, e.g. the same template and image in another prompt), or None.
CaptionPrefix = Callable[[Sequence[Sample], PromptBatch], "KVPrefix | None"]

__all__ = [
    "QUERY_CONDITIONED_PROMPT",
    "AUTHORS_CAPTION_PROMPT",
    "CAPTION_SOURCES",
    "Captioner",
    "CaptionPrefix",
    "CaptionCache",
    "caption_images",
    "caption_requests",
    "check_captions",
]

#: The ShiftDC paper's captioning prompt; ``{query}`` is the user's request.
QUERY_CONDITIONED_PROMPT = "Based on the given Request, describe the image. Request: {query}."
#: The ShiftDC reference code's captioning prompt (``shiftdc/utils/prompt.py: CAPTION_BASED_ON_Q``,
#: used by ``run_caption.py`` with 128 new tokens): the same words without the trailing ``"."``.
AUTHORS_CAPTION_PROMPT = "Based on the given Request, describe the image. Request: {query}"
#: ``"self"``: the model captions its own image; ``"sample"``: ``Sample.caption`` as given.
CAPTION_SOURCES = ("self", "sample")
#: An external captioner: the sample (with its image) in, the caption out.
Captioner = Callable[[Sample], str]


class CaptionCache:
    """A model's self-captions by sample, in a JSON file (or in memory when ``path`` is None).

    A caption is keyed by the model's fingerprint, the prompt, the length limit and the sample: its
    id, query and image content (MM-SafetyBench's SD, TYPO and SD_TYPO samples share ids but not
    images or queries). Every :meth:`update` rewrites the file atomically, so an interrupted run
    keeps what it captioned.

    Example:
        >>> from vlminterp import HookedVLM, Sample
        >>> from PIL import Image
        >>> cache = CaptionCache(None, HookedVLM.tiny("llava"), "describe the image", 8)
        >>> red, blue = (Sample(id="a", query="hi", image=Image.new("RGB", (8, 8), c)) for c in ("red", "blue"))
        >>> cache.get(red) is None, cache.update([red], ["a red square"]), cache.get(red), cache.get(blue)
        (True, None, 'a red square', None)
    """

    def __init__(self, path: str | Path | None, model: HookedVLM, prompt: str, max_new_tokens: int):
        self.path = None if path is None else Path(path)
        self._head = [model_fingerprint(model), prompt, max_new_tokens]
        self._stored: dict[str, str] = {}
        if self.path is not None and self.path.is_file():
            data = read_json(self.path)
            if not isinstance(data, dict):
                raise ValueError(
                    f"Caption cache {str(self.path)!r} must hold a JSON object of captions; delete it to start over."
                )
            self._stored = data

    def _key(self, sample: Sample) -> str:
        return json.dumps(
            [*self._head, sample.query, _image_digest(sample), sample.id]
        )  # the id last: read back

    def get(self, sample: Sample) -> str | None:
        """The sample's cached caption, or None."""
        return self._stored.get(self._key(sample))

    def update(self, samples: Sequence[Sample], captions: Sequence[str]) -> None:
        """Add the captions of ``samples``, and write the file."""
        self._stored.update({self._key(s): text for s, text in zip(samples, captions, strict=True)})
        if self.path is not None:
            write_json_atomic(self.path, self._stored)


def _image_digest(sample: Sample) -> str:
    """A short hash of the sample's image: its file's bytes (no decoding) or its RGB pixels."""
    image = sample.image
    if isinstance(image, (str, Path)) and Path(image).is_file():
        data = Path(image).read_bytes()
    else:  # a PIL image, or a path that load_image refuses naming the sample
        rgb = load_image(image, sample.id)
        data = f"{rgb.size}".encode() + rgb.tobytes()
    return hashlib.sha256(data).hexdigest()[:16]


def caption_images(
    model: HookedVLM | None,
    samples: Sequence[Sample],
    prompt: str = QUERY_CONDITIONED_PROMPT,
    max_new_tokens: int = 64,
    batch_size: int = 8,
    source: str | Captioner = "self",
    cache: str | Path | None = None,
    prefix: CaptionPrefix | None = None,
) -> list[Sample]:
    """``samples`` with ``caption`` set for every sample that has an image (the others unchanged).

    Args:
        model: The VLM that captions its own images (``source="self"``; may be None otherwise).
        samples: The samples to caption.
        prompt: Captioning request; ``{query}`` is replaced by the sample's query (a prompt without
            it, such as ``"describe the image"``, is used as is).
        max_new_tokens: Caption length limit (greedy decoding).
        batch_size: Samples per generation batch.
        source: ``"self"``, ``"sample"`` (keep ``Sample.caption``) or a callable ``Sample -> str``.
        cache: JSON file of captions by key (model fingerprint, prompt, length, sample id); read
            first and updated after every batch.
        prefix: ``source="self"``: gives each generation batch a
            :class:`~vlminterp.models.stepping.KVPrefix` to start from (ShiftDC passes its inputs'
            cache, which holds the same template and image); None computes every prompt.

    Returns:
        New Sample objects (the inputs are not changed).

    Raises:
        ValueError: an unknown ``source``, ``source="sample"`` with samples lacking captions, an
            empty caption from the model or the captioner, or
            ``source="self"`` without a model.
    """
    if isinstance(source, str) and source not in CAPTION_SOURCES:
        raise ValueError(
            f"source={source!r} is not supported. Choose from {list(CAPTION_SOURCES)} or pass a callable."
        )
    with_image = [s for s in samples if s.image is not None]
    if source == "sample":
        missing = [s.id for s in with_image if not s.caption]
        if missing:
            raise ValueError(
                f"caption source 'sample' needs Sample.caption, missing for {len(missing)} samples "
                f"(first: {missing[:5]}). Use source='self' to caption them with the model."
            )
        return list(samples)
    captions: dict[str, str] = {}
    if callable(source):
        captions = {s.id: str(source(s)) for s in with_image}
    else:
        if model is None:
            raise ValueError("caption source 'self' needs the model: caption_images(model, samples, ...).")
        stored = CaptionCache(cache, model, prompt, max_new_tokens)
        found = [stored.get(s) for s in with_image]
        todo = [s for s, text in zip(with_image, found, strict=True) if text is None]
        made: list[str] = []
        for i in range(0, len(todo), batch_size):
            chunk = todo[i : i + batch_size]
            batch = caption_requests(model, chunk, prompt)
            held = None if prefix is None else prefix(chunk, batch)
            out = model.generate(batch, max_new_tokens=max_new_tokens, prefix=held)
            stored.update(chunk, out.texts)
            made += out.texts
        fresh = iter(made)  # the new captions, in the order of the samples that had none
        captions = {
            s.id: next(fresh) if text is None else text for s, text in zip(with_image, found, strict=True)
        }
    check_captions(captions, source)
    return [dataclasses.replace(s, caption=captions[s.id]) if s.id in captions else s for s in samples]


def caption_requests(
    model: HookedVLM, samples: Sequence[Sample], prompt: str = QUERY_CONDITIONED_PROMPT
) -> PromptBatch:
    """The captioning prompts of ``samples`` (with images): IMAGE rows asking ``prompt`` about each query.

    Example:
        >>> from vlminterp import HookedVLM, Sample
        >>> from PIL import Image
        >>> model = HookedVLM.tiny("llava")
        >>> s = Sample(id="a", query="what is this ?", image=Image.new("RGB", (32, 32)))
        >>> "Request: what is this ?." in caption_requests(model, [s]).texts[0]
        True
    """
    requests = [
        dataclasses.replace(s, query=prompt.replace("{query}", s.query), caption=None) for s in samples
    ]
    return PromptBatch.paired(model, requests, [Condition.IMAGE])


def check_captions(captions: dict[str, str], source: str | Captioner = "self") -> None:
    """Raise when a caption (by sample id) is empty: its caption twin cannot be built.

    Example:
        >>> check_captions({"a": "a red square"})
        >>> check_captions({"a": " "})
        Traceback (most recent call last):
        ...
        ValueError: the model's own caption is empty for 1 samples (first: ['a']), so their caption twin cannot be built. Raise the caption length, use another captioner (source=callable), or set Sample.caption and use source='sample'.

    Raises:
        ValueError: names the samples and says what to do.
    """
    empty = [sid for sid, caption in captions.items() if not caption.strip()]
    if empty:
        who = "the model's own caption" if source == "self" else "the captioner's caption"
        raise ValueError(
            f"{who} is empty for {len(empty)} samples (first: {empty[:5]}), so their caption twin cannot be "
            "built. Raise the caption length, use another captioner (source=callable), or set "
            "Sample.caption and use source='sample'."
        )
