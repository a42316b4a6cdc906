"""The installed versions that decide vlminterp's numbers, and the lock they are checked against.

Every number vlminterp reports depends on torch, transformers and TransformerLens; a new release
of one of them can change them all (transformers 5.24 silently broke TransformerLens' KV cache).
This module reports those versions, writes the lock (``constraints.txt``, a pip constraints file
of a venv that passed the suite) and checks an install against it.

Command line (used by the Makefile)::

    python -m vlminterp.versions                          # the key versions and the compat fixes in use
    python -m vlminterp.versions --freeze > constraints.txt  # the lock of this venv
    python -m vlminterp.versions --check-lock constraints.txt  # exit 1 naming every mismatch

Example:
    >>> from vlminterp.versions import key_versions
    >>> sorted(key_versions())[:2]
    ['python', 'tokenizers']
"""

from __future__ import annotations

import argparse
import platform
import re
import sys
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path

__all__ = ["KEY_PACKAGES", "key_versions", "installed_versions", "freeze", "lock_mismatches", "main"]

#: The packages whose versions decide the numbers (reported by ``vlminterp doctor``).
KEY_PACKAGES = ("torch", "transformers", "transformer-lens", "tokenizers")
#: Installer tooling and the project itself: never locked.
_UNLOCKED = {"pip", "setuptools", "wheel", "vlminterp"}
_HEADER = (
    "# The tested lock: exact versions `make test`, `make demo` and CI install (pip constraints file).\n"
    "# Written by `make lock` (python -m vlminterp.versions --freeze) from a venv that passed the suite;\n"
    "# see README, section Installs.\n"
)


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _public(version: str) -> str:
    """The version without its local label: ``2.13.0+cpu`` and ``2.13.0+cu128`` are the same release."""
    return version.split("+", 1)[0]


def installed_versions() -> dict[str, str]:
    """``{canonical name: public version}`` of every installed distribution."""
    return {_canonical(d.metadata["Name"]): _public(d.version) for d in metadata.distributions()}


def key_versions() -> dict[str, str]:
    """Python and the :data:`KEY_PACKAGES` versions (``"not installed"`` where missing)."""
    found = installed_versions()
    versions = {"python": platform.python_version()}
    versions.update({name: found.get(name, "not installed") for name in KEY_PACKAGES})
    return versions


def freeze() -> str:
    """The lock of the running environment: ``name==version`` lines, sorted, with a header."""
    lines = sorted(f"{name}=={v}" for name, v in installed_versions().items() if name not in _UNLOCKED)
    return _HEADER + "\n".join(lines) + "\n"


def read_lock(path: str | Path) -> dict[str, str]:
    """``{canonical name: version}`` of a constraints file (comments and blank lines skipped)."""
    pins = {}
    for number, raw in enumerate(Path(path).read_text().splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        name, sep, version = line.partition("==")
        if not sep:
            raise ValueError(f"{path}:{number}: expected 'name==version', got {raw!r}.")
        pins[_canonical(name.strip())] = _public(version.strip())
    return pins


def lock_mismatches(path: str | Path) -> list[str]:
    """One line per locked package whose installed version differs (or that is missing)."""
    installed = installed_versions()
    return [
        f"{name}: locked {want}, installed {installed.get(name, 'nothing')}"
        for name, want in read_lock(path).items()
        if installed.get(name) != want
    ]


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m vlminterp.versions [--freeze | --check-lock FILE]``; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m vlminterp.versions", description=__doc__.splitlines()[0])
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--freeze", action="store_true", help="print the lock of this environment")
    group.add_argument("--check-lock", metavar="FILE", help="exit 1 unless every locked version is installed")
    args = parser.parse_args(argv)
    if args.freeze:
        sys.stdout.write(freeze())
        return 0
    if args.check_lock:
        mismatches = lock_mismatches(args.check_lock)
        for line in mismatches:
            print(f"lock mismatch: {line}", file=sys.stderr)
        if mismatches:
            print(
                f"The venv does not match {args.check_lock}; remove it and run make again.", file=sys.stderr
            )
        return 1 if mismatches else 0
    from vlminterp.models.compat import kv_cache_fix_needed

    for name, version in key_versions().items():
        print(f"{name:18s}{version}")
    print(f"{'kv-cache fix':18s}{'on' if kv_cache_fix_needed() else 'off (not needed)'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
