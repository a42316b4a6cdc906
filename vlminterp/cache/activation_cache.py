"""ActivationCache: TransformerLens's own cache, made right for VLM prompts and position selections.

vlminterp's cache *is* a :class:`transformer_lens.ActivationCache` (a subclass), so every TL method
and every TL function that takes a cache works unchanged: ``accumulated_resid``, ``decompose_resid``,
``stack_activation``, ``stack_head_results``, ``apply_ln_to_stack``, ``logit_attrs``,
``get_full_resid_decomposition``, ``remove_batch_dim``, ``logit_lens``, TL's short names
(``cache["resid_post", -1]``, ``cache["attn", 0]`` is the pattern) and negative layer indices.
Wrapping instead of re-implementing keeps one copy of that math (TL's), and the parity tests
compare against TL running on the same bridge. The subclass changes four things:

- **Image prompts.** TL's ``"embed"`` component is ``hook_embed``, the token embeddings. In a VLM
  the image features are merged into the embeddings *after* that hook, so on image rows TL's
  decomposition would not sum to the residual stream. Here ``"embed"`` is the decoder's input,
  ``blocks.0.hook_resid_pre`` (token embeddings with image features merged); on text-only rows
  the two are equal, so text-only results match TL exactly.
- **Position selections.** ``run_with_cache(positions=...)`` keeps fewer positions. ``"last"``,
  ``"last_instruction"`` and ints leave no ``pos`` axis (``[batch, d_model]``), an index tensor
  keeps ``k`` positions, ``"mean_text"`` keeps a mean. Methods work on all of them as TL does on a
  batch without positions; a ``pos_slice`` on a cache without a ``pos`` axis, and layer-norm scaling
  (``apply_ln``) of a ``"mean_text"`` cache (a mean has no layer-norm scale), raise and say what to
  cache instead.
- **No strong reference to the model.** TL's cache holds the model (``cache.model``). Ours holds a
  view with the model's config and a *weak* reference to the bridge: ``W_O``, ``ln_final`` and
  ``W_U`` (read by ``stack_head_results``, ``accumulated_resid(apply_ln=True)`` and
  ``logit_attrs``) come from the live model, and a cache kept after the model is freed says so
  instead of keeping gigabytes of weights alive.
- **Errors and metadata.** A missing name raises ``KeyError`` with the closest cached names;
  ``positions`` and ``meta`` (conditions, sample ids, labels) describe the rows, and
  :meth:`stack` stacks one hook kind over layers. As in TL, ``to(device)`` moves the tensors in
  place and returns the cache.

Shapes (``pos`` is absent after a per-row position selection):

- ``blocks.{l}.hook_resid_pre/mid/post``, ``hook_attn_out``, ``hook_mlp_out``: ``[batch, pos, d_model]``
- ``blocks.{l}.attn.hook_q/k/v/z``: ``[batch, pos, head_index, d_head]``
- ``blocks.{l}.attn.hook_pattern/hook_attn_scores``: ``[batch, head_index, query_pos, key_pos]``
- ``X_grad`` (``run_with_cache(..., incl_bwd=True)``): the gradient of the metric w.r.t. ``X``.

Example:
    >>> from vlminterp import HookedVLM, Sample, Condition, PromptBatch
    >>> model = HookedVLM.tiny("llava")
    >>> batch = PromptBatch.paired(model, [Sample(id="a", query="what is this ?")], [Condition.TEXT_ONLY])
    >>> _, cache = model.run_with_cache(batch, positions="last")
    >>> cache["resid_post", -1].shape
    torch.Size([1, 64])
    >>> stack, labels = cache.decompose_resid(return_labels=True)
    >>> labels
    ['embed', '0_attn_out', '0_mlp_out', '1_attn_out', '1_mlp_out']
    >>> bool(torch.allclose(stack.sum(0), cache["resid_post", -1], atol=1e-5))
    True
"""

from __future__ import annotations

import difflib
import weakref
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import transformer_lens
from jaxtyping import Float
from torch import Tensor
from transformer_lens.utilities import Slice, get_act_name

from vlminterp.hook_names import layer_hook_name

__all__ = ["ActivationCache", "ModelFreedError"]

#: The decoder's input embeddings (token embeddings with image features merged).
EMBED_INPUT = "blocks.0.hook_resid_pre"
#: Conditions whose rows carry no image tokens (hook_embed is then the decoder's input).
_TEXT_CONDITIONS = frozenset({"text_only", "caption"})


