"""Test tools: tiny random VLMs of every family, built offline and saved like real checkpoints.

Layout: :mod:`vlminterp.testing.tiny` (the builder registry, sizes, tokenizers, the on-disk
cache), :mod:`vlminterp.testing.builders` (one module per family module; each imports its family
and registers a builder), :mod:`vlminterp.testing.remote` (a remote-code checkpoint for the
fallback adapter). Importing this package registers every builder.

Dependencies point downward: these builders import ``vlminterp.models.families``; no module of
``vlminterp.models``, ``vlminterp.cache`` or the analyses imports them. Two entry points call
up into this package, lazily and only when used: :meth:`vlminterp.HookedVLM.tiny` (a convenience
for tests, examples and notebooks, like TransformerLens' test utilities) and ``vlminterp doctor``,
which checks the install on these checkpoints.

Example:
    >>> from vlminterp.testing import tiny_families, tiny_vlm_dir
    >>> "llava" in tiny_families()
    True
    >>> (tiny_vlm_dir("llava") / "config.json").exists()
    True
"""

from vlminterp.testing import builders  # noqa: F401  (registers every family's builder)
from vlminterp.testing.remote import TINY_REMOTE_MODEL_TYPE, build_tiny_remote_vlm, tiny_remote_vlm_dir
from vlminterp.testing.tiny import (
    TINY_WORDS,
    TinySizes,
    build_tiny_vlm,
    cached_build,
    register_builder,
    save_tiny,
    tiny_families,
    tiny_tokenizer,
    tiny_vlm_dir,
)

__all__ = [
    "register_builder",
    "tiny_families",
    "build_tiny_vlm",
    "tiny_vlm_dir",
    "cached_build",
    "tiny_tokenizer",
    "save_tiny",
    "TinySizes",
    "TINY_WORDS",
    "build_tiny_remote_vlm",
    "tiny_remote_vlm_dir",
    "TINY_REMOTE_MODEL_TYPE",
]
