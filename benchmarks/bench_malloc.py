"""The same benchmark under three malloc policies: Makefile environment, library default, glibc default.

Usage: ``python benchmarks/bench_malloc.py [--bench bench_sweep] [--] [benchmark options, e.g. --quick]``.
Runs ``benchmarks/<bench>.py`` in three fresh processes and collects each one's JSON line:

- ``makefile``: the ``MALLOC_*_`` environment the Makefile exports (glibc reads it at start);
- ``library``: no ``MALLOC_*_`` variables, as in a plain Python process or a Jupyter kernel, with
  the mallopt tuning ``import vlminterp`` applies (:mod:`vlminterp.malloc`);
- ``glibc``: no variables and ``VLMINTERP_MALLOC=0`` (glibc's defaults: what users got before).

Prints one row per policy and ratio, then one JSON line ``{"benchmark": "bench_malloc", "ratios":
{policy: {ratio: value}}, ...}``. The ``library`` row should match ``makefile``; ``glibc`` shows
what the tuning saves.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit  # noqa: E402

from vlminterp.malloc import ENV_VARS  # noqa: E402

MAKEFILE_ENV = {
    "MALLOC_MMAP_THRESHOLD_": "33554432",
    "MALLOC_TRIM_THRESHOLD_": "17179869184",
    "MALLOC_TOP_PAD_": "1073741824",
}


def policy_env(policy: str) -> dict[str, str]:
    """The environment of one policy's process."""
    env = {k: v for k, v in os.environ.items() if k not in ENV_VARS and k != "VLMINTERP_MALLOC"}
    if policy == "makefile":
        env.update(MAKEFILE_ENV)
    elif policy == "glibc":
        env["VLMINTERP_MALLOC"] = "0"
    return env


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bench", default="bench_sweep", help="benchmark script name in benchmarks/")
    args, rest = parser.parse_known_args(argv)
    rest = [a for a in rest if a != "--"]
    script = Path(__file__).resolve().parent / f"{args.bench}.py"
    results = {}
    for policy in ("makefile", "library", "glibc"):
        proc = subprocess.run(
            [sys.executable, str(script), *rest], env=policy_env(policy), capture_output=True, text=True
        )
        if proc.returncode:
            raise RuntimeError(f"{args.bench} under policy {policy!r} failed:\n{proc.stderr[-2000:]}")
        line = json.loads(proc.stdout.strip().splitlines()[-1])
        results[policy] = {"ratios": line["ratios"], "malloc": line["config"].get("malloc")}
    print(f"{'policy':<10}{'ratio':<34}{'value':>8}")
    for policy, res in results.items():
        for name, value in res["ratios"].items():
            print(f"{policy:<10}{name:<34}{value:>8.3f}")
    emit(
        "bench_malloc",
        {p: r["ratios"] for p, r in results.items()},
        {},
        {"bench": args.bench, "args": rest, "malloc": {p: r["malloc"] for p, r in results.items()}},
    )
    return results


if __name__ == "__main__":
    main()
