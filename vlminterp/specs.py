"""The one parser of model specs, shared by every command and study.

A model spec is ``organism`` (the shipped toy VLM), ``tiny`` / ``tiny:FAMILY`` (a tiny random VLM
built offline; ``tiny`` is ``tiny:llava``), a local checkpoint folder, or a hub id. Parsing
validates without loading anything; :meth:`ModelSpec.load` loads. :attr:`ModelSpec.name` (and
:func:`model_name` for a loaded model) is the string that names the model in result files and
figure subtitles: never a machine path.

Example:
    >>> spec = ModelSpec.parse("tiny")
    >>> spec.kind, spec.source, spec.name
    ('tiny', 'llava', 'tiny:llava')
    >>> ModelSpec.parse("organism").name
    'organism'
    >>> ModelSpec.parse("llava-hf/llava-1.5-7b-hf").name
    'llava-hf/llava-1.5-7b-hf'
"""

from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from vlminterp.models.hooked_vlm import HookedVLM

__all__ = ["MODEL_SPEC_HELP", "ModelSpec", "model_name", "load_model"]

#: ``--model`` help text of every command.
MODEL_SPEC_HELP = "organism | tiny | tiny:FAMILY | a hub id or a local checkpoint folder"
_HUB_ID = re.compile(r"[\w.-]+(/[\w.-]+)?")


@dataclass(frozen=True)
class ModelSpec:
    """A parsed model spec.

    Attributes:
        kind: ``organism``, ``tiny`` or ``checkpoint``.
        source: The tiny family, the checkpoint's hub id or folder ('' for the organism).
    """

    kind: str
    source: str = ""

    @classmethod
    def parse(cls, text: str) -> ModelSpec:
        """Validate ``text`` (no loading, no network).

        Raises:
            ValueError: an empty spec, an unknown tiny family, a folder without ``config.json``, or
                neither an existing folder nor a hub id shape (``name`` or ``owner/name``).

        Example:
            >>> ModelSpec.parse("tiny:gemma3")
            ModelSpec(kind='tiny', source='gemma3')
        """
        text = str(text).strip()
        if text == "organism":
            return cls("organism")
        if text == "tiny" or text.startswith("tiny:"):
            from vlminterp.testing import tiny_families

            family = text.partition(":")[2] or "llava"
            if family not in tiny_families():
                raise ValueError(
                    f"--model {text!r}: no tiny builder for {family!r}; choose from {tiny_families()}."
                )
            return cls("tiny", family)
        path = Path(text).expanduser()
        if path.is_dir():
            if not (path / "config.json").is_file():
                raise ValueError(f"--model {text!r}: the folder holds no config.json (not a checkpoint).")
            return cls("checkpoint", str(path))
        if not _HUB_ID.fullmatch(text):
            raise ValueError(f"--model {text!r}: no such folder, and not a hub id; give {MODEL_SPEC_HELP}.")
        return cls("checkpoint", text)

    @property
    def name(self) -> str:
        """The model's name in results: ``organism``, ``tiny:FAMILY``, a hub id or a folder's name."""
        if self.kind == "organism":
            return "organism"
        if self.kind == "tiny":
            return f"tiny:{self.source}"
        return Path(self.source).name if Path(self.source).is_dir() else self.source

    def load(self, device: str = "cpu", device_map: str | None = None) -> HookedVLM:
        """Load the model (tiny models are built on the CPU).

        Example:
            >>> ModelSpec.parse("tiny").load().cfg.family
            'llava'
        """
        from vlminterp.models.hooked_vlm import HookedVLM

        if self.kind == "organism":
            return HookedVLM.from_organism(device=device)
        if self.kind == "tiny":
            return HookedVLM.tiny(self.source)
        return HookedVLM.from_pretrained(self.source, device=device, device_map=device_map)


def load_model(spec: str, **kwargs: Any) -> HookedVLM:
    """``ModelSpec.parse(spec).load(**kwargs)``.

    Example:
        >>> load_model("tiny:llava").cfg.n_layers > 0
        True
    """
    return ModelSpec.parse(spec).load(**kwargs)


def model_name(model: HookedVLM) -> str:
    """The spec naming a loaded model in results (``organism``, ``tiny:FAMILY``, hub id, folder name).

    Example:
        >>> model_name(load_model("tiny"))
        'tiny:llava'
    """
    from vlminterp.models.organism import organism_dir

    source = Path(model.cfg.model_id)
    if not source.is_dir():
        return model.cfg.model_id
    if source.resolve() == organism_dir().resolve():
        return "organism"
    if source.resolve().parent == (Path(tempfile.gettempdir()) / "vlminterp-tiny").resolve():
        return f"tiny:{model.cfg.family}"
    return source.name
