"""README's benchmark table, written from the recorded benchmark JSON lines, and a check that they agree.

The benchmarks append their last line to ``benchmarks/results/<benchmark>.jsonl`` when run with
``--record`` (``python benchmarks/bench_collect.py --quick --record benchmarks/results/bench_collect.jsonl``).
The table between ``<!-- bench-table:start -->`` and ``<!-- bench-table:end -->`` in README.md has one
row per (benchmark, size): the median of every recorded run's ratios (with their range when there
were several: the shared machine is noisy; and how many runs measured a ratio that not all did),
then the same figures of the runs' ``VLMINTERP_MALLOC=0`` processes as ``glibc/...`` (no target
mark: the targets are for the library's default), the absolute
median milliseconds (and per prompt token where recorded), the setting, and the targets each median
meets or misses.

Usage: ``python figures/bench_tables.py [--results benchmarks/results] [--readme README.md] [--check]``.
Without ``--check`` the block is rewritten in place; with it nothing is written, and the exit status
is 1 when README and the recorded lines disagree, each differing row named on stderr.

Example:
    >>> line = {"benchmark": "bench_x", "ratios": {"a_vs_hf": 1.04}, "ms": {"raw_hf": 100.0, "a": 104.0},
    ...         "targets": {"a_vs_hf": 1.05}, "config": {"shapes": "quick", "params_m": 4.5, "threads": 2,
    ...         "device": "cpu", "repeats": 3, "malloc": {"env": {}, "mallopt": {"M_TOP_PAD": 1}}}}
    >>> print(bench_table([line]).splitlines()[-1])
    | `bench_x` | quick | 4.5M params, cpu, 2 threads, mallopt, 3 repeats × 1 run | a_vs_hf **1.040×** ✓ | raw_hf 100; a 104 | a_vs_hf ≤ 1.05 |
"""

from __future__ import annotations

import json
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from figures.readme_tables import block_main  # noqa: E402

BLOCK = "bench-table"
SIZE_ORDER = ("quick", "mid", "llava-7b")
#: Ratio keys whose target is an upper bound on a fraction, not a time ratio (printed as %).
FRACTIONS = ("rss_growth_8x",)


def read_lines(results: Path) -> list[dict[str, Any]]:
    """Every JSON line of ``results/*.jsonl`` (file order, files sorted by name).

    Raises:
        FileNotFoundError: no ``*.jsonl`` file in ``results``.
        ValueError: a line is not a benchmark JSON object (the file and line are named).
    """
    files = sorted(Path(results).glob("*.jsonl"))
    if not files:
        raise FileNotFoundError(
            f"No *.jsonl in {str(results)!r}: run the benchmarks with --record {results}/<name>.jsonl first."
        )
    lines = []
    for path in files:
        for n, text in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not text.strip():
                continue
            try:
                line = json.loads(text)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{n} is not JSON ({err}); remove or fix that line.") from None
            if not {"benchmark", "ratios", "config"} <= set(line):
                raise ValueError(f"{path}:{n} is not a benchmark line (needs benchmark, ratios, config).")
            lines.append(line)
    return lines


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """Nested ratio dicts (bench_malloc: policy -> ratio) as ``policy/ratio`` keys."""
    out: dict[str, float] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}/"))
        else:
            out[f"{prefix}{k}"] = float(v)
    return out


def _malloc(config: dict[str, Any], glibc: bool) -> str:
    m = config.get("malloc") or {}
    if "env" not in m:  # bench_malloc: one setting per policy
        return "3 malloc policies"
    if any(v is not None for v in m["env"].values()):
        return "MALLOC_ env"
    own = "mallopt" if m.get("mallopt") else "glibc default malloc"
    return f"{own} (glibc/: VLMINTERP_MALLOC=0)" if glibc else own


def _ratios(line: dict[str, Any]) -> dict[str, float]:
    """The line's ratios, with those of its ``VLMINTERP_MALLOC=0`` process (if any) as ``glibc/...``."""
    glibc = line.get("glibc") or {}
    return _flat({**line["ratios"], **({"glibc": glibc["ratios"]} if "ratios" in glibc else {})})


