"""Dependencies point downward: what each layer imports.

Layers, bottom up: ``malloc`` (run by the package's ``__init__``, stdlib only) and leaves (``hook_names``, ``positions``, ``prompts``, ``directions``) < ``cache`` < ``models`` <
applications. ``vlminterp.testing`` (the tiny builders) sits above ``models``: it imports the
families, and the package calls up into it only lazily, from the two entry points listed below.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

import vlminterp

PACKAGE = Path(vlminterp.__file__).parent
#: Functions that import vlminterp.testing when called (never at module import).
UPWARD_CALLS = {("models/hooked_vlm.py", "tiny"), ("doctor.py", "main"), ("specs.py", "parse")}


def loaded_after(statement: str) -> set[str]:
    """Modules of vlminterp, TransformerLens and transformers that ``statement`` loads in a new interpreter."""
    watched = "sorted(m for m in sys.modules if m.split('.')[0] in ('vlminterp', 'transformer_lens', 'transformers'))"
    code = f"import json, sys\n{statement}\nprint(json.dumps({watched}))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(json.loads(result.stdout.splitlines()[-1]))


@pytest.mark.parametrize("leaf", ["vlminterp.hook_names", "vlminterp.positions", "vlminterp.directions"])
def test_leaf_modules_import_neither_model_nor_cache(leaf):
    # The package's own import loads only vlminterp.malloc (stdlib ctypes), besides the leaf itself.
    assert loaded_after(f"import {leaf}") == {"vlminterp", "vlminterp.malloc", leaf}


def test_cache_does_not_import_the_model():
    loaded = loaded_after("import vlminterp.cache")
    assert not {m for m in loaded if m.startswith(("vlminterp.models", "transformer_lens"))}


def test_library_layers_do_not_import_the_application_layer():
    """Studies, commands and evaluation runs sit on top: no library module imports them at load."""
    application = (
        "vlminterp.studies",
        "vlminterp.cli",
        "vlminterp.eval",
        "vlminterp.sweeps",
        "vlminterp.demo",
    )
    # One interpreter for all four (each import costs seconds); any application module loaded fails it.
    library = (
        "vlminterp.cache",
        "vlminterp.models.hooked_vlm",
        "vlminterp.interventions",
        "vlminterp.analysis",
    )
    loaded = loaded_after(f"import {', '.join(library)}")
    assert set(library) <= loaded
    assert not {m for m in loaded if m.startswith(application)}


def _testing_imports(tree: ast.Module) -> list[tuple[str | None, int]]:
    """(enclosing function or None, line) of every import of vlminterp.testing in a module."""
    found = []

    def visit(node: ast.AST, function: str | None) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                visit(child, child.name)
                continue
            names = []
            if isinstance(child, ast.Import):
                names = [alias.name for alias in child.names]
            elif isinstance(child, ast.ImportFrom) and child.module:
                names = [child.module]
            if any(n == "vlminterp.testing" or n.startswith("vlminterp.testing.") for n in names):
                found.append((function, child.lineno))
            visit(child, function)

    visit(tree, None)
    return found


def test_package_code_imports_the_test_builders_only_in_the_upward_calls():
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        if rel.startswith("testing/"):
            continue
        for function, line in _testing_imports(ast.parse(path.read_text())):
            if (rel, function) not in UPWARD_CALLS:
                offenders.append(f"{rel}:{line}")
    assert offenders == []


def test_every_family_with_checkpoints_has_a_tiny_builder():
    from vlminterp.models.families import family_names, get_family
    from vlminterp.testing import tiny_families

    with_checkpoints = {name for name in family_names() if get_family(name).checkpoints}
    assert with_checkpoints == set(tiny_families())
