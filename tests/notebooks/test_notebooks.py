"""The analyses/ notebooks run end to end on the shipped organism (nbclient), and are committed without outputs.

Each notebook is its own test so ``pytest -n 2`` spreads them. They run in a temp working directory
with ``VLMINTERP_RESULTS`` pointing at a temp folder, one torch thread each (the organism's matmuls are
tiny), and every notebook must write its result files there. The default suite runs every cell of
every notebook with ``VLMINTERP_NOTEBOOK_SIZE=small`` (a few samples per group, CMRM's sweep on three
alphas); ``make test-slow`` runs them at full size, as a reader does.
"""

from __future__ import annotations

import time

import nbformat
import pytest

from analyses import _nbtools

NOTEBOOKS = {p.stem: p for p in _nbtools.NOTEBOOKS}
EXPECTED = [
    "01_quickstart",
    "02_representation_gap",
    "03_cmrm",
    "04_shiftdc",
    "05_layer_head_ablation",
    "06_attribution_patching",
]


def test_the_notebooks_exist():
    assert sorted(NOTEBOOKS) == EXPECTED


@pytest.mark.parametrize("name", EXPECTED)
def test_committed_notebook_has_no_outputs(name):
    nb = nbformat.read(NOTEBOOKS[name], as_version=4)
    nbformat.validate(nb)
    assert _nbtools.problems(nb) == [], f"{name}: run `python analyses/_nbtools.py --strip`"
    assert nb.metadata["kernelspec"]["name"] == "python3"
    assert "VLMINTERP_NOTEBOOK_SIZE" in nb.cells[1].source, f"{name}: the default suite runs it small"


def test_problems_finds_outputs():
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("1", execution_count=1)])
    nb.cells[0].outputs = [nbformat.v4.new_output("stream", text="1")]
    assert len(_nbtools.problems(nb)) == 1 and _nbtools.problems(_nbtools.strip(nb)) == []


@pytest.mark.parametrize("size", ["small", pytest.param("full", marks=pytest.mark.slow)])
@pytest.mark.parametrize("name", EXPECTED)
def test_notebook_runs(name, size, tmp_path, monkeypatch):
    from nbclient import NotebookClient

    results = tmp_path / "results"
    monkeypatch.setenv("VLMINTERP_RESULTS", str(results))
    if size == "small":
        monkeypatch.setenv("VLMINTERP_NOTEBOOK_SIZE", "small")
    else:
        monkeypatch.delenv("VLMINTERP_NOTEBOOK_SIZE", raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    nb = nbformat.read(NOTEBOOKS[name], as_version=4)
    t0 = time.perf_counter()
    NotebookClient(
        nb, kernel_name="python3", timeout=300, resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    print(f"{name} ({size}): {time.perf_counter() - t0:.1f} s")
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors
    written = sorted(p.name for p in (results / name).iterdir())
    assert any(n.endswith(".json") for n in written) and (
        name == "01_quickstart" or any(n.endswith(".html") for n in written)
    ), written
