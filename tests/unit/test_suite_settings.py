"""The test run's own settings (root ``conftest.py``): one torch thread per pytest-xdist worker.

``make test`` runs two workers on two cores; with torch's default (a thread per core) the workers'
four busy threads fought over two cores and the suite took minutes longer.
"""

from __future__ import annotations

import os

import pytest
import torch


@pytest.mark.skipif(
    not os.environ.get("PYTEST_XDIST_WORKER"), reason="only in pytest-xdist workers (make test)"
)
def test_xdist_workers_run_torch_on_one_thread():
    assert torch.get_num_threads() == 1
    assert os.environ["OMP_NUM_THREADS"] == "1"  # inherited by the CLI subprocesses and notebook kernels
