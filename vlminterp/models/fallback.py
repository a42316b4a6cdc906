"""Fallback adapter: TransformerLens decoder hook names on a model the bridge cannot wrap.

TransformerLens 4.3's ``TransformerBridge`` needs an architecture adapter for the checkpoint's
class; remote-code VLMs (the original Qwen-VL ``QWenLMHeadModel``, MiniGPT-4-style models) have
none. :class:`FallbackBridge` stands in for the bridge inside ``HookedVLM``: it forwards calls to
the HF model unchanged and exposes the decoder hook points under TransformerLens names:

- ``blocks.{l}.hook_resid_pre``: the hidden states entering decoder layer ``l``;
- ``blocks.{l}.attn.hook_z``: the input of the attention output projection, ``[batch, pos,
  n_heads, d_head]`` (``hook_z`` reshaped ``[batch, pos, n_heads * d_head]`` times ``W_O^T`` is
  the projection's output);
- ``blocks.{l}.hook_attn_out`` / ``hook_mlp_out``: the outputs of the attention and MLP modules;
- ``blocks.{l}.hook_resid_mid``: the input of the post-attention norm (sequential pre-norm blocks
  only: not fired for parallel attention/MLP blocks or sandwich norms);
- ``blocks.{l}.hook_resid_post``: the hidden states leaving layer ``l``.

Each hook point is a TransformerLens ``HookPoint``. Adding a hook to it also installs a torch
forward (pre-)hook on the matching HF module, which routes the activation through the point (so a
hook fn may return a replacement); removing the point's last hook removes that module hook too.
Between hooked calls the HF model carries no torch hooks from vlminterp.

Example:
    >>> from transformers import AutoModelForCausalLM
    >>> from vlminterp.testing import tiny_remote_vlm_dir
    >>> hf = AutoModelForCausalLM.from_pretrained(tiny_remote_vlm_dir(), trust_remote_code=True)
    >>> bridge = FallbackBridge.from_model(hf)
    >>> sorted(bridge.hook_dict)[:2]
    ['blocks.0.attn.hook_z', 'blocks.0.hook_attn_out']
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn
from transformer_lens.hook_points import HookPoint, LensHandle

__all__ = ["FallbackBridge", "FallbackConfig", "ModuleHookPoint", "bridge_supports", "load_fallback"]

logger = logging.getLogger(__name__)

#: Where decoder layer lists live, most common first (VLM wrappers, then plain LMs).
LAYER_PATHS: tuple[str, ...] = (
    "model.language_model.layers",
    "language_model.model.layers",
    "model.language_model.model.layers",
    "language_model.layers",
    "model.layers",
    "transformer.h",
    "llm.model.layers",
    "llama_model.model.layers",
    "model.text_model.layers",
    "gpt_neox.layers",
    "model.decoder.layers",
    "transformer.layers",
)
#: Attention output projections, relative to a decoder layer.
OUT_PROJ_NAMES: tuple[str, ...] = (
    "self_attn.o_proj",
    "attn.c_proj",
    "attention.dense",
    "attn.out_proj",
    "self_attn.out_proj",
    "self_attention.dense",
    "attn.o_proj",
    "attention.o_proj",
    "attention.wo",
)
#: MLP modules, relative to a decoder layer.
MLP_NAMES: tuple[str, ...] = ("mlp", "feed_forward", "ffn")
#: Norms whose input is the residual stream after attention in a sequential pre-norm block.
RESID_MID_NORMS: tuple[str, ...] = ("ln_2", "post_attention_layernorm")
_VISION_WORDS = ("vision", "visual", "image", "vit")


def bridge_supports(config: Any) -> bool:
    """Whether TransformerLens 4.3's ``TransformerBridge`` has an adapter for this checkpoint's class.

    The test is on ``config.architectures[0]``, the class the checkpoint loads as. A remote-code
    class (``QWenLMHeadModel``) is not supported even when TransformerLens maps its ``model_type``
    (``"qwen"``) to a text-only adapter. A config without ``architectures`` is resolved as
    TransformerLens does, from its ``model_type``.

    Example:
        >>> from transformers import LlavaConfig
        >>> bridge_supports(LlavaConfig(architectures=["LlavaForConditionalGeneration"]))
        True
    """
    from transformer_lens.factories.architecture_adapter_factory import SUPPORTED_ARCHITECTURES
    from transformer_lens.model_bridge.sources._hf_format import determine_architecture_from_hf_config

    architectures = getattr(config, "architectures", None) or []
    if architectures:
        return architectures[0] in SUPPORTED_ARCHITECTURES
    try:
        determine_architecture_from_hf_config(config)
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class FallbackConfig:
    """Sizes of the decoder a :class:`FallbackBridge` hooks (the fields HookedVLM reads)."""

    n_layers: int
    d_model: int
    n_heads: int
    d_head: int
    d_vocab: int
    architecture: str
    layers_path: str


class _PairedHandle:
    """Removes a hook point's hook and then, when the point holds no more hooks, its module hook."""

    def __init__(self, point_handle: Any, point: ModuleHookPoint):
        self._point_handle = point_handle
        self._point = point

    def remove(self) -> None:
        self._point_handle.remove()
        self._point.release()


