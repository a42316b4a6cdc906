"""Where a study's samples come from: one labelled ``--dataset``, or a ``--harmful`` and a ``--benign`` source.

A benchmark is usually one-sided (FigStep and MM-SafetyBench are all harmful, LLaVA-Bench has no
labels), so a study that compares the classes pairs a harmful source with a benign one, e.g.
``--harmful figstep --benign llava-bench-coco``. Each source is a :class:`~vlminterp.specs.DatasetSpec`
string ``NAME[:split]``, read from its own root (``--harmful-root`` / ``--benign-root``, default
``--data-root``). A source's samples get the source's label (unlabelled ones too; samples labelled
as the other class are dropped), and their ids are prefixed with label and source (``harmful:figstep/1/21``)
so the two sets never collide. A study's config inherits these options (and their check,
:meth:`SourceOptions.sources`) from :class:`SourceOptions`. :func:`class_counts` and
:data:`TWO_CLASS_PARTS` let a study check, before collecting anything, which of its parts one class
cannot support.

Example:
    >>> src = Sources.parse(dataset=None, harmful="demo", benign="demo", limit=2)
    >>> samples = src.load()
    >>> str(src), [s.id for s in samples][:2], class_counts(samples)
    ('demo+demo', ['harmful:demo/harmful-0', 'harmful:demo/harmful-1'], {'harmful': 2, 'benign': 2})
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from vlminterp.prompts import Sample
from vlminterp.specs import DatasetSpec

if TYPE_CHECKING:
    from vlminterp.models.hooked_vlm import HookedVLM

__all__ = [
    "ON_MISSING_CHOICES",
    "TWO_CLASS_PARTS",
    "SourceOptions",
    "Sources",
    "add_source_arguments",
    "class_counts",
    "one_class_note",
    "fill_captions",
    "caption_source",
]

#: ``--on-missing`` of the studies: missing image files raise, are skipped, or are generated (typographic
#: images drawn, others a grey placeholder; :mod:`vlminterp.data.images`).
ON_MISSING_CHOICES = ("raise", "skip", "generate")
#: The parts of an analysis that need both classes, and why.
TWO_CLASS_PARTS = {
    "probes": "harmful-vs-benign probes need samples of both classes",
    "safety direction": "mean(benign) - mean(harmful) needs samples of both classes",
}


def add_source_arguments(parser: argparse.ArgumentParser) -> None:
    """``--data-root``, ``--harmful`` / ``--benign`` (and their roots) and ``--on-missing`` (not ``--dataset``)."""
    parser.add_argument(
        "--data-root", default=None, help="the dataset's folder (default of the source roots)"
    )
    for label in ("harmful", "benign"):
        parser.add_argument(
            f"--{label}", default=None, help=f"NAME[:split] of the {label} source (instead of --dataset)"
        )
        parser.add_argument(
            f"--{label}-root", default=None, help=f"folder of --{label} (default --data-root)"
        )
    parser.add_argument(
        "--on-missing",
        default="raise",
        choices=ON_MISSING_CHOICES,
        help="missing image files: raise, skip the sample, or generate (typographic drawn, others grey placeholder)",
    )


@dataclass(frozen=True)
class Sources:
    """The checked sources of a study: ``(label or None, DatasetSpec)`` pairs, in the order they are read.

    ``label`` is None for a single ``--dataset`` (its own labels are kept).
    """

    specs: tuple[tuple[str | None, DatasetSpec], ...]

    @classmethod
    def parse(
        cls,
        dataset: str | None,
        harmful: str | None = None,
        benign: str | None = None,
        data_root: str | Path | None = None,
        harmful_root: str | Path | None = None,
        benign_root: str | Path | None = None,
        limit: int | None = None,
        on_missing: str = "raise",
        default: str = "demo",
    ) -> Sources:
        """Check the options (nothing is read): ``dataset`` (None: ``default``) alone, or ``harmful`` and/or ``benign``.

        Raises:
            ValueError: both ``--dataset`` and a source, an ``--on-missing`` outside
                :data:`ON_MISSING_CHOICES`, a ``--harmful-root`` without ``--harmful`` (same for benign),
                or a spec :meth:`DatasetSpec.parse` refuses (named with its option).
        """
        if on_missing not in ON_MISSING_CHOICES:
            raise ValueError(f"--on-missing {on_missing!r}: choose from {list(ON_MISSING_CHOICES)}.")
        for label, text, root in (("harmful", harmful, harmful_root), ("benign", benign, benign_root)):
            if root is not None and text is None:
                raise ValueError(f"--{label}-root is given without --{label}; name the {label} source.")
        if harmful is None and benign is None:
            spec = DatasetSpec.parse(
                dataset or default,
                data_root,
                limit,
                on_missing,
                option="--dataset",
                root_option="--data-root",
            )
            return cls(((None, spec),))
        if dataset is not None:
            raise ValueError(
                f"--dataset {dataset!r} and --harmful/--benign are alternatives; give one labelled "
                "--dataset, or a --harmful and a --benign source."
            )
        specs = []
        for label, text, root in (("harmful", harmful, harmful_root), ("benign", benign, benign_root)):
            if text is not None:
                where = root if root is not None else data_root
                option = f"--{label}"
                root_option = f"--{label}-root or --data-root"
                specs.append(
                    (label, DatasetSpec.parse(text, where, limit, on_missing, None, option, root_option))
                )
        return cls(tuple(specs))

    def __str__(self) -> str:
        """The ``dataset`` column of result rows: the spec, or ``harmful+benign``."""
        return "+".join(str(spec) for _, spec in self.specs)

    @property
    def labelled(self) -> bool:
        """Whether the labels come from ``--harmful`` / ``--benign`` (not from the dataset)."""
        return self.specs[0][0] is not None

    def load(self) -> list[Sample]:
        """Every source's samples (first ``limit`` of its label each), labelled, ids prefixed with the source.

        Raises:
            ValueError: a source that gives no sample of its label.
        """
        if not self.labelled:
            return self.specs[0][1].load()
        samples = []
        for label, spec in self.specs:
            other = "benign" if label == "harmful" else "harmful"
            loaded = spec.load() if spec.limit is None else spec.load({label: spec.limit, None: spec.limit})
            got = [s for s in loaded if s.label != other]
            if not got:
                raise ValueError(
                    f"--{label} {str(spec)!r} gave no {label} or unlabelled samples; pick a {label} source."
                )
            samples += [dataclasses.replace(s, id=f"{label}:{spec}/{s.id}", label=label) for s in got]
        return samples


@dataclass(kw_only=True)
class SourceOptions:
    """The sample-source options of a study's config, checked on construction (nothing is read).

    A study's config dataclass inherits these keyword-only fields (so they stay flat in its
    ``asdict``) and, from its own ``__post_init__``, calls ``super().__post_init__()``.

    Attributes:
        dataset: A dataset spec (:class:`vlminterp.specs.DatasetSpec`): ``demo`` (built-in paired
            harmful/benign set), ``tiny``, ``organism[:split]``, or a ``vlminterp.data`` name. None:
            :attr:`default_dataset`, unless ``harmful`` / ``benign`` are given.
        harmful: A dataset spec whose samples are the harmful class (instead of ``dataset``).
        benign: A dataset spec whose samples are the benign class (instead of ``dataset``).
        data_root: Root of the dataset files (``vlminterp.data`` datasets only).
        harmful_root: Root of ``harmful`` (default ``data_root``).
        benign_root: Root of ``benign`` (default ``data_root``).
        on_missing: Missing image files: ``raise``, ``skip`` or ``generate``.
        limit: Keep the first this many samples of each label (None = all; ``demo``: 12 per label).

    Example:
        >>> str(SourceOptions(harmful="demo", benign="demo", limit=2).sources())
        'demo+demo'
        >>> SourceOptions(dataset="demo", harmful="demo")
        Traceback (most recent call last):
        ...
        ValueError: --dataset 'demo' and --harmful/--benign are alternatives; give one labelled --dataset, or a --harmful and a --benign source.
    """

    #: The dataset read when neither ``dataset`` nor a source is given.
    default_dataset: ClassVar[str] = "demo"

    dataset: str | None = None
    harmful: str | None = None
    benign: str | None = None
    data_root: str | None = None
    harmful_root: str | None = None
    benign_root: str | None = None
    on_missing: str = "raise"
    limit: int | None = None

    def __post_init__(self) -> None:
        self.sources()

    def dataset_text(self) -> str | None:
        """The ``dataset`` that :meth:`sources` parses (a config may add to it, e.g. a split)."""
        return self.dataset

    def sources(self) -> Sources:
        """The samples' sources (raises naming the option when one is not valid)."""
        return Sources.parse(
            self.dataset_text(),
            self.harmful,
            self.benign,
            self.data_root,
            self.harmful_root,
            self.benign_root,
            self.limit,
            self.on_missing,
            default=self.default_dataset,
        )

    @staticmethod
    def values_from(args: argparse.Namespace) -> dict[str, Any]:
        """The source options in parsed ``args`` (``--dataset``, ``--limit`` and :func:`add_source_arguments`'s).

        Example:
            >>> args = argparse.Namespace(dataset="demo", harmful=None, benign=None, data_root=None,
            ...                           harmful_root=None, benign_root=None, on_missing="skip", limit=4)
            >>> SourceOptions(**SourceOptions.values_from(args)).limit
            4
        """
        return {f.name: getattr(args, f.name) for f in dataclasses.fields(SourceOptions)}


