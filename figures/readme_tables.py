"""README tables written from the demo's result files, and a check that README agrees with them.

Each table sits between ``<!-- NAME:start -->`` and ``<!-- NAME:end -->`` in README.md and is
regenerated, never typed:

- ``demo-table``: the test-split summary ``RESULTS/summary.json``, written by
  :func:`vlminterp.demo.summary_table` (the table ``vlminterp demo`` prints).
- ``demo-alpha``: dataset-level CMRM candidates on the validation split, ``RESULTS/alpha_selection.json``
  (tidy rows: one per candidate and metric, with ``eligible`` / ``chosen``).

Usage: ``python figures/readme_tables.py [--results results/demo] [--readme README.md] [--check]``.
Without ``--check`` the blocks are rewritten in place; with it nothing is written, and the exit status
is 1 when README and the results disagree, each differing row named on stderr.

Example:
    >>> from pathlib import Path
    >>> from figures import readme_tables
    >>> readme_tables.check(Path("README.md"), Path("results/demo"))  # doctest: +SKIP
    []
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from vlminterp.demo import TABLE_COLUMNS, summary_table
from vlminterp.io import read_json, write_text_atomic

Rows = list[dict[str, Any]]
#: Leading cells that name a table row: (condition, method) or (steps, α).
KEY_CELLS = 2


def alpha_table(rows: Rows) -> str:
    """The dataset-level CMRM candidates of ``alpha_selection.json`` as a Markdown table, in file order.

    The file holds one row per (candidate, metric); each (steps, α) candidate is one table line.

    Example:
        >>> rows = [{"method": "cmrm_dataset", "steps": "all", "alpha": 0.5, "metric": m, "value": v,
        ...          "eligible": True, "chosen": True}
        ...         for m, v in (("refusal_rate", 0.75), ("refusal_rate_exact", 0.5), ("utility", 1.0))]
        >>> print(alpha_table(rows).splitlines()[-1])
        | all | 0.5 | 0.75 | 0.50 | 1.00 | chosen |
    """
    candidates: dict[tuple[Any, Any], Rows] = {}
    for r in rows:
        if r["method"] == "cmrm_dataset":
            candidates.setdefault((r["steps"], r["alpha"]), []).append(r)
    lines = [
        "| steps | α | " + " | ".join(TABLE_COLUMNS.values()) + " | choice |",
        "|---|---|" + "---|" * (len(TABLE_COLUMNS) + 1),
    ]
    for (steps, alpha), got in candidates.items():
        value = {r["metric"]: r["value"] for r in got}
        first = got[0]
        choice = (
            "chosen" if first["chosen"] else "eligible" if first["eligible"] else "utility drop too large"
        )
        cells = " | ".join(f"{value[m]:.2f}" for m in TABLE_COLUMNS)
        lines.append(f"| {steps} | {alpha} | {cells} | {choice} |")
    return "\n".join(lines)


#: Block name -> (results file, table writer).
BLOCKS: dict[str, tuple[str, Callable[[Rows], str]]] = {
    "demo-table": ("summary.json", summary_table),
    "demo-alpha": ("alpha_selection.json", alpha_table),
}


def render(results: Path) -> dict[str, str]:
    """Each block's table, written from the result files in the directory ``results``.

    Raises:
        FileNotFoundError: a result file is missing (run ``vlminterp demo --out RESULTS`` first).
    """
    tables = {}
    for name, (file, write) in BLOCKS.items():
        path = Path(results) / file
        if not path.is_file():
            raise FileNotFoundError(f"No {path}: run `vlminterp demo --out {results}` first.")
        tables[name] = write(read_json(path))
    return tables


def _span(readme: str, name: str) -> tuple[int, int]:
    """Offsets of the text between ``name``'s start and end markers."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    if readme.count(start) != 1 or readme.count(end) != 1 or readme.index(start) > readme.index(end):
        raise ValueError(f"README needs exactly one {start} ... {end} pair, in that order.")
    return readme.index(start) + len(start), readme.index(end)


def parse(readme: str, name: str) -> list[list[str]]:
    """The table between ``name``'s markers in ``readme`` as rows of stripped cells (header first).

    Example:
        >>> parse("<!-- t:start -->\\n| a | b |\\n|---|---|\\n| 1 | 2 |\\n<!-- t:end -->", "t")
        [['a', 'b'], ['1', '2']]
    """
    a, b = _span(readme, name)
    return _cells(readme[a:b])


