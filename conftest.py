"""pytest settings for the whole checkout: runtime shape checks, and the doctests of the package.

Runtime checks: every function and dataclass of the packages that take or return tensors
(:data:`SHAPE_CHECKED`) checks its annotations, shapes included, with jaxtyping and beartype
(``is_pep484_tower``: an int is a float, as PEP 484 says). The import hook is installed here, before
anything imports vlminterp (jaxtyping's own ``--jaxtyping-packages`` option reads only one package
when the type checker takes arguments). The application layer (eval, reproduce, studies, cli, data,
viz, ...) holds no tensor API and is left out: checking it cost a quarter of the suite's time.
Tests of the library's own bad-input errors turn the checks off for the call
(``tests/conftest.py``: ``no_shape_checks``).

Every module's docstring examples run offline on tiny random VLMs (``--doctest-modules``), except
in the modules listed here.

Threads: each pytest-xdist worker runs torch (and the subprocesses and notebook kernels it starts)
on one thread. ``make test`` runs two workers on two cores; torch's default of one thread per core
put four busy threads on two cores, which made the tiny models' forwards about twice as slow.
"""

import os

import jaxtyping
import torch

if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"  # subprocesses and notebook kernels started by the tests
    torch.set_num_threads(1)

#: Packages checked at runtime (``tests/unit/test_shape_checks.py`` checks that none is missing).
SHAPE_CHECKED = tuple(
    f"vlminterp.{name}"
    for name in ("models", "cache", "interventions", "analysis", "prompts", "references", "sweeps",
                 "organism", "directions", "positions", "hook_names")
)  # fmt: skip
jaxtyping.install_import_hook(
    SHAPE_CHECKED, "beartype.beartype(conf=beartype.BeartypeConf(is_pep484_tower=True))"
)

#: Modules whose examples are not collected: they are being rewritten for the intervention protocol
#: (issue "One intervention protocol, one application layer"); remove each entry once it lands.
DOCTEST_EXCLUDED: list[str] = []

collect_ignore = DOCTEST_EXCLUDED
