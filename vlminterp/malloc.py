"""glibc malloc tuning applied when vlminterp is imported, so CPU forwards are fast outside ``make`` too.

A CPU forward allocates and frees activation buffers of a few MB each. With glibc's defaults those
buffers are ``mmap``-ed and returned to the OS on free, then faulted back in (zeroed pages) by the
next forward: measured up to 40% of a forward on the 2-core machines, and a head-sweep point at
1.53-1.73x a forward instead of 1.05x in a plain Python process or a Jupyter kernel. The Makefile
sets the ``MALLOC_*_`` environment variables for its own runs; this module applies the same policy
through ``mallopt`` at import, where users actually run the library:

- ``M_MMAP_THRESHOLD`` 32 MiB: buffers below it come from the heap, not fresh ``mmap`` pages;
- ``M_TRIM_THRESHOLD`` 2 GiB (``mallopt`` takes a C ``int``; the Makefile's 16 GiB does not fit):
  freed heap memory is kept for the next forward instead of being trimmed;
- ``M_TOP_PAD`` 1 GiB: the heap grows in large steps (address space; pages count only when touched).

The cost: the process keeps its peak heap after a forward (RSS does not drop between calls).
Nothing is changed when any ``MALLOC_*_`` variable is set (the user chose; glibc already applied it),
when ``VLMINTERP_MALLOC=0``, or on a C library other than glibc.

Example:
    >>> from vlminterp.malloc import malloc_settings
    >>> sorted(malloc_settings())
    ['env', 'mallopt']
"""

from __future__ import annotations

import ctypes
import os
import sys

__all__ = ["tune_malloc", "malloc_settings", "MALLOPT_SETTINGS", "ENV_VARS"]

#: ``mallopt`` parameter numbers of glibc's ``malloc.h`` -> value applied.
MALLOPT_SETTINGS = {
    "M_MMAP_THRESHOLD": (-3, 32 * 2**20),
    "M_TRIM_THRESHOLD": (-1, 2**31 - 1),
    "M_TOP_PAD": (-2, 2**30),
}
#: The environment variables with which glibc reads the same settings at process start.
ENV_VARS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")

_applied: dict[str, int] = {}


def tune_malloc(environ: dict[str, str] | None = None) -> dict[str, int]:
    """Apply :data:`MALLOPT_SETTINGS` through glibc's ``mallopt`` unless told not to.

    Called once by ``import vlminterp``; calling it again is harmless.

    Args:
        environ: The environment to read the opt-out from (default ``os.environ``).

    Returns:
        The settings applied in this process (empty when skipped or not glibc).
    """
    env = os.environ if environ is None else environ
    if env.get("VLMINTERP_MALLOC", "1") == "0" or any(k in env for k in ENV_VARS):
        return {}
    if not sys.platform.startswith("linux"):
        return {}
    try:  # the process's own symbols: no library search (find_library would spawn ldconfig at import)
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018  (glibc only: musl's mallopt is a no-op)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return {}
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    for name, (param, value) in MALLOPT_SETTINGS.items():
        if mallopt(param, value) == 1:
            _applied[name] = value
    return dict(_applied)


def malloc_settings() -> dict[str, dict[str, str | int | None]]:
    """What this process runs with: the ``MALLOC_*_`` environment and the values set by :func:`tune_malloc`.

    Benchmarks record it beside every timing (it changes CPU ratios by up to 40%).
    """
    return {"env": {k: os.environ.get(k) for k in ENV_VARS}, "mallopt": dict(_applied)}
