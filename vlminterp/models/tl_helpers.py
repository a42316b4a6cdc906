"""TransformerLens model helpers on :class:`~vlminterp.models.hooked_vlm.HookedVLM` (a mixin).

The language model's weights and the tokenizer the way a TransformerLens user reaches for them:
``W_U``, ``b_U``, ``W_E``, ``W_pos`` (learned absolute position embeddings only), ``unembed``,
``ln_final``, ``to_tokens``, ``to_str_tokens``, ``to_string``, and the hook-point switches
``set_use_attn_result`` / ``set_use_split_qkv_input``. Each delegates to the ``TransformerBridge``
(one implementation, TL's); :meth:`~TransformerLensHelpers.to_str_tokens` also reads a
:class:`~vlminterp.prompts.PromptBatch` row, with the role of every token.

Example:
    >>> from vlminterp import HookedVLM, Sample, Condition, PromptBatch
    >>> model = HookedVLM.tiny("llava")
    >>> model.W_U.shape, model.W_E.shape
    (torch.Size([64, 179]), torch.Size([179, 64]))
    >>> model.to_str_tokens("what is this ?")
    ['<bos>', 'what', 'is', 'this', '?']
    >>> batch = PromptBatch.paired(model, [Sample(id="a", query="hi")], [Condition.TEXT_ONLY])
    >>> tokens, roles = model.to_str_tokens(batch, row=0, return_roles=True)
    >>> roles.count("instruction")
    1
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from jaxtyping import Float, Int
from torch import Tensor

if TYPE_CHECKING:
    from vlminterp.prompts import PromptBatch

__all__ = ["TransformerLensHelpers", "ROLE_ORDER"]

#: Roles a prompt token can have, in the order they are looked up (padding has role ``"pad"``).
ROLE_ORDER = ("image", "instruction", "template", "generated")


class TransformerLensHelpers:
    """Weights, layer norm, unembedding and tokenizer helpers; mixed into ``HookedVLM``.

    Needs ``self.bridge`` (a ``TransformerBridge`` whose ``tokenizer`` is the checkpoint's).
    """

    bridge: Any

    # ------------------------------------------------------------------ weights
    @property
    def W_U(self) -> Float[Tensor, "d_model d_vocab"]:
        """Unembedding matrix of the language model."""
        return self.bridge.W_U

    @property
    def b_U(self) -> Float[Tensor, " d_vocab"]:
        """Unembedding bias (zeros when the checkpoint has none)."""
        return self.bridge.b_U

    @property
    def W_E(self) -> Float[Tensor, "d_vocab d_model"]:
        """Token embedding matrix of the language model (image features are merged after it)."""
        return self.bridge.W_E

    @property
    def W_pos(self) -> Float[Tensor, "n_ctx d_model"]:
        """Learned absolute position embeddings.

        Raises:
            AttributeError: the model has none (rotary models: every supported VLM family).
        """
        return self.bridge.W_pos

    def ln_final(self, resid: Float[Tensor, "... d_model"]) -> Float[Tensor, "... d_model"]:
        """The final layer norm of the language model (with its weights), as the forward applies it."""
        return self.bridge.ln_final(resid)

    def unembed(self, resid: Float[Tensor, "... d_model"]) -> Float[Tensor, "... d_vocab"]:
        """Logits of a normalized residual vector: ``model.unembed(model.ln_final(x))`` is the logit lens."""
        return self.bridge.unembed(resid)

    # ------------------------------------------------------------------ hook-point switches
    def set_use_attn_result(self, use_attn_result: bool) -> None:
        """Expose per-head results ``blocks.{l}.attn.hook_result`` ``[batch, pos, head_index, d_model]``
        (memory-hungry; ``ActivationCache.stack_head_results`` computes them from ``hook_z`` without it)."""
        self.bridge.set_use_attn_result(use_attn_result)

    def set_use_split_qkv_input(self, use_split_qkv_input: bool) -> None:
        """Give Q, K and V their own residual copies (``blocks.{l}.hook_q_input`` ...) to patch each alone."""
        self.bridge.set_use_split_qkv_input(use_split_qkv_input)

    # ------------------------------------------------------------------ tokens
    def to_tokens(
        self, input: str | list[str], prepend_bos: bool | None = None, padding_side: str | None = None
    ) -> Int[Tensor, "batch pos"]:
        """Token ids of text (TransformerLens's ``to_tokens``: text only, no chat template or image)."""
        return self.bridge.to_tokens(input, prepend_bos=prepend_bos, padding_side=padding_side)

    def to_string(self, tokens: Int[Tensor, "... pos"] | list[int] | np.ndarray) -> str | list[str]:
        """Decode token ids: one string for ``[pos]``, one per row for ``[batch, pos]``."""
        return self.bridge.to_string(tokens)

    def to_str_tokens(
        self,
        input: str | list | Tensor | np.ndarray | PromptBatch,
        prepend_bos: bool | None = None,
        padding_side: str | None = None,
        *,
        row: int | None = None,
        return_roles: bool = False,
    ) -> Any:
        """Every token as a string; for a :class:`PromptBatch` row, optionally with its role.

        Args:
            input: Text, token ids, or a PromptBatch (then ``row`` is required).
            prepend_bos: As in TransformerLens (text input only).
            padding_side: As in TransformerLens (text input only).
            row: The batch row to read. Its tokens cover every position of the batch, padding
                included, so ``tokens[i]`` names position ``i`` of that row's activations.
            return_roles: Also return each position's role: ``"image"``, ``"instruction"``,
                ``"template"``, ``"generated"`` or ``"pad"`` (PromptBatch input only).

        Returns:
            ``list[str]``, or ``(tokens, roles)`` with ``return_roles``.

        Raises:
            ValueError: a PromptBatch without a valid ``row``, or ``row``/``return_roles`` with
                other input.
        """
        from vlminterp.prompts import PromptBatch

        if not isinstance(input, PromptBatch):
            if row is not None or return_roles:
                raise ValueError("to_str_tokens: row= and return_roles= apply to a PromptBatch input only.")
            return self.bridge.to_str_tokens(input, prepend_bos=prepend_bos, padding_side=padding_side)
        n = len(input)
        if row is None or not -n <= row < n:
            raise ValueError(
                f"to_str_tokens(batch, row=...): give the row to read, an index in [0, {n}); got {row}."
            )
        tokens = self.bridge.to_str_tokens(input.input_ids[row])
        if not return_roles:
            return tokens
        masks = {role: input.masks[role][row] for role in ROLE_ORDER}
        roles = [
            next((role for role in ROLE_ORDER if bool(masks[role][i])), "pad") for i in range(len(tokens))
        ]
        return tokens, roles