def class_counts(samples: list[Sample]) -> dict[str, int]:
    """Samples per class (``harmful``, ``benign``; unlabelled samples are not counted).

    Example:
        >>> class_counts([Sample(id="a", query="q", label="harmful"), Sample(id="b", query="q")])
        {'harmful': 1, 'benign': 0}
    """
    return {label: sum(s.label == label for s in samples) for label in ("harmful", "benign")}


def one_class_note(counts: dict[str, int]) -> str | None:
    """Why the two-class parts are skipped (None when both classes have samples).

    Example:
        >>> one_class_note({"harmful": 4, "benign": 0})
        'only harmful samples (4 harmful, 0 benign): skipped probes, safety direction (they need both classes)'
    """
    if min(counts.values()) > 0:
        return None
    present = [label for label, n in counts.items() if n > 0] or ["unlabelled"]
    found = ", ".join(f"{n} {label}" for label, n in counts.items())
    return f"only {' and '.join(present)} samples ({found}): skipped {', '.join(TWO_CLASS_PARTS)} (they need both classes)"


def fill_captions(
    model: HookedVLM, samples: Sequence[Sample], cache: str | Path | None, max_new_tokens: int = 64
) -> list[Sample]:
    """``samples`` where every one with an image but no caption has the model's own caption.

    The captions come from :func:`vlminterp.interventions.captioning.caption_images` (``source="self"``,
    its query-conditioned prompt, greedy, at most ``max_new_tokens``), cached in the JSON file
    ``cache``; ``meta["caption_source"]`` says ``self`` or ``dataset`` for every sample with a caption.

    Example:
        >>> from vlminterp import HookedVLM
        >>> from PIL import Image
        >>> model = HookedVLM.tiny("llava")
        >>> red = Image.new("RGB", (32, 32), "red")
        >>> given = Sample(id="a", query="what is it ?", image=red, caption="a red square")
        >>> out = fill_captions(model, [given, Sample(id="b", query="and this ?", image=red)], None, 4)
        >>> [s.meta["caption_source"] for s in out], out[0].caption, bool(out[1].caption)
        (['dataset', 'self'], 'a red square', True)
    """
    from vlminterp.interventions.captioning import caption_images

    todo = [s for s in samples if s.image is not None and not s.caption]
    made = (
        caption_images(model, todo, max_new_tokens=max_new_tokens, source="self", cache=cache) if todo else []
    )
    made = {s.id: s for s in made}
    out = []
    for s in samples:
        if s.id in made:
            s = dataclasses.replace(made[s.id], meta={**s.meta, "caption_source": "self"})
        elif s.caption:
            s = dataclasses.replace(s, meta={**s.meta, "caption_source": "dataset"})
        out.append(s)
    return out


def caption_source(samples: Sequence[Sample]) -> str:
    """``self``, ``dataset`` or ``self+dataset``: where the samples' captions came from (:func:`fill_captions`).

    Example:
        >>> caption_source([Sample(id="a", query="q", caption="c", meta={"caption_source": "self"})])
        'self'
    """
    found = {s.meta.get("caption_source", "dataset") for s in samples if s.caption}
    return "+".join(sorted(found, key=("self", "dataset").index)) or "none"
