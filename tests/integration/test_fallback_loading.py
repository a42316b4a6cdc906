"""from_pretrained picks the fallback adapter for checkpoints the bridge cannot wrap; unknown families raise."""

from __future__ import annotations

import json
import logging
import shutil

import pytest
import torch

from tests.conftest import torch_hook_snapshot
from vlminterp import Condition, HookedVLM, PromptBatch
from vlminterp.interventions import CMRM
from vlminterp.models.fallback import FallbackBridge
from vlminterp.testing import tiny_remote_vlm_dir


@pytest.fixture(scope="module")
def remote():
    return HookedVLM.from_pretrained(tiny_remote_vlm_dir(), trust_remote_code=True)


def test_remote_code_checkpoint_runs_through_the_fallback(remote, samples, caplog):
    with caplog.at_level(logging.INFO):
        model = HookedVLM.from_pretrained(tiny_remote_vlm_dir(), trust_remote_code=True)
    assert isinstance(model.bridge, FallbackBridge)
    assert "FallbackBridge" in caplog.text
    batch = PromptBatch.paired(remote, samples[:2], [Condition.IMAGE, Condition.TEXT_ONLY, Condition.BLANK])
    names = remote.hook_names("resid_post")
    before = torch_hook_snapshot(remote)
    logits, cache = remote.run_with_cache(batch, names_filter=names, positions="last")
    torch.testing.assert_close(cache[names[-1]].shape, torch.Size([len(batch), remote.cfg.d_model]))
    vectors = CMRM.fit(remote, samples[:2], progress=False)
    steered, _ = CMRM(vectors, alpha=1.0).run_with_cache(remote, batch, names_filter=[])
    assert (steered[:, -1] - logits[:, -1]).abs().amax(-1)[batch.rows(Condition.IMAGE)].min() > 1e-5
    gen = remote.generate(batch, max_new_tokens=3)
    assert len(gen.tokens) == len(batch)
    assert remote.count_hooks() == 0 and torch_hook_snapshot(remote) == before


def test_unknown_family_raises_unless_named(tmp_path):
    folder = tmp_path / "remote"
    shutil.copytree(tiny_remote_vlm_dir(), folder)
    config = json.loads((folder / "config.json").read_text())
    config.pop("vlminterp_family")
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"Unsupported VLM family.*'llava'.*pass family=") as err:
        HookedVLM.from_pretrained(folder, trust_remote_code=True)
    assert "fallback adapter" in str(err.value)
    model = HookedVLM.from_pretrained(folder, trust_remote_code=True, family="llava")
    assert model.family == "llava" and isinstance(model.bridge, FallbackBridge)