def _setting(runs: list[dict[str, Any]]) -> str:
    c = runs[-1]["config"]
    parts = [f"{c['params_m']}M params" if "params_m" in c else str(c.get("bench", ""))]
    parts += [
        str(c.get("device", "cpu")),
        f"{c.get('threads', '?')} threads",
        _malloc(c, "glibc" in runs[-1]),
    ]
    loads = [r["config"]["load_avg_1m"] for r in runs if "load_avg_1m" in r["config"]]
    if loads:
        parts.append(f"load {statistics.median(loads):.1f}")
    walls = [r["config"]["wall_s"] for r in runs if "wall_s" in r["config"]]
    if walls:
        parts.append(f"run {max(walls) / 60:.1f} min")
    repeats = sorted({r["config"]["repeats"] for r in runs if r["config"].get("repeats")})
    count = f"{len(runs)} run" + ("s" if len(runs) > 1 else "")
    parts.append(f"{'–'.join(map(str, repeats))} repeats × {count}" if repeats else count)
    return ", ".join(parts)


def _value(key: str, v: float) -> str:
    return f"{v * 100:+.1f}%" if key.split("/")[-1] in FRACTIONS else f"{v:.3f}×"


def _row(runs: list[dict[str, Any]]) -> str:
    first = runs[-1]
    ratios = [_ratios(r) for r in runs]
    targets = first.get("targets") or {}
    measured = []
    keys = dict.fromkeys([*ratios[-1], *(k for r in ratios for k in r)])  # the last run's first
    for key in keys:
        values = [r[key] for r in ratios if key in r]
        med = statistics.median(values)
        cell = f"{key} **{_value(key, med)}**"
        spread = [f"{_value(key, min(values))}–{_value(key, max(values))}"] if len(values) > 1 else []
        if len(values) < len(runs):  # measured by some runs only (a variant added or retired)
            spread.append(f"{len(values)} of {len(runs)} runs")
        if spread:
            cell += f" ({', '.join(spread)})"
        if key in targets:
            cell += " ✓" if med <= targets[key] else " ✗"
        measured.append(cell)
    ms = _flat(first.get("ms") or {})
    ms_med = {k: statistics.median(_flat(r.get("ms") or {}).get(k, v) for r in runs) for k, v in ms.items()}
    per_token = [r["ms_per_token"] for r in runs if "ms_per_token" in r]
    tok_med = {k: statistics.median(t[k] for t in per_token if k in t) for k in (per_token or [{}])[-1]}
    ms_cell = (
        "; ".join(
            f"{k} {v:.0f}" + (f" ({tok_med[k]:.3g}/token)" if k in tok_med else "") for k, v in ms_med.items()
        )
        or "–"
    )
    target_cell = "; ".join(
        f"{k} < {v * 100:.0f}%" if k in FRACTIONS else f"{k} ≤ {v}" for k, v in targets.items()
    )
    size = _size(first["config"])
    cells = [
        f"`{first['benchmark']}`",
        size,
        _setting(runs),
        "; ".join(measured),
        ms_cell,
        target_cell or "–",
    ]
    return "| " + " | ".join(cells) + " |"


def _size(config: dict[str, Any]) -> str:
    """The shapes, and the dtype where it is not theirs by default (float16 for llava-7b, else float32)."""
    shapes = config.get("shapes", "?")
    default = "float16" if shapes == "llava-7b" else "float32"
    dtype = config.get("dtype", default)  # lines recorded before the dtype was: the default
    return shapes if dtype == default else f"{shapes} {dtype}"


def bench_table(lines: Sequence[dict[str, Any]]) -> str:
    """The Markdown table: one row per (benchmark, size), benchmarks by name, sizes quick → mid → 7b.

    A run in another dtype than its shapes' default (``--dtype``) is a size of its own ("quick float16").
    """
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for line in lines:
        groups.setdefault((line["benchmark"], _size(line["config"])), []).append(line)

    def order(key: tuple[str, str]) -> tuple[str, int, str]:
        shapes = key[1].split()[0]
        return key[0], SIZE_ORDER.index(shapes) if shapes in SIZE_ORDER else len(SIZE_ORDER), key[1]

    rows = [
        "| benchmark | size | setting | measured (median of runs; range) | median ms | target |",
        "|---|---|---|---|---|---|",
    ]
    rows += [_row(groups[key]) for key in sorted(groups, key=order)]
    return "\n".join(rows)


def render(results: Path) -> dict[str, str]:
    """``{"bench-table": table}`` from the recorded lines in ``results``."""
    return {BLOCK: bench_table(read_lines(results))}


def main(argv: Sequence[str] | None = None) -> int:
    """``python figures/bench_tables.py [--results benchmarks/results] [--readme README.md] [--check]``."""
    return block_main(
        "figures/bench_tables.py",
        __doc__,
        render,
        Path("benchmarks/results"),
        "recorded benchmark lines (*.jsonl)",
        argv,
    )


if __name__ == "__main__":
    sys.exit(main())
