"""Hook-name helpers and the family registry (no model)."""

from __future__ import annotations

import pytest

from vlminterp.hook_names import layer_hook_name, resolve_names
from vlminterp.models.families import Family, family_for_config, family_names, get_family, register_family


def test_layer_hook_name_kinds():
    assert layer_hook_name("resid_post", 3) == "blocks.3.hook_resid_post"
    assert layer_hook_name("resid_pre", 0) == "blocks.0.hook_resid_pre"
    assert layer_hook_name("z", 2) == "blocks.2.attn.hook_z"
    assert layer_hook_name("pattern", 1) == "blocks.1.attn.hook_pattern"
    assert layer_hook_name("mlp_post", 1) == "blocks.1.mlp.hook_post"
    assert layer_hook_name("attn.hook_q", 4) == "blocks.4.attn.hook_q"


def test_resolve_names_filters():
    valid = ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post", "blocks.0.attn.hook_z"]
    assert resolve_names(None, valid) == valid
    assert resolve_names("blocks.0.attn.hook_z", valid) == ["blocks.0.attn.hook_z"]
    assert resolve_names(lambda n: n.endswith("resid_post"), valid) == valid[:2]
    with pytest.raises(ValueError, match=r"Closest valid names: \['blocks.1.hook_resid_post'"):
        resolve_names(["blocks.1.hook_resid_pots"], valid)
    with pytest.raises(ValueError, match="matched no hook"):
        resolve_names(lambda n: False, valid)


def test_resolve_names_refuses_a_filter_of_another_type(no_shape_checks):
    with pytest.raises(ValueError, match="names_filter must be"):
        resolve_names(3, ["blocks.0.hook_resid_post"])


class _Cfg:
    def __init__(self, model_type, family=None):
        self.model_type = model_type
        if family:
            self.vlminterp_family = family


def test_family_lookup():
    assert family_for_config(_Cfg("llava")).name == "llava"
    assert "llava" in family_names()
    with pytest.raises(ValueError, match="Supported"):
        family_for_config(_Cfg("bert"))
    fam = register_family(
        Family(
            name="unit_custom", model_types=(), chat_template="{{ x }}", caption_template="{caption}|{query}"
        )
    )
    assert family_for_config(_Cfg("llava", family="unit_custom")) is fam
    assert get_family("unit_custom").caption_text("q", "c") == "c|q"
    msgs = fam.messages("hello", with_image=True)
    assert msgs[0]["content"] == [{"type": "image"}, {"type": "text", "text": "hello"}]
