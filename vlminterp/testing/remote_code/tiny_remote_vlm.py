"""A tiny vision-language model in the original Qwen-VL layout, shipped as remote code.

``vlminterp.testing.remote.build_tiny_remote_vlm`` saves it with ``save_pretrained``, which
copies this file next to the weights and points ``config.json``'s ``auto_map`` at it, so the folder
loads only with ``trust_remote_code=True`` (transformers does not know ``model_type``
``vlminterp_tiny_remote``). It exists to test vlminterp's fallback adapter on a model class that
TransformerLens cannot wrap. This file must stay importable on its own (torch + transformers only).

Module tree (Qwen-VL names): ``transformer.wte``, ``transformer.visual`` (patch linear + one
pre-norm block + projection), ``transformer.h.{i}.ln_1 / attn.c_attn / attn.c_proj / ln_2 /
mlp.w1 / mlp.w2 / mlp.c_proj``, ``transformer.ln_f``, ``lm_head``. The visual features of each
image replace the embeddings at the ``config.image_token_index`` positions, in order (llava-style).
Attention uses RoPE over ``position_ids`` (default: counted over the real tokens of
``attention_mask``), the padding mask, and a legacy KV cache (a tuple of ``(key, value)`` per layer).

Example:
    >>> config = TinyRemoteVLMConfig(vocab_size=50, image_token_index=4)
    >>> model = TinyRemoteVLMLMHeadModel(config).eval()
    >>> model(torch.tensor([[1, 2, 3]])).logits.shape
    torch.Size([1, 3, 50])
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast


class TinyRemoteVLMConfig(PretrainedConfig):
    """Sizes of the tiny remote-code VLM (Qwen-VL field names; ``visual`` holds the image encoder)."""

    model_type = "vlminterp_tiny_remote"

    def __init__(
        self,
        vocab_size: int = 256,
        hidden_size: int = 64,
        num_hidden_layers: int = 2,
        num_attention_heads: int = 4,
        intermediate_size: int = 128,
        layer_norm_epsilon: float = 1e-6,
        rotary_emb_base: float = 10000.0,
        image_token_index: int = 0,
        visual: dict | None = None,
        **kwargs,
    ):
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.intermediate_size = intermediate_size
        self.layer_norm_epsilon = layer_norm_epsilon
        self.rotary_emb_base = rotary_emb_base
        self.image_token_index = image_token_index
        self.visual = {"image_size": 32, "patch_size": 8, "width": 32, "heads": 2, **(visual or {})}
        super().__init__(**kwargs)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class VisualBlock(nn.Module):
    """One pre-norm transformer block over image patches (no mask, no positions beyond the learned ones)."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, 2 * width), nn.GELU(), nn.Linear(2 * width, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.ln_2(x))


class VisionTransformer(nn.Module):
    """Patch linear + learned positions + one block + projection to the decoder width."""

    def __init__(self, config: TinyRemoteVLMConfig):
        super().__init__()
        v = config.visual
        self.patch_size = v["patch_size"]
        n_patches = (v["image_size"] // self.patch_size) ** 2
        self.conv1 = nn.Linear(3 * self.patch_size**2, v["width"])
        self.positional_embedding = nn.Parameter(torch.randn(n_patches, v["width"]) * 0.02)
        self.block = VisualBlock(v["width"], v["heads"])
        self.ln_post = nn.LayerNorm(v["width"])
        self.proj = nn.Linear(v["width"], config.hidden_size)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        p = self.patch_size
        b, c, _, _ = pixel_values.shape
        patches = pixel_values.unfold(2, p, p).unfold(3, p, p)  # [b, c, gh, gw, p, p]
        patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(b, -1, c * p * p)
        x = self.conv1(patches) + self.positional_embedding
        return self.proj(self.ln_post(self.block(x)))


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class QWenAttention(nn.Module):
    def __init__(self, config: TinyRemoteVLMConfig):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.c_attn = nn.Linear(config.hidden_size, 3 * config.hidden_size)
        self.c_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=False)

    def forward(self, hidden_states, rotary, attention_bias, layer_past=None, use_cache=False):
        b, t, _ = hidden_states.shape
        q, k, v = self.c_attn(hidden_states).split(self.num_heads * self.head_dim, dim=-1)
        q, k, v = (x.view(b, t, self.num_heads, self.head_dim).transpose(1, 2) for x in (q, k, v))
        cos, sin = rotary
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        if layer_past is not None:
            k = torch.cat([layer_past[0], k], dim=2)
            v = torch.cat([layer_past[1], v], dim=2)
        scores = q @ k.transpose(-1, -2) / self.head_dim**0.5 + attention_bias
        context = scores.softmax(-1) @ v  # [b, heads, t, head_dim]
        context = context.transpose(1, 2).reshape(b, t, self.num_heads * self.head_dim)
        return self.c_proj(context), ((k, v) if use_cache else None)


class QWenMLP(nn.Module):
    def __init__(self, config: TinyRemoteVLMConfig):
        super().__init__()
        self.w1 = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.w2 = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.c_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(self.w1(x) * F.silu(self.w2(x)))