def _cells(table: str) -> list[list[str]]:
    rows = [
        [c.strip() for c in line.strip().strip("|").split("|")] for line in table.splitlines() if line.strip()
    ]
    return [r for r in rows if not all(c and set(c) <= set("-:") for c in r)]  # drop the |---| line


def differences(readme: str, tables: dict[str, str]) -> list[str]:
    """One message per README row that differs from ``tables`` (block name -> table); empty when they agree.

    Example:
        >>> readme = "<!-- t:start -->\\n| k | m | v |\\n|---|---|---|\\n| a | b | 1 |\\n<!-- t:end -->"
        >>> differences(readme, {"t": "| k | m | v |\\n|---|---|---|\\n| a | b | 2 |"})
        ["t: row 'a | b': README has '1', the results give '2'"]
    """
    messages = []
    for name, table in tables.items():
        got, want = parse(readme, name), _cells(table)
        if got == want:
            continue
        before = len(messages)
        if got[:1] != want[:1]:
            header = [" | ".join(t[0]) if t else "" for t in (got, want)]
            messages.append(f"{name}: header: README has '{header[0]}', the results give '{header[1]}'")
        got_rows = {tuple(r[:KEY_CELLS]): r[KEY_CELLS:] for r in got[1:]}
        want_rows = {tuple(r[:KEY_CELLS]): r[KEY_CELLS:] for r in want[1:]}
        for key in dict.fromkeys([*want_rows, *got_rows]):
            label = " | ".join(key)
            if key not in got_rows:
                messages.append(f"{name}: row '{label}' is missing from README")
            elif key not in want_rows:
                messages.append(f"{name}: row '{label}' is in README but not in the results")
            elif got_rows[key] != want_rows[key]:
                messages.append(
                    f"{name}: row '{label}': README has '{' | '.join(got_rows[key])}', "
                    f"the results give '{' | '.join(want_rows[key])}'"
                )
        if len(messages) == before:
            messages.append(f"{name}: same rows, but README repeats or reorders them")
    return messages


def rewrite(readme: str, tables: dict[str, str]) -> str:
    """``readme`` with the text between each block's markers replaced by its table."""
    for name, table in tables.items():
        a, b = _span(readme, name)
        readme = f"{readme[:a]}\n{table}\n{readme[b:]}"
    return readme


def check(readme: Path, results: Path) -> list[str]:
    """:func:`differences` between the README file ``readme`` and the result files in ``results``."""
    return differences(Path(readme).read_text(encoding="utf-8"), render(results))


def block_main(
    prog: str,
    description: str,
    render_tables: Callable[[Path], dict[str, str]],
    default_results: Path,
    results_help: str,
    argv: Sequence[str] | None = None,
) -> int:
    """The command line of a README-block generator: rewrite the blocks from the results, or ``--check``.

    Args:
        prog: The script as it is run (shown in usage and in the "Regenerate:" hint).
        description: The script's docstring (its first paragraph is the help text).
        render_tables: results folder -> {block name: Markdown table}.
        default_results: ``--results`` default.
        results_help: ``--results`` help text.
        argv: Arguments (default ``sys.argv[1:]``).
    """
    parser = argparse.ArgumentParser(prog=prog, description=description.split("\n\n")[0])
    parser.add_argument("--results", type=Path, default=default_results, help=results_help)
    parser.add_argument("--readme", type=Path, default=Path("README.md"))
    parser.add_argument(
        "--check", action="store_true", help="only compare; exit 1 naming the rows that differ"
    )
    args = parser.parse_args(argv)
    readme = args.readme.read_text(encoding="utf-8")
    tables = render_tables(args.results)
    if args.check:
        messages = differences(readme, tables)
        for m in messages:
            print(m, file=sys.stderr)
        if messages:
            print(f"Regenerate: python {prog} --results {args.results}", file=sys.stderr)
        return 1 if messages else 0
    updated = rewrite(readme, tables)
    if updated != readme:
        write_text_atomic(args.readme, updated)
    state = "rewritten" if updated != readme else "already up to date"
    print(f"{args.readme}: {', '.join(tables)} {state} from {args.results}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python figures/readme_tables.py [--results results/demo] [--readme README.md] [--check]``."""
    return block_main(
        "figures/readme_tables.py",
        __doc__,
        render,
        Path("results/demo"),
        "the demo's results directory",
        argv,
    )


if __name__ == "__main__":
    sys.exit(main())
