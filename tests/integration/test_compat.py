"""The KV-cache keyword fix (transformers 5.24+) and the prompt-pass guard: scoped, gated, loud.

The generation references (``test_generation_references.py``) show the fix is exact; these tests
pin down its mechanics: the fixed update writes a cache handed over as ``cache=``, only the bridges
vlminterp boots are changed, the version gate and the env override work, a prompt pass that
leaves the cache empty raises instead of returning tokens computed without context, and our runs
hand the cache over under the keyword the installed ``forward`` takes (no deprecation warning).
"""

from __future__ import annotations

import logging
import warnings

import pytest
import torch
from transformers import DynamicCache

from vlminterp import Condition, HookedVLM, PromptBatch, Sample
from vlminterp.models import compat

pytestmark = pytest.mark.reference


@pytest.fixture
def forced(monkeypatch):
    monkeypatch.setenv("VLMINTERP_KV_CACHE_FIX", "1")


def _attention(model):
    from transformer_lens.model_bridge.generalized_components.attention import AttentionBridge

    return [m for m in model.bridge.modules() if isinstance(m, AttentionBridge)]


def _prefill_length(model) -> tuple[int, int]:
    batch = PromptBatch.paired(model, [Sample(id="a", query="what is this ?")], [Condition.TEXT_ONLY])
    _, past = model.bridge(
        batch.input_ids, return_type="logits_and_cache", attention_mask=batch.attention_mask, use_cache=True
    )
    return past.get_seq_length(), batch.input_ids.shape[1]


def test_gate_follows_the_transformers_version_and_the_env(monkeypatch):
    monkeypatch.delenv("VLMINTERP_KV_CACHE_FIX", raising=False)
    monkeypatch.setattr(compat.transformers, "__version__", "5.23.0")
    assert not compat.kv_cache_fix_needed()
    for version in ("5.24.0", "5.24.0.dev0", "5.30.1"):
        monkeypatch.setattr(compat.transformers, "__version__", version)
        assert compat.kv_cache_fix_needed(), version
    monkeypatch.setenv("VLMINTERP_KV_CACHE_FIX", "0")
    assert not compat.kv_cache_fix_needed()
    monkeypatch.setenv("VLMINTERP_KV_CACHE_FIX", "1")
    monkeypatch.setattr(compat.transformers, "__version__", "5.23.0")
    assert compat.kv_cache_fix_needed()


def test_fixed_update_writes_a_cache_passed_as_cache_keyword(forced):
    """What transformers 5.24 does: the attention module gets the cache as ``cache=``."""
    model = HookedVLM.tiny("llava")
    attention = _attention(model)
    layer = next(a for a in attention if getattr(a, "_layer_idx", None) == 0)
    k, v = torch.randn(1, 2, 3, 4), torch.randn(1, 2, 3, 4)
    unfixed_cache = DynamicCache()
    type(layer)._update_kv_cache(layer, k, v, cache=unfixed_cache)
    assert unfixed_cache.get_seq_length() == 0, "TransformerLens now reads cache=; the fix may be retired"
    cache = DynamicCache()
    k2, v2 = layer._update_kv_cache(k, v, cache=cache)
    assert cache.get_seq_length() == 3
    torch.testing.assert_close(k2, k)
    k3, _ = layer._update_kv_cache(k, v, cache=cache)
    assert k3.shape[-2] == 6, "the second update must see the first one's keys"


def test_fix_is_scoped_to_the_bridges_vlminterp_boots(forced):
    from transformer_lens.model_bridge import TransformerBridge
    from transformer_lens.model_bridge.generalized_components.attention import AttentionBridge

    original = AttentionBridge._update_kv_cache
    model = HookedVLM.tiny("llava")
    assert all("_update_kv_cache" in vars(a) for a in _attention(model))
    assert AttentionBridge._update_kv_cache is original, "the class must never be patched"
    other = TransformerBridge.boot_transformers(model.cfg.model_id, device="cpu")
    others = [m for m in other.modules() if isinstance(m, AttentionBridge)]
    assert others and not any("_update_kv_cache" in vars(a) for a in others)


def test_fix_is_logged_once(forced, monkeypatch, caplog):
    monkeypatch.setattr(compat, "_logged", False)
    with caplog.at_level(logging.WARNING, logger=compat.__name__):
        HookedVLM.tiny("llava")
        HookedVLM.tiny("llava")
    assert sum("cache=" in r.getMessage() for r in caplog.records) == 1


def test_prompt_pass_fills_the_cache_on_the_installed_versions():
    length, prompt = _prefill_length(HookedVLM.tiny("llava"))
    assert length == prompt