class ModuleHookPoint(HookPoint):
    """A ``HookPoint`` fed by a torch hook on one HF module, present only while the point has hooks.

    Args:
        module: The HF module whose input (``site="input"``: first positional argument, else the
            ``hidden_states`` keyword) or output (``site="output"``: a tensor or a tuple's first
            element) the point sees.
        site: ``"input"`` or ``"output"``.
        n_heads: Split the last dimension into ``[n_heads, d_head]`` for the point (``hook_z``).
    """

    def __init__(self, module: nn.Module, site: Literal["input", "output"], n_heads: int | None = None):
        super().__init__()
        self._target = (module,)  # a tuple, so nn.Module does not register the HF module as a child
        self.site = site
        self.n_heads = n_heads
        self._module_handle: torch.utils.hooks.RemovableHandle | None = None

    def add_hook(
        self, hook: Callable[..., Any], dir: Literal["fwd", "bwd"] = "fwd", **kwargs: Any
    ) -> LensHandle:
        """Add ``hook`` (``fn(activation, hook=point)``) and make sure the module feeds this point.

        Returns:
            A ``LensHandle`` whose ``hook.remove()`` removes the hook and, with the point's last
            hook, the torch hook on the HF module.

        Raises:
            NotImplementedError: ``dir="bwd"`` (backward hooks are not available on fallback points).
        """
        if dir != "fwd":
            raise NotImplementedError(
                f"{self.name}: the fallback adapter supports forward hooks only, got dir={dir!r}."
            )
        handle = super().add_hook(hook, dir="fwd", **kwargs)
        if self._module_handle is None:
            module = self._target[0]
            if self.site == "input":
                self._module_handle = module.register_forward_pre_hook(self._route_input, with_kwargs=True)
            else:
                self._module_handle = module.register_forward_hook(self._route_output)
        handle.hook = _PairedHandle(handle.hook, self)
        return handle

    def release(self) -> None:
        """Remove the torch hook on the HF module once this point holds no hook."""
        if not self._forward_hooks and self._module_handle is not None:
            self._module_handle.remove()
            self._module_handle = None

    def _through(self, x: Tensor) -> Tensor:
        """``x`` passed through the point's hooks, in the module's own layout."""
        view = x if self.n_heads is None else x.unflatten(-1, (self.n_heads, -1))
        out = self(view)
        if out is view:
            return x
        return out if self.n_heads is None else out.flatten(-2)

    def _route_input(self, module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        if args:
            new = self._through(args[0])
            return None if new is args[0] else ((new, *args[1:]), kwargs)
        if "hidden_states" in kwargs:
            new = self._through(kwargs["hidden_states"])
            return None if new is kwargs["hidden_states"] else (args, {**kwargs, "hidden_states": new})
        raise TypeError(
            f"{self.name}: {type(module).__name__} was called without a positional input or a "
            "hidden_states= keyword; the fallback adapter cannot find its activation."
        )

    def _route_output(self, module: nn.Module, args: tuple, output: Any) -> Any:
        if isinstance(output, Tensor):
            new = self._through(output)
            return None if new is output else new
        if isinstance(output, tuple) and output and isinstance(output[0], Tensor):
            new = self._through(output[0])
            return None if new is output[0] else (new, *output[1:])
        raise TypeError(
            f"{self.name}: {type(module).__name__} returned {type(output).__name__}; the fallback "
            "adapter reads a tensor or a tuple whose first element is a tensor."
        )


class _BlockHooks(nn.Module):
    """The hook points of one decoder layer, named as in TransformerLens."""

    def __init__(
        self,
        layer: nn.Module,
        attn: nn.Module,
        out_proj: nn.Module,
        mlp: nn.Module,
        mid_norm: nn.Module | None,
        n_heads: int,
    ):
        super().__init__()
        self.hook_resid_pre = ModuleHookPoint(layer, "input")
        self.attn = nn.Module()
        self.attn.hook_z = ModuleHookPoint(out_proj, "input", n_heads=n_heads)
        self.hook_attn_out = ModuleHookPoint(attn, "output")
        if mid_norm is not None:
            self.hook_resid_mid = ModuleHookPoint(mid_norm, "input")
        self.hook_mlp_out = ModuleHookPoint(mlp, "output")
        self.hook_resid_post = ModuleHookPoint(layer, "output")


def _get(root: nn.Module, path: str) -> Any:
    """``root.a.b.c`` for ``path="a.b.c"`` (integer parts index lists), None when absent."""
    obj: Any = root
    for part in path.split("."):
        obj = (
            obj[int(part)] if part.isdigit() and isinstance(obj, nn.ModuleList) else getattr(obj, part, None)
        )
        if obj is None:
            return None
    return obj


def _first_attr(config: Any, names: tuple[str, ...]) -> Any:
    return next((getattr(config, n) for n in names if getattr(config, n, None) is not None), None)


def _discovery_error(model: nn.Module, what: str, override: str) -> ValueError:
    return ValueError(
        f"FallbackBridge could not find {what} in {type(model).__name__}. Pass it explicitly: "
        f"FallbackBridge.from_model(model, {override}) (or the same keyword to load_fallback / "
        "HookedVLM.from_pretrained)."
    )


class FallbackBridge(nn.Module):
    """Decoder hook points with TransformerLens names on any HF decoder, for ``HookedVLM``.

    Build it with :meth:`from_model` or :func:`load_fallback`. ``obj(input_ids, return_type=...,
    **kwargs)`` forwards to the HF model; hooks fire only while added through ``hook_dict``.

    Attributes:
        original_model: The HF model.
        cfg: :class:`FallbackConfig` of the decoder.
        hook_dict: Hook name -> :class:`ModuleHookPoint`.
        processor: The checkpoint's processor (assigned by the caller; None until then).
    """

    def __init__(self, hf_model: nn.Module, cfg: FallbackConfig, blocks: list[_BlockHooks]):
        super().__init__()
        self.original_model = hf_model
        self.cfg = cfg
        self.blocks = nn.ModuleList(blocks)
        self.processor: Any = None
        self.hook_dict: dict[str, ModuleHookPoint] = {}
        for name, module in self.blocks.named_modules(prefix="blocks"):
            if isinstance(module, ModuleHookPoint):
                module.name = name
                self.hook_dict[name] = module

    @classmethod
    def from_model(
        cls,
        hf_model: nn.Module,
        *,
        layers_path: str | None = None,
        attn_out_proj: str | None = None,
        mlp: str | None = None,
        resid_mid_norm: str | bool = True,
        n_heads: int | None = None,
    ) -> FallbackBridge:
        """Find the decoder of ``hf_model`` and wrap it.

        Args:
            hf_model: An HF model (``.config`` holds or nests the text config).
            layers_path: Dotted path of the decoder layer ``ModuleList`` (default: the first of
                :data:`LAYER_PATHS` with ``num_hidden_layers`` entries, else the only such list
                outside the vision tower).
            attn_out_proj: Attention output projection relative to a layer (default: from
                :data:`OUT_PROJ_NAMES`); its parent module is the attention module.
            mlp: MLP module relative to a layer (default: from :data:`MLP_NAMES`).
            resid_mid_norm: Post-attention norm relative to a layer whose input is ``hook_resid_mid``;
                True finds it (:data:`RESID_MID_NORMS`, sequential blocks only), False omits the hook.
            n_heads: Attention heads (default: the text config's ``num_attention_heads``).

        Raises:
            ValueError: a part was not found or sizes disagree; the message names the keyword to pass.
        """
        config = hf_model.config
        text = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
        n_layers = _first_attr(text, ("num_hidden_layers", "n_layer", "num_layers"))
        layers_path = layers_path or _find_layers(hf_model, n_layers)
        layers = _get(hf_model, layers_path)
        if not isinstance(layers, nn.ModuleList) or not len(layers):
            raise _discovery_error(hf_model, f"a layer list at {layers_path!r}", "layers_path='model.layers'")
        first = layers[0]
        attn_out_proj = attn_out_proj or next((n for n in OUT_PROJ_NAMES if _get(first, n) is not None), None)
        if attn_out_proj is None or _get(first, attn_out_proj) is None:
            raise _discovery_error(
                hf_model,
                f"an attention output projection (tried {list(OUT_PROJ_NAMES)}) in {type(first).__name__}",
                "attn_out_proj='self_attn.o_proj'",
            )
        mlp = mlp or next((n for n in MLP_NAMES if _get(first, n) is not None), None)
        if mlp is None or _get(first, mlp) is None:
            raise _discovery_error(hf_model, f"an MLP module (tried {list(MLP_NAMES)})", "mlp='mlp'")
        mid = _resid_mid_norm(first, text, resid_mid_norm)
        heads = n_heads or _first_attr(text, ("num_attention_heads", "n_head", "num_heads", "n_heads"))
        if heads is None:
            raise _discovery_error(hf_model, "the number of attention heads in the config", "n_heads=32")
        proj = _get(first, attn_out_proj)
        width = getattr(proj, "in_features", None) or getattr(proj, "nx", None)
        if width is None or width % heads:
            raise ValueError(
                f"{type(hf_model).__name__}: {attn_out_proj} takes {width} input features, not a multiple "
                f"of {heads} heads; pass n_heads= or attn_out_proj= explicitly."
            )
        d_model = _first_attr(text, ("hidden_size", "n_embd", "d_model"))
        output = hf_model.get_output_embeddings() if hasattr(hf_model, "get_output_embeddings") else None
        d_vocab = output.weight.shape[0] if output is not None else _first_attr(text, ("vocab_size",))
        if d_model is None or d_vocab is None:
            raise ValueError(
                f"{type(hf_model).__name__}: the text config has no hidden_size or vocab_size (and the model no "
                "output embeddings); the fallback adapter needs both."
            )
        cfg = FallbackConfig(
            n_layers=len(layers),
            d_model=int(d_model),
            n_heads=int(heads),
            d_head=int(width // heads),
            d_vocab=int(d_vocab),
            architecture=type(hf_model).__name__,
            layers_path=layers_path,
        )
        blocks = []
        attn_path = attn_out_proj.rpartition(".")[0]
        for layer in layers:
            blocks.append(
                _BlockHooks(
                    layer,
                    attn=_get(layer, attn_path) if attn_path else layer,
                    out_proj=_get(layer, attn_out_proj),
                    mlp=_get(layer, mlp),
                    mid_norm=None if mid is None else _get(layer, mid),
                    n_heads=int(heads),
                )
            )
        return cls(hf_model, cfg, blocks)

    def check_hooks_to_add(
        self, hook_point: HookPoint, hook_point_name: str, hook: Any, **kwargs: Any
    ) -> None:
        """Every fallback hook point takes any forward hook (TransformerBridge API)."""

    def forward(
        self,
        input_ids: Int[Tensor, "batch pos"],
        return_type: Literal["logits", "logits_and_cache"] = "logits",
        **kwargs: Any,
    ) -> Float[Tensor, "batch pos d_vocab"] | tuple[Float[Tensor, "batch pos d_vocab"], Any]:
        """Run the HF model: logits, or ``(logits, KV cache)`` for ``"logits_and_cache"``.

        ``kwargs`` go to the HF forward unchanged (``attention_mask``, ``position_ids``, the cache as
        ``past_key_values`` or, from transformers 5.24, ``cache``, ``use_cache``, image tensors).
        """
        if return_type == "logits":
            kwargs.setdefault("use_cache", False)
            return self.original_model(input_ids=input_ids, **kwargs).logits
        if return_type == "logits_and_cache":
            out = self.original_model(input_ids=input_ids, **kwargs)
            cache = getattr(out, "cache", None)  # transformers >= 5.24; past_key_values before
            return out.logits, out.past_key_values if cache is None else cache
        raise ValueError(f"return_type must be 'logits' or 'logits_and_cache', got {return_type!r}.")


def _find_layers(model: nn.Module, n_layers: int | None) -> str:
    """Dotted path of the decoder layer list (see :meth:`FallbackBridge.from_model`)."""
    if n_layers is None:
        raise _discovery_error(model, "num_hidden_layers in the config", "layers_path='model.layers'")
    for path in LAYER_PATHS:
        found = _get(model, path)
        if isinstance(found, nn.ModuleList) and len(found) == n_layers:
            return path
    candidates = [
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.ModuleList)
        and len(module) == n_layers
        and not any(word in name.lower() for word in _VISION_WORDS)
    ]
    if len(candidates) != 1:
        raise _discovery_error(
            model,
            f"one decoder layer list with num_hidden_layers={n_layers} entries (known paths "
            f"{list(LAYER_PATHS)}; other candidates: {candidates})",
            "layers_path='model.layers'",
        )
    return candidates[0]


def _resid_mid_norm(layer: nn.Module, text_config: Any, choice: str | bool) -> str | None:
    """The norm whose input is resid_mid, or None where that is not the residual stream."""
    if isinstance(choice, str):
        return choice
    if not choice:
        return None
    parallel = getattr(text_config, "use_parallel_residual", False) or getattr(
        text_config, "parallel_attn", False
    )
    sandwich = _get(layer, "pre_feedforward_layernorm") is not None  # Gemma-style: post-attn norm on attn_out
    if parallel or sandwich:
        return None
    return next((n for n in RESID_MID_NORMS if _get(layer, n) is not None), None)


def _auto_class(config: Any) -> Any:
    """The transformers Auto class that loads ``config``'s model (image-text-to-text first)."""
    import transformers

    names = ("AutoModelForImageTextToText", "AutoModelForVision2Seq", "AutoModelForCausalLM")
    classes = [getattr(transformers, n) for n in names if hasattr(transformers, n)]
    auto_map = getattr(config, "auto_map", None) or {}
    for cls in classes:
        if cls.__name__ in auto_map or type(config) in cls._model_mapping:
            return cls
    raise ValueError(
        f"No transformers Auto class loads {type(config).__name__} (tried {[c.__name__ for c in classes]}; "
        f"auto_map: {sorted(auto_map)}). Load the model yourself and call FallbackBridge.from_model(model)."
    )


def load_fallback(
    source: str | Path,
    *,
    dtype: torch.dtype | None = None,
    device: str | torch.device = "cpu",
    device_map: str | dict[str, Any] | None = None,
    trust_remote_code: bool = False,
    **overrides: Any,
) -> FallbackBridge:
    """Load a checkpoint with transformers and wrap it in a :class:`FallbackBridge`.

    Args:
        source: Hub id or local directory.
        dtype: Weight dtype, default float32.
        device: Device of the whole model (ignored when ``device_map`` is given).
        device_map: accelerate placement (``"auto"``).
        trust_remote_code: Run the checkpoint's own modeling code (needed for remote-code models).
        **overrides: Keywords of :meth:`FallbackBridge.from_model` (``layers_path=``, ...).

    Example:
        >>> from vlminterp.testing import tiny_remote_vlm_dir
        >>> load_fallback(tiny_remote_vlm_dir(), trust_remote_code=True).cfg.n_layers
        2
    """
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(source), trust_remote_code=trust_remote_code)
    kwargs: dict[str, Any] = {"dtype": dtype or torch.float32, "trust_remote_code": trust_remote_code}
    if device_map is not None:
        kwargs["device_map"] = device_map
    model = _auto_class(config).from_pretrained(str(source), **kwargs)
    if device_map is None:
        model = model.to(device)
    bridge = FallbackBridge.from_model(model.eval(), **overrides)
    logger.warning(
        "TransformerLens has no adapter for %s (%s): using vlminterp's FallbackBridge. Hooks: %s per decoder "
        "layer (no vision or per-head q/k/v/pattern hooks).",
        bridge.cfg.architecture,
        source,
        sorted({name.split(".", 2)[2] for name in bridge.hook_dict}),
    )
    return bridge
