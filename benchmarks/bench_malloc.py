"""The same benchmark under three malloc policies: Makefile environment, library default, glibc default.

Usage: ``python benchmarks/bench_malloc.py [--bench bench_sweep] [--] [benchmark options, e.g. --quick]``.
Runs ``benchmarks/<bench>.py`` in three fresh processes and collects each one's JSON line:

- ``makefile``: the ``MALLOC_*_`` environment the Makefile exports (glibc reads it at start);
- ``library``: no ``MALLOC_*_`` variables, as in a plain Python process or a Jupyter kernel, with
  the mallopt tuning ``import vlminterp`` applies (:mod:`vlminterp.malloc`);
- ``glibc``: no variables and ``VLMINTERP_MALLOC=0`` (glibc's defaults: what users got before).

Prints one row per policy and ratio or absolute median (ms), then one JSON line ``{"benchmark":
"bench_malloc", "ratios": {policy: {ratio: value}}, "ms": {policy: {variant: ms}}, ...}``. The
``library`` rows should match ``makefile``; ``glibc`` shows what the tuning saves, in ratios and in
milliseconds of the same variant. ``--record FILE`` appends that line to ``FILE``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import POLICIES, run_in_process  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bench", default="bench_sweep", help="benchmark script name in benchmarks/")
    parser.add_argument("--record", type=Path, default=None, help="append the JSON line to this file")
    args, rest = parser.parse_known_args(argv)
    rest = [a for a in rest if a != "--"]
    script = Path(__file__).resolve().parent / f"{args.bench}.py"
    if not script.is_file():
        raise FileNotFoundError(f"--bench {args.bench}: no {script}; give a script name of benchmarks/.")
    rest = [*rest, "--malloc", "current"]  # one policy per process: this script sets them
    results = {policy: run_in_process(script, rest, policy)[0] for policy in POLICIES}
    print(f"{'policy':<10}{'ratio or ms':<34}{'value':>10}")
    for policy, line in results.items():
        for name, value in line["ratios"].items():
            print(f"{policy:<10}{name:<34}{value:>10.3f}")
        for name, value in line["ms"].items():
            print(f"{policy:<10}{name + ' (ms)':<34}{value:>10.1f}")
    first = next(iter(results.values()))["config"]
    out = {
        "benchmark": "bench_malloc",
        "ratios": {p: r["ratios"] for p, r in results.items()},
        "ms": {p: r["ms"] for p, r in results.items()},
        "targets": {},
        "config": {
            "bench": args.bench,
            "args": rest,
            "malloc": {p: r["config"]["malloc"] for p, r in results.items()},
            **{k: first[k] for k in ("shapes", "device", "threads", "versions") if k in first},
        },
    }
    text = json.dumps(out)
    if args.record is not None:
        args.record.parent.mkdir(parents=True, exist_ok=True)
        with open(args.record, "a") as f:
            f.write(text + "\n")
    print(text)
    return results


if __name__ == "__main__":
    main()
