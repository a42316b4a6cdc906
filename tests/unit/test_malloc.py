"""vlminterp.malloc: the mallopt tuning applied at import, its opt-outs, and what benchmarks record."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from vlminterp.malloc import ENV_VARS, MALLOPT_SETTINGS, tune_malloc

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt is Linux-only")

PROBE = "import json, vlminterp; from vlminterp.malloc import malloc_settings; print(json.dumps(malloc_settings()))"


def _settings_in_fresh_process(**env: str) -> dict:
    base = {k: v for k, v in os.environ.items() if k not in ENV_VARS and k != "VLMINTERP_MALLOC"}
    out = subprocess.run([sys.executable, "-c", PROBE], env={**base, **env}, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_import_applies_the_makefile_policy_in_a_plain_process():
    settings = _settings_in_fresh_process()
    assert settings["mallopt"] == {name: value for name, (_, value) in MALLOPT_SETTINGS.items()}
    assert settings["mallopt"]["M_MMAP_THRESHOLD"] == 33554432  # the Makefile's MALLOC_MMAP_THRESHOLD_


def test_opt_out_and_user_environment_are_respected():
    assert _settings_in_fresh_process(VLMINTERP_MALLOC="0")["mallopt"] == {}
    chosen = _settings_in_fresh_process(MALLOC_TOP_PAD_="4096")
    assert chosen["mallopt"] == {} and chosen["env"]["MALLOC_TOP_PAD_"] == "4096"


def test_tune_malloc_reads_the_given_environment():
    assert tune_malloc({"VLMINTERP_MALLOC": "0"}) == {}
    assert tune_malloc({"MALLOC_MMAP_THRESHOLD_": "1"}) == {}
    assert set(tune_malloc({})) == set(MALLOPT_SETTINGS)