class ModelFreedError(RuntimeError):
    """A cache method needs the model's weights, and the model the cache came from is gone."""


class _ModelView:
    """What TransformerLens's cache methods read from ``cache.model``, without owning the model.

    ``cfg`` is kept (a small config object, absent without a model); every other attribute (``blocks``, ``ln_final``,
    ``W_U``, ``tokens_to_residual_directions``, ...) is read from the bridge through a weak reference.
    """

    def __init__(self, bridge: Any | None):
        self._ref = None if bridge is None else weakref.ref(bridge)
        if bridge is not None:
            self.cfg = bridge.cfg

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        bridge = None if self._ref is None else self._ref()
        if bridge is None:
            why = (
                "it was built without a model: pass model=model.bridge"
                if self._ref is None
                else "the model it came from was freed: keep the HookedVLM alive while you use its cache"
            )
            raise ModelFreedError(
                f"This ActivationCache needs the model's {name!r} (config, weights, layer norms or "
                f"tokenizer), but {why}."
            )
        return getattr(bridge, name)


class ActivationCache(transformer_lens.ActivationCache):
    """TransformerLens's ``ActivationCache`` over a vlminterp run (see the module docstring).

    Args:
        data: hook name -> tensor.
        positions: The position selection applied at capture time (``None`` = full sequences).
        meta: Row metadata of the batch (``conditions``, ``sample_ids``, ``labels``).
        model: The ``TransformerBridge`` the activations come from (held weakly), or another
            cache's ``.model``; needed by the methods that read the config or weights
            (``decompose_resid``, ``stack_head_results``, ``apply_ln``, ``logit_attrs``) and by
            negative layer indices.
        has_batch_dim: Whether tensors have a batch axis (TL's flag; see :meth:`remove_batch_dim`).
    """

    def __init__(
        self,
        data: Mapping[str, Tensor],
        positions: Any = None,
        meta: dict[str, Any] | None = None,
        *,
        model: Any | None = None,
        has_batch_dim: bool = True,
    ):
        view = model if isinstance(model, _ModelView) else _ModelView(model)  # another cache's .model
        super().__init__(dict(data), view, has_batch_dim=has_batch_dim)
        self.positions = positions
        self.meta = meta or {}

    # ------------------------------------------------------------------ mapping
    def __getitem__(self, key: str | tuple) -> Tensor:
        """A cached tensor by full name, TL short name (``"resid_post"``) or ``(kind, layer[, sublayer])``."""
        if isinstance(key, str) and key in self.cache_dict:
            return self.cache_dict[key]
        names = [key] if isinstance(key, str) else []
        if isinstance(key, str) and "." not in key:
            names.append(get_act_name(key))
        elif isinstance(key, tuple) and key:
            kind, layer, *rest = (*key, None) if len(key) == 1 else key
            if layer is not None and layer < 0:
                layer += self._n_layers()
            names.append(get_act_name(kind, layer, *rest))
            if layer is not None:
                names.append(layer_hook_name(kind, layer))
        for name in names:
            if name in self.cache_dict:
                return self.cache_dict[name]
        wanted = names[0] if names else repr(key)
        close = difflib.get_close_matches(wanted, list(self.cache_dict), n=5, cutoff=0.3)
        raise KeyError(f"{wanted!r} is not in this cache. Cached names close to it: {close}.")

    def __contains__(self, key: object) -> bool:
        return key in self.cache_dict

    def get(self, key: str, default: Any = None) -> Any:
        """``cache[key]`` if cached, else ``default`` (dict semantics, full names only)."""
        return self.cache_dict.get(key, default)

    def __repr__(self) -> str:
        return f"ActivationCache({len(self)} hooks, positions={self.positions!r})"

    def _n_layers(self) -> int:
        return int(self.model.cfg.n_layers)

    # ------------------------------------------------------------------ vlminterp additions
    def stack(self, kind: str, layers: Sequence[int] | None = None) -> Float[Tensor, "layers ..."]:
        """Stack one hook kind over layers: ``cache.stack("resid_post")`` -> ``[layers, batch, ...]``.

        Unlike TL's :meth:`stack_activation` (layers ``0..layer-1``, all required), this stacks the
        layers present in the cache, which suits caches of a layer range.

        Args:
            kind: A short hook kind (``"resid_post"``, ``"z"``, ...) or a block-relative name.
            layers: Layers to stack; default every layer present in the cache, ascending.
        """
        if layers is None:
            layers = sorted(
                int(n.split(".")[1])
                for n in self.cache_dict
                if n.startswith("blocks.") and n == layer_hook_name(kind, int(n.split(".")[1]))
            )
            if not layers:
                raise KeyError(
                    f"No {kind!r} activations in this cache; cached names: {list(self.cache_dict)[:8]}..."
                )
        return torch.stack([self[kind, layer] for layer in layers])

    def apply_slice_to_batch_dim(self, batch_slice: Any) -> ActivationCache:
        """TL's :meth:`transformer_lens.ActivationCache.apply_slice_to_batch_dim`, keeping this class,
        the model view, ``positions`` and the rows' ``meta``.

        Example:
            >>> cache = ActivationCache({"x": torch.zeros(3, 2)}, meta={"sample_ids": ["a", "b", "c"]})
            >>> cache.apply_slice_to_batch_dim([0, 2]).meta["sample_ids"]
            ['a', 'c']
        """
        n = self._batch_size()
        sliced = super().apply_slice_to_batch_dim(batch_slice)
        rows = (batch_slice if isinstance(batch_slice, Slice) else Slice(batch_slice)).indices(n)
        meta = {
            k: [v[int(i)] for i in rows] if isinstance(v, list) and len(v) == n else v
            for k, v in self.meta.items()
        }
        return ActivationCache(
            sliced.cache_dict, self.positions, meta, model=self.model, has_batch_dim=sliced.has_batch_dim
        )

    # ------------------------------------------------------------------ position selections
    def _has_pos_axis(self) -> bool:
        return self.positions is None or isinstance(self.positions, list)

    def _check_pos_slice(self, pos_slice: Any, method: str) -> None:
        if pos_slice is None or (isinstance(pos_slice, Slice) and pos_slice.mode == "identity"):
            return
        if not self._has_pos_axis():
            raise ValueError(
                f"{method}(pos_slice=...): this cache kept positions={self.positions!r} (one vector per row, "
                "no pos axis), so there are no positions to slice. Cache with positions=None (or an index "
                "tensor of the positions you need) to use pos_slice."
            )

    def _check_ln(self, method: str) -> None:
        if self.positions == "mean_text":
            raise ValueError(
                f"{method} with layer-norm scaling: this cache kept positions='mean_text' (a mean over text "
                "tokens), which has no layer-norm scale. Cache the positions themselves (positions=None or "
                "an index tensor) and average after apply_ln."
            )

    def accumulated_resid(
        self,
        layer: int | None = None,
        incl_mid: bool = False,
        apply_ln: bool = False,
        pos_slice: Any = None,
        mlp_input: bool = False,
        return_labels: bool = False,
    ) -> Any:
        """TL's :meth:`transformer_lens.ActivationCache.accumulated_resid`, position-checked."""
        self._check_pos_slice(pos_slice, "accumulated_resid")
        if apply_ln:
            self._check_ln("accumulated_resid")
        return super().accumulated_resid(layer, incl_mid, apply_ln, pos_slice, mlp_input, return_labels)

    def apply_ln_to_stack(
        self,
        residual_stack: Float[Tensor, "num_components *batch_and_pos_dims d_model"],
        layer: int | None = None,
        mlp_input: bool = False,
        pos_slice: Any = None,
        batch_slice: Any = None,
        has_batch_dim: bool = True,
        recompute_ln: bool = False,
    ) -> Float[Tensor, "num_components *batch_and_pos_dims_out d_model"]:
        """TL's :meth:`transformer_lens.ActivationCache.apply_ln_to_stack`, position-checked."""
        self._check_pos_slice(pos_slice, "apply_ln_to_stack")
        self._check_ln("apply_ln_to_stack")
        return super().apply_ln_to_stack(
            residual_stack, layer, mlp_input, pos_slice, batch_slice, has_batch_dim, recompute_ln
        )

    def stack_head_results(
        self,
        layer: int = -1,
        return_labels: bool = False,
        incl_remainder: bool = False,
        pos_slice: Any = None,
        apply_ln: bool = False,
    ) -> Any:
        """TL's :meth:`transformer_lens.ActivationCache.stack_head_results` (``z @ W_O`` per head when
        ``attn.hook_result`` was not cached), position-checked."""
        self._check_pos_slice(pos_slice, "stack_head_results")
        return super().stack_head_results(layer, return_labels, incl_remainder, pos_slice, apply_ln)

    def logit_attrs(
        self,
        residual_stack: Float[Tensor, "num_components *batch_and_pos_dims d_model"],
        tokens: Any,
        incorrect_tokens: Any = None,
        pos_slice: Any = None,
        batch_slice: Any = None,
        has_batch_dim: bool = True,
    ) -> Float[Tensor, "num_components ..."]:
        """TL's :meth:`transformer_lens.ActivationCache.logit_attrs`, position-checked."""
        self._check_pos_slice(pos_slice, "logit_attrs")
        return super().logit_attrs(
            residual_stack, tokens, incorrect_tokens, pos_slice, batch_slice, has_batch_dim
        )

    # ------------------------------------------------------------------ image-aware decompositions
    def _embed_row(self, pos_slice: Any, method: str) -> Float[Tensor, "1 *batch_and_pos_dims d_model"]:
        """The ``"embed"`` component: the decoder's input (image features merged), pos-sliced."""
        if EMBED_INPUT in self.cache_dict:
            source = self.cache_dict[EMBED_INPUT]
        elif set(self.meta.get("conditions", ["image"])) <= _TEXT_CONDITIONS:
            source = self.cache_dict["hook_embed"]  # no image tokens: the token embeddings are the input
        else:
            raise KeyError(
                f"{method}: the 'embed' component of an image prompt is {EMBED_INPUT!r} (token embeddings with "
                "the image features merged, which 'hook_embed' does not hold); cache it too."
            )
        pos_slice = pos_slice if isinstance(pos_slice, Slice) else Slice(pos_slice)
        return pos_slice.apply(source, dim=-2)[None]

    def _replace_embed(
        self,
        stack: Tensor,
        labels: list[str],
        pos_slice: Any,
        method: str,
        transform: Any = None,
    ) -> Tensor:
        if "embed" not in labels:
            return stack
        row = self._embed_row(pos_slice, method)
        if transform is not None:
            row = transform(row)
        stack = stack.clone()
        stack[labels.index("embed")] = row[0].to(stack.dtype)
        return stack

    def decompose_resid(
        self,
        layer: int | None = None,
        mlp_input: bool = False,
        mode: str = "all",
        apply_ln: bool = False,
        pos_slice: Any = None,
        incl_embeds: bool = True,
        return_labels: bool = False,
    ) -> Any:
        """TL's :meth:`transformer_lens.ActivationCache.decompose_resid`, with ``"embed"`` = the decoder's
        input (image features merged), so the stack sums to the residual stream on image prompts too."""
        self._check_pos_slice(pos_slice, "decompose_resid")
        if apply_ln:
            self._check_ln("decompose_resid")
        stack, labels = super().decompose_resid(
            layer, mlp_input, mode, False, pos_slice, incl_embeds, return_labels=True
        )
        stack = self._replace_embed(stack, labels, pos_slice, "decompose_resid")
        if apply_ln:
            layer = self.model.cfg.n_layers if layer is None or layer == -1 else layer
            stack = self.apply_ln_to_stack(stack, layer, pos_slice=pos_slice, mlp_input=mlp_input)
        return (stack, labels) if return_labels else stack

    def get_full_resid_decomposition(
        self,
        layer: int | None = None,
        mlp_input: bool = False,
        expand_neurons: bool = True,
        apply_ln: bool = False,
        pos_slice: Any = None,
        return_labels: bool = False,
        project_output_onto: Tensor | None = None,
    ) -> Any:
        """TL's :meth:`transformer_lens.ActivationCache.get_full_resid_decomposition`, with ``"embed"`` =
        the decoder's input (image features merged)."""
        self._check_pos_slice(pos_slice, "get_full_resid_decomposition")
        if apply_ln:
            self._check_ln("get_full_resid_decomposition")
        stack, labels = super().get_full_resid_decomposition(
            layer, mlp_input, expand_neurons, apply_ln, pos_slice, True, project_output_onto
        )
        target = self.model.cfg.n_layers if layer is None or layer == -1 else layer

        def transform(row: Tensor) -> Tensor:
            if apply_ln:
                row = self.apply_ln_to_stack(row, target, pos_slice=pos_slice, mlp_input=mlp_input)
            if project_output_onto is not None:
                row = row @ project_output_onto
            return row

        stack = self._replace_embed(stack, labels, pos_slice, "get_full_resid_decomposition", transform)
        return (stack, labels) if return_labels else stack


Mapping.register(ActivationCache)
