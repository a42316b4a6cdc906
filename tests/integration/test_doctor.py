"""``vlminterp doctor``: all-pass on the installed versions, and it names a family whose cache breaks."""

from __future__ import annotations

import pytest

from vlminterp import doctor
from vlminterp.models import compat

pytestmark = pytest.mark.reference


def test_doctor_passes_and_prints_the_versions(capsys):
    assert doctor.main(["--families", "llava"]) == 0
    out = capsys.readouterr().out
    assert "transformers " in out and "transformer-lens " in out and "torch " in out
    assert "llava            PASS  8/8 checks" in out
    assert "all 1 of 1 families pass" in out


def test_doctor_names_a_family_whose_cache_is_dropped(monkeypatch, capsys):
    """The 5.24 break simulated on any version: attention updates drop the cache, guard and fix off."""
    from transformer_lens.model_bridge.generalized_components.attention import AttentionBridge

    monkeypatch.setenv("VLMINTERP_KV_CACHE_FIX", "0")
    monkeypatch.setattr(AttentionBridge, "_update_kv_cache", lambda self, k, v, **kwargs: (k, v))
    assert doctor.main(["--families", "llava"]) == 1
    out = capsys.readouterr().out
    assert "llava            FAIL" in out
    assert "generate == full recompute: row 0 differs at step 1" in out
    assert "BROKEN with these versions: llava." in out


@pytest.mark.skipif(
    not compat.kv_cache_fix_needed(), reason="the installed transformers needs no KV-cache fix"
)
def test_doctor_without_the_fix_names_the_broken_families(monkeypatch, capsys):
    monkeypatch.setenv("VLMINTERP_KV_CACHE_FIX", "0")
    assert doctor.main(["--families", "llava,gemma3"]) == 1
    assert "BROKEN with these versions: llava, gemma3." in capsys.readouterr().out


def test_unknown_family_is_refused():
    with pytest.raises(SystemExit):
        doctor.main(["--families", "llama"])