@pytest.mark.skipif(
    not compat.kv_cache_fix_needed(), reason="the installed transformers passes past_key_values"
)
def test_without_the_fix_the_installed_versions_lose_the_prompt(monkeypatch):
    """Guards the guard: on 5.24+ TransformerLens alone leaves the cache empty (the bug the fix repairs)."""
    monkeypatch.setenv("VLMINTERP_KV_CACHE_FIX", "0")
    length, prompt = _prefill_length(HookedVLM.tiny("llava"))
    assert (length, prompt) == (0, prompt)


def test_guard_raises_on_a_cache_without_the_prompt(monkeypatch):
    monkeypatch.delenv("VLMINTERP_KV_CACHE_FIX", raising=False)
    cache = DynamicCache()
    with pytest.raises(compat.KVCacheError, match="holds 0 positions, not the prompt's 4.*vlminterp doctor"):
        compat.check_prefill_cache(cache, 4)
    cache.update(torch.zeros(1, 1, 4, 2), torch.zeros(1, 1, 4, 2), 0)
    compat.check_prefill_cache(cache, 4)
    monkeypatch.setenv("VLMINTERP_KV_CACHE_FIX", "0")
    compat.check_prefill_cache(DynamicCache(), 4)


def test_generate_raises_when_the_prompt_pass_leaves_the_cache_empty(tiny_model, monkeypatch):
    """Simulates the 5.24 break on any version: every attention update drops the cache."""
    monkeypatch.delenv("VLMINTERP_KV_CACHE_FIX", raising=False)
    batch = PromptBatch.paired(tiny_model, [Sample(id="a", query="what is this ?")], [Condition.TEXT_ONLY])
    for layer in _attention(tiny_model):
        monkeypatch.setattr(layer, "_update_kv_cache", lambda k, v, **kwargs: (k, v))
    with pytest.raises(compat.KVCacheError):
        tiny_model.generate(batch, max_new_tokens=3)
    assert tiny_model.count_hooks() == 0


def test_guard_reads_legacy_tuple_caches(monkeypatch):
    """Remote-code models (fallback adapter) return ``((key, value), ...)`` with keys ``[batch, heads, pos, d]``."""
    monkeypatch.delenv("VLMINTERP_KV_CACHE_FIX", raising=False)
    full = ((torch.zeros(1, 2, 5, 3), torch.zeros(1, 2, 5, 3)),)
    compat.check_prefill_cache(full, 5)
    with pytest.raises(compat.KVCacheError, match="holds 5 positions, not the prompt's 6"):
        compat.check_prefill_cache(full, 6)
    with pytest.raises(compat.KVCacheError, match="holds None positions"):
        compat.check_prefill_cache(None, 6)


class _TakesCache(torch.nn.Module):
    def forward(self, input_ids, cache=None, use_cache=None): ...


class _TakesPast(torch.nn.Module):
    def forward(self, input_ids, past_key_values=None, use_cache=None): ...


class _TakesAnything(torch.nn.Module):
    def forward(self, input_ids, **kwargs): ...


def test_kv_cache_keyword_is_the_one_the_forward_names():
    assert compat.kv_cache_keyword(_TakesCache()) == "cache"
    assert compat.kv_cache_keyword(_TakesPast()) == "past_key_values"
    assert compat.kv_cache_keyword(_TakesAnything()) == "past_key_values"


def _cache_keywords_of_generate(model) -> set[str]:
    """The cache keywords the HF model's forward was called with during a 3-token generate."""
    seen: set[str] = set()

    def record(module, args, kwargs):
        seen.update(k for k in ("cache", "past_key_values") if kwargs.get(k) is not None)

    handle = model.hf_model.register_forward_pre_hook(record, with_kwargs=True)
    batch = PromptBatch.paired(model, [Sample(id="a", query="what is this ?")], [Condition.TEXT_ONLY])
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model.generate(batch, max_new_tokens=3)
    finally:
        handle.remove()
    deprecated = [
        w for w in caught if issubclass(w.category, FutureWarning) and "past_key_values" in str(w.message)
    ]
    assert not deprecated, [str(w.message) for w in deprecated]
    return seen


def test_runs_pass_the_cache_under_the_keyword_the_forward_takes():
    """transformers 5.24 takes ``cache=`` and warns on ``past_key_values`` (removed in 5.40).

    Under the lock (5.23) the keyword is ``past_key_values``; ``make test-latest`` runs this on the
    newest release, where passing ``past_key_values`` fails it (the FutureWarning, and the keyword).
    The remote-code model of the fallback adapter takes ``past_key_values`` on every release.
    """
    from vlminterp.testing import tiny_remote_vlm_dir

    for model in (
        HookedVLM.tiny("llava"),
        HookedVLM.from_pretrained(tiny_remote_vlm_dir(), trust_remote_code=True),
    ):
        assert _cache_keywords_of_generate(model) == {compat.kv_cache_keyword(model.hf_model)}
