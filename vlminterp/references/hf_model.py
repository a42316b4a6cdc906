"""The plain HF model of the references: loaded again from the checkpoint, run and hooked with torch alone.

Nothing of TransformerLens or vlminterp touches this model; its decoder layers are found by shape
(:func:`hf_decoder_layers`), read with forward hooks (:func:`hf_forward`) and edited with forward
hooks that return new hidden states (:func:`edit_layer_outputs`).

Example:
    >>> from vlminterp import HookedVLM
    >>> hf = load_reference_model(HookedVLM.tiny("llava"))
    >>> len(hf_decoder_layers(hf))
    2
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Float
from torch import Tensor
from torch.utils.hooks import RemovableHandle

from vlminterp.prompts import PromptBatch

if TYPE_CHECKING:
    from vlminterp.models.hooked_vlm import HookedVLM

__all__ = ["load_reference_model", "hf_decoder_layers", "hf_forward", "edit_layer_outputs"]


def load_reference_model(model: HookedVLM) -> torch.nn.Module:
    """A second, independent HF model from ``model``'s checkpoint (eager attention, same device and dtype).

    The class is ``config.architectures[0]`` from ``transformers``; nothing of TransformerLens or
    vlminterp touches it.

    Args:
        model: The HookedVLM whose checkpoint (``model.cfg.model_id``) is loaded again.

    Raises:
        ValueError: the checkpoint's architecture is not a ``transformers`` class (remote code).

    Example:
        >>> from vlminterp import HookedVLM
        >>> type(load_reference_model(HookedVLM.tiny("llava"))).__name__
        'LlavaForConditionalGeneration'
    """
    import transformers

    config = model.hf_model.config
    name = (getattr(config, "architectures", None) or [type(model.hf_model).__name__])[0]
    cls = getattr(transformers, name, None)
    if cls is None:
        raise ValueError(
            f"{model.cfg.model_id!r} has architecture {name!r}, which transformers does not provide "
            "(a remote-code model); the references need a plain transformers class."
        )
    dtype = next(model.hf_model.parameters()).dtype
    hf = cls.from_pretrained(model.cfg.model_id, attn_implementation="eager", dtype=dtype)
    return hf.to(model.device).eval()


def hf_decoder_layers(hf: torch.nn.Module) -> torch.nn.ModuleList:
    """The text decoder's layer list of a plain HF VLM (not the vision tower's).

    Example:
        >>> len(hf_decoder_layers(load_reference_model(HookedVLM.tiny("llava"))))  # doctest: +SKIP
        2
    """
    n_layers = hf.config.get_text_config().num_hidden_layers
    found = [
        m
        for name, m in hf.named_modules()
        if isinstance(m, torch.nn.ModuleList)
        and len(m) == n_layers
        and name.endswith("layers")
        and not any(v in name for v in ("vision", "visual"))
    ]
    if len(found) != 1:
        raise ValueError(f"expected one decoder layer list of {n_layers} layers, found {len(found)}")
    return found[0]


def _hidden(output: Any) -> Tensor:
    return output[0] if isinstance(output, tuple) else output


def hf_forward(
    hf: torch.nn.Module, batch: PromptBatch, **kwargs: Any
) -> tuple[Any, list[Float[Tensor, "batch pos d_model"]]]:
    """Plain transformers on ``batch``: ``(output, [every decoder layer's output])``, hooks removed after.

    Args:
        hf: A plain HF VLM.
        batch: The prompts.
        **kwargs: Override ``batch.model_kwargs()``; a None value drops that argument.

    Example:
        >>> out, states = hf_forward(hf, batch)  # doctest: +SKIP
        >>> states[-1].shape == (len(batch), batch.input_ids.shape[1], hf.config.text_config.hidden_size)  # doctest: +SKIP
        True
    """
    layers = hf_decoder_layers(hf)
    outputs: dict[int, Tensor] = {}
    handles = [
        layer.register_forward_hook(lambda m, i, o, k=k: outputs.__setitem__(k, _hidden(o)))
        for k, layer in enumerate(layers)
    ]
    device = next(hf.parameters()).device
    merged = {**batch.model_kwargs(), **kwargs}
    try:
        with torch.no_grad():
            out = hf(
                input_ids=batch.input_ids.to(device),
                **{
                    k: v.to(device) if isinstance(v, Tensor) else v
                    for k, v in merged.items()
                    if v is not None
                },
            )
    finally:
        for h in handles:
            h.remove()
    return out, [outputs[k] for k in range(len(layers))]


def edit_layer_outputs(
    hf: torch.nn.Module, edits: dict[int, Callable[[Tensor], Tensor]]
) -> list[RemovableHandle]:
    """Forward hooks replacing decoder layer ``l``'s hidden states ``h`` by ``edits[l](h)``; the caller removes them.

    Example:
        >>> handles = edit_layer_outputs(hf, {0: lambda h: h * 0})  # doctest: +SKIP
        >>> for handle in handles:  # doctest: +SKIP
        ...     handle.remove()
    """
    layers = hf_decoder_layers(hf)

    def hook(module: torch.nn.Module, args: Any, output: Any, edit: Callable[[Tensor], Tensor]) -> Any:
        h = edit(_hidden(output))
        return (h, *output[1:]) if isinstance(output, tuple) else h

    handles: list[RemovableHandle] = []
    try:
        for layer, edit in edits.items():
            handles.append(layers[layer].register_forward_hook(partial(hook, edit=edit)))
    except Exception:
        for handle in handles:
            handle.remove()
        raise
    return handles
