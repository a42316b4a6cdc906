"""What a loader does about image files: check they exist, skip, keep, or generate the missing ones.

``on_missing`` (an option of every :func:`vlminterp.data.load` call):

- ``"raise"`` (default): a missing image raises :class:`MissingImageError` naming the sample id and
  file (or the image folder, when the whole folder is absent).
- ``"skip"``: samples whose image is missing are dropped, with one warning giving the count.
- ``"keep"``: image paths are kept unchecked (for TEXT_ONLY / CAPTION runs that never open them;
  ``PromptBatch`` raises ``FileNotFoundError`` if an image condition opens a missing one).
- ``"generate"``: a missing image of a typographic benchmark (FigStep, MM-SafetyBench TYPO) is
  rendered with :mod:`vlminterp.data.typography` into ``generated_dir`` and that file is used; one
  the loader cannot draw (photos: LLaVA-Bench, MM-SafetyBench SD) becomes a solid grey
  :data:`PLACEHOLDER_SIZE` px placeholder (``meta["placeholder_image"] = True``, one warning with the
  count): enough to run a pipeline end to end, never a measurement of the benchmark.

Example:
    >>> from vlminterp.prompts import Sample
    >>> import tempfile
    >>> s = Sample(id="q1", query="what is this ?", image="no/such/file.jpg")
    >>> import warnings
    >>> with tempfile.TemporaryDirectory() as d, warnings.catch_warnings(record=True):
    ...     [out] = resolve_images([s], "demo", None, "generate", generated_dir=d)
    >>> out.meta["placeholder_image"]
    True
"""

from __future__ import annotations

import hashlib
import os
import warnings
from collections.abc import Callable
from pathlib import Path

from PIL import Image

from vlminterp.data.errors import MissingImageError
from vlminterp.prompts import Sample

__all__ = ["ON_MISSING", "PLACEHOLDER_SIZE", "Renderer", "resolve_images", "default_generated_dir"]

ON_MISSING = ("raise", "skip", "keep", "generate")
#: Side in pixels of the solid grey image ``on_missing="generate"`` uses where it cannot draw one.
PLACEHOLDER_SIZE = 336
Renderer = Callable[[Sample], "tuple[str, Callable[[], Image.Image]] | None"]
"""Maps a sample to (cache key, draw function), or None when its image cannot be generated."""


def default_generated_dir(dataset: str) -> Path:
    """``$VLMINTERP_CACHE/generated/<dataset>`` (default cache ``~/.cache/vlminterp``)."""
    base = Path(os.environ.get("VLMINTERP_CACHE", Path.home() / ".cache" / "vlminterp"))
    return base / "generated" / dataset


def _generate(sample: Sample, renderer: Renderer, out_dir: Path) -> Path | None:
    job = renderer(sample)
    if job is None:
        return None
    key, draw = job
    digest = hashlib.sha1(key.encode()).hexdigest()[:12]
    path = out_dir / f"{sample.id.replace('/', '_')}-{digest}.png"
    if not path.is_file():
        out_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}.png")
        draw().save(tmp)
        tmp.replace(path)
    return path


def _placeholder(sample: Sample) -> tuple[str, Callable[[], Image.Image]]:
    size = (PLACEHOLDER_SIZE, PLACEHOLDER_SIZE)
    return f"placeholder|grey|{PLACEHOLDER_SIZE}", lambda: Image.new("RGB", size, (128, 128, 128))


def resolve_images(
    samples: list[Sample],
    dataset: str,
    image_root: Path | None,
    on_missing: str,
    renderer: Renderer | None = None,
    generated_dir: str | Path | None = None,
) -> list[Sample]:
    """Apply the ``on_missing`` policy to the samples' image paths (PIL images and None pass through).

    Raises:
        ValueError: an unknown ``on_missing``.
        MissingImageError: with ``on_missing="raise"``, any image file missing.
    """
    if on_missing not in ON_MISSING:
        raise ValueError(f"on_missing={on_missing!r} is not one of {ON_MISSING}.")
    if on_missing == "keep":
        return samples
    out_dir = Path(generated_dir) if generated_dir is not None else default_generated_dir(dataset)
    kept, missing, placeholders = [], [], 0
    for s in samples:
        if not isinstance(s.image, str | Path) or Path(s.image).is_file():
            kept.append(s)
            continue
        if on_missing == "generate":
            path = _generate(s, renderer, out_dir) if renderer is not None else None
            drawn = path is not None
            if not drawn:
                path, placeholders = _generate(s, _placeholder, out_dir), placeholders + 1
            s.meta["generated_image" if drawn else "placeholder_image"] = True
            s.image = path
            kept.append(s)
            continue
        missing.append(s)
    if placeholders:
        warnings.warn(
            f"{dataset}: {placeholders} of {len(samples)} samples have no image file and no drawable image; "
            f"they get a solid grey {PLACEHOLDER_SIZE}px placeholder (meta['placeholder_image']). Download "
            "the benchmark's images for real measurements.",
            stacklevel=3,
        )
    if not missing:
        return kept
    first = missing[0]
    if on_missing == "skip":
        warnings.warn(
            f"{dataset}: skipped {len(missing)} of {len(samples)} samples whose image file is missing "
            f"(first: sample {first.id!r}, {first.image}).",
            stacklevel=3,
        )
        return kept
    options = (
        "'skip', 'keep' or 'generate'"
        if renderer is not None
        else "'skip', 'keep' or 'generate' (placeholders)"
    )
    if image_root is not None and not image_root.is_dir():
        raise MissingImageError(
            f"{dataset}: the image folder {str(image_root)!r} does not exist. Download the benchmark's images "
            f"there, point image_root= at them, or pass on_missing={options}."
        )
    raise MissingImageError(
        f"{dataset}: {len(missing)} of {len(samples)} image files are missing, e.g. sample {first.id!r}: "
        f"{str(first.image)!r}. Complete the image folder, or pass on_missing={options}."
    )