class QWenBlock(nn.Module):
    def __init__(self, config: TinyRemoteVLMConfig):
        super().__init__()
        self.ln_1 = RMSNorm(config.hidden_size, config.layer_norm_epsilon)
        self.attn = QWenAttention(config)
        self.ln_2 = RMSNorm(config.hidden_size, config.layer_norm_epsilon)
        self.mlp = QWenMLP(config)

    def forward(self, hidden_states, rotary, attention_bias, layer_past=None, use_cache=False):
        attn_out, present = self.attn(self.ln_1(hidden_states), rotary, attention_bias, layer_past, use_cache)
        hidden_states = hidden_states + attn_out
        hidden_states = hidden_states + self.mlp(self.ln_2(hidden_states))
        return hidden_states, present


class TinyRemoteVLMPreTrainedModel(PreTrainedModel):
    config_class = TinyRemoteVLMConfig
    base_model_prefix = "transformer"

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.1)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)


class QWenModel(TinyRemoteVLMPreTrainedModel):
    def __init__(self, config: TinyRemoteVLMConfig):
        super().__init__(config)
        self.wte = nn.Embedding(config.vocab_size, config.hidden_size)
        self.visual = VisionTransformer(config)
        self.h = nn.ModuleList(QWenBlock(config) for _ in range(config.num_hidden_layers))
        self.ln_f = RMSNorm(config.hidden_size, config.layer_norm_epsilon)
        self.post_init()

    def _embed(self, input_ids, pixel_values):
        embeds = self.wte(input_ids)
        if pixel_values is None:
            return embeds
        mask = input_ids == self.config.image_token_index
        features = self.visual(pixel_values.to(embeds.dtype))
        if int(mask.sum()) != features.shape[0] * features.shape[1]:
            raise ValueError(
                f"{int(mask.sum())} image tokens in input_ids but {features.shape[0]} images of "
                f"{features.shape[1]} features each."
            )
        return embeds.masked_scatter(mask[..., None], features.reshape(-1, embeds.shape[-1]))

    def _rotary(self, position_ids, dtype):
        head_dim = self.config.hidden_size // self.config.num_attention_heads
        inv_freq = 1.0 / self.config.rotary_emb_base ** (
            torch.arange(0, head_dim, 2, device=position_ids.device).float() / head_dim
        )
        angles = position_ids[..., None].float() * inv_freq  # [b, t, head_dim/2]
        angles = torch.cat([angles, angles], dim=-1)[:, None]  # [b, 1, t, head_dim]
        return angles.cos().to(dtype), angles.sin().to(dtype)

    def forward(
        self,
        input_ids,
        attention_mask=None,
        position_ids=None,
        past_key_values=None,
        pixel_values=None,
        use_cache=False,
    ):
        b, t = input_ids.shape
        past_len = 0 if past_key_values is None else past_key_values[0][0].shape[2]
        if attention_mask is None:
            attention_mask = torch.ones(b, past_len + t, dtype=torch.long, device=input_ids.device)
        if position_ids is None:
            position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -t:]
        hidden_states = self._embed(input_ids, pixel_values)
        key_pos = torch.arange(past_len + t, device=input_ids.device)
        query_pos = key_pos[past_len:]
        # causal, no padding keys; a padding query sees only itself (never a later token)
        causal = key_pos[None, :] <= query_pos[:, None]
        itself = key_pos[None, :] == query_pos[:, None]
        allowed = causal[None] & (attention_mask.bool()[:, None, :] | itself[None])
        bias = torch.zeros(allowed.shape, dtype=hidden_states.dtype, device=input_ids.device)
        bias = bias.masked_fill(~allowed, torch.finfo(hidden_states.dtype).min)[:, None]  # [b, 1, t, past+t]
        rotary = self._rotary(position_ids, hidden_states.dtype)
        all_hidden = [hidden_states]
        presents = []
        for i, block in enumerate(self.h):
            layer_past = None if past_key_values is None else past_key_values[i]
            hidden_states, present = block(hidden_states, rotary, bias, layer_past, use_cache)
            presents.append(present)
            all_hidden.append(hidden_states)
        hidden_states = self.ln_f(hidden_states)
        return hidden_states, (tuple(presents) if use_cache else None), tuple(all_hidden)


class TinyRemoteVLMLMHeadModel(TinyRemoteVLMPreTrainedModel):
    """The tiny remote-code VLM with its language-model head.

    ``forward(input_ids, attention_mask, position_ids, past_key_values, pixel_values, use_cache,
    output_hidden_states)``; ``hidden_states`` are the residual stream before block 0 and after
    every block (before ``ln_f``), as in HF models.
    """

    def __init__(self, config: TinyRemoteVLMConfig):
        super().__init__(config)
        self.transformer = QWenModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.transformer.wte

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head

    def forward(
        self,
        input_ids,
        attention_mask=None,
        position_ids=None,
        past_key_values=None,
        pixel_values=None,
        use_cache=False,
        output_hidden_states=False,
        **kwargs,
    ):
        if kwargs:
            raise TypeError(f"{type(self).__name__}.forward got unexpected arguments {sorted(kwargs)}.")
        hidden, presents, all_hidden = self.transformer(
            input_ids, attention_mask, position_ids, past_key_values, pixel_values, use_cache
        )
        return CausalLMOutputWithPast(
            logits=self.lm_head(hidden),
            past_key_values=presents,
            hidden_states=all_hidden if output_hidden_states else None,
        )
