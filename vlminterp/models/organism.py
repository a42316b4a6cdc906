"""The shipped model organism: where its weights live and how to load them without the hooks.

The organism is a tiny llava-hf checkpoint (267k parameters) trained by
:func:`vlminterp.organism.train.train_organism` and shipped inside the package under
``vlminterp/organism/weights``. Its ``config.json`` says ``"vlminterp_family": "organism"``, so
``HookedVLM.from_pretrained`` picks the organism's prompt rules by itself.

Example:
    >>> from vlminterp.models.organism import organism_dir
    >>> (organism_dir() / "config.json").is_file()
    True
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["organism_dir", "organism_seed", "load_hf_organism"]

_WEIGHTS = Path(__file__).resolve().parent.parent / "organism" / "weights"


def organism_dir() -> Path:
    """The directory of the shipped organism checkpoint.

    Raises:
        FileNotFoundError: the package was installed without its weights.
    """
    if not (_WEIGHTS / "config.json").is_file():
        raise FileNotFoundError(
            f"The shipped organism checkpoint is missing from {str(_WEIGHTS)!r}. Reinstall vlminterp with its "
            "package data, or rebuild it: vlminterp.organism.train.train_organism(seed, out_dir) and load "
            "that directory with HookedVLM.from_pretrained(out_dir)."
        )
    return _WEIGHTS


def organism_seed(path: str | Path | None = None) -> int:
    """The training seed recorded next to an organism checkpoint (default: the shipped one)."""
    from vlminterp.organism.train import MANIFEST

    manifest = Path(path or organism_dir()) / MANIFEST
    if not manifest.is_file():
        raise FileNotFoundError(
            f"{str(manifest)!r} does not exist: not a checkpoint written by train_organism."
        )
    return int(json.loads(manifest.read_text())["seed"])


def load_hf_organism(path: str | Path | None = None) -> tuple[Any, Any]:
    """The plain ``transformers`` organism (eager attention, eval mode) and its processor.

    Used as the reference that hooked results are compared against.

    Args:
        path: A checkpoint directory; default the shipped organism.
    """
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    source = Path(path or organism_dir())
    model = LlavaForConditionalGeneration.from_pretrained(source, attn_implementation="eager").eval()
    return model, AutoProcessor.from_pretrained(source)
