"""HookedVLM: a vision-language model with TransformerLens hook points, caching and generation.

``HookedVLM`` owns a TransformerLens ``TransformerBridge`` around the HF model, the checkpoint's
processor and the family's prompt rules. It adds what the bridge lacks for VLM studies:

- inputs are :class:`~vlminterp.prompts.PromptBatch` objects (paired conditions, left padding,
  role masks), so image kwargs and position ids are always passed right;
- ``positions=`` picks token positions *at capture time* (``"last"``, ``"last_instruction"``,
  ``"mean_text"``, an int, or index tensors), so a dataset cache never holds full sequences;
- unknown hook names raise with the closest valid names (the bridge skips them silently);
- every hook a call adds is removed by that call, on success and on error;
- TransformerLens parity: hooks, caching and gradients (``bwd_hooks``, ``incl_bwd``) live in
  :mod:`vlminterp.models.hooking`, the weight and tokenizer helpers (``W_U``, ``unembed``,
  ``ln_final``, ``to_str_tokens``, ...) in :mod:`vlminterp.models.tl_helpers`, and the cache is
  TransformerLens's own (:mod:`vlminterp.cache.activation_cache`);
- nothing is installed at run time (TransformerLens would ``pip install torchvision`` when a
  processor fails to load; vlminterp disables that path).

Example:
    >>> from vlminterp import HookedVLM, Sample, Condition, PromptBatch
    >>> model = HookedVLM.tiny("llava")
    >>> batch = PromptBatch.paired(model, [Sample(id="a", query="what is this ?")], [Condition.TEXT_ONLY])
    >>> logits, cache = model.run_with_cache(batch, names_filter=model.hook_names("resid_post"), positions="last")
    >>> logits.shape[0], cache["blocks.0.hook_resid_post"].shape
    (1, torch.Size([1, 64]))
    >>> model.count_hooks()
    0
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from vlminterp.cache.activation_cache import ActivationCache
from vlminterp.hook_names import NamesFilter, layer_hook_name, resolve_names
from vlminterp.models.compat import fix_kv_cache_keyword
from vlminterp.models.families import Family
from vlminterp.models.hooking import FwdHooks, HookFn, HookingMixin, Metric, require_batch
from vlminterp.models.kv_prefix import KVPrefix
from vlminterp.models.loading import ProcessorLoadError, choose_family, load_processor
from vlminterp.models.norm_shortcut import skip_unobserved_norm_math
from vlminterp.models.stepping import CachedRun
from vlminterp.models.tl_helpers import TransformerLensHelpers
from vlminterp.positions import Positions
from vlminterp.prompts import PromptBatch

# Positions is re-exported for code that still imports it from here (its home: vlminterp.positions).
__all__ = [
    "HookedVLM",
    "VLMConfig",
    "Generation",
    "ProcessorLoadError",
    "Positions",
    "FwdHooks",
    "HookFn",
    "Metric",
]


@dataclass(frozen=True)
class VLMConfig:
    """Sizes and identity of the language model inside a VLM."""

    model_id: str
    family: str
    n_layers: int
    d_model: int
    n_heads: int
    d_head: int
    d_vocab: int


@dataclass
class Generation:
    """Output of :meth:`HookedVLM.generate`.

    Attributes:
        tokens: New token ids per row, up to (not including) the first EOS.
        texts: Decoded new text per row (special tokens skipped).
        batch: The prompts that were continued.
        cache: With ``generate(cache_names=...)``: the chosen activations at every step, joined on
            the position axis (``[batch, prompt_pos + steps - 1, ...]``: the prompt, then each fed
            token; the last new token is never fed). A row that stopped at EOS is fed EOS for the
            remaining steps, so its positions past ``len(tokens[i]) + 1`` after the prompt are filler.
    """

    tokens: list[list[int]]
    texts: list[str]
    batch: PromptBatch
    cache: ActivationCache | None = None

    def __len__(self) -> int:
        return len(self.tokens)

    @classmethod
    def decoded(
        cls, tokenizer: Any, tokens: list[list[int]], batch: PromptBatch, cache: ActivationCache | None = None
    ) -> Generation:
        """A Generation of ``tokens`` (per row, EOS cut off), their texts decoded with ``tokenizer``.

        Example:
            >>> from vlminterp import HookedVLM, Sample, Condition, PromptBatch
            >>> model = HookedVLM.tiny("llava")
            >>> batch = PromptBatch.paired(model, [Sample(id="a", query="hi")], [Condition.TEXT_ONLY])
            >>> out = model.generate(batch, max_new_tokens=2)
            >>> Generation.decoded(model.tokenizer, out.tokens, batch).texts == out.texts
            True
        """
        texts = tokenizer.batch_decode(tokens, skip_special_tokens=True)
        return cls(tokens=tokens, texts=[t.strip() for t in texts], batch=batch, cache=cache)


class HookedVLM(HookingMixin, TransformerLensHelpers):
    """A VLM with TransformerLens hook names, built on ``TransformerBridge``.

    Build it with :meth:`from_pretrained`, :meth:`tiny` or ``from_organism``; do not call the
    constructor with a half-configured bridge.

    Attributes:
        bridge: The TransformerLens bridge around the HF model.
        processor: The checkpoint's processor (tokenizer + image processor).
        family_rules: The :class:`~vlminterp.models.families.Family` entry.
        cfg: :class:`VLMConfig` of the language model.
    """

    def __init__(self, bridge: Any, processor: Any, family: Family, model_id: str):
        self.bridge = bridge
        self.processor = processor
        self.family_rules = family
        c = bridge.cfg
        self.cfg = VLMConfig(
            model_id=model_id,
            family=family.name,
            n_layers=int(c.n_layers),
            d_model=int(c.d_model),
            n_heads=int(c.n_heads),
            d_head=int(c.d_head),
            d_vocab=int(c.d_vocab),
        )
        self.image_token_id = family.image_token_id(bridge.original_model.config)
        self._valid_names = frozenset(bridge.hook_dict)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_pretrained(
        cls,
        name_or_dir: str | Path,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | None = None,
        device_map: str | dict[str, Any] | None = None,
        family: str | None = None,
        trust_remote_code: bool = False,
        **fallback_options: Any,
    ) -> HookedVLM:
        """Load a checkpoint (hub id or local directory) with its processor.

        Checkpoints the TransformerLens bridge cannot wrap (remote-code models such as the original
        Qwen-VL) run through :class:`~vlminterp.models.fallback.FallbackBridge`, chosen automatically
        with a logged note: the same API and decoder hook names (``hook_resid_pre/mid/post``,
        ``hook_attn_out``, ``hook_mlp_out``, ``attn.hook_z``), no vision or per-head q/k/v hooks.

        Args:
            name_or_dir: e.g. ``"llava-hf/llava-1.5-7b-hf"`` or a directory from ``save_pretrained``.
            device: Device for the whole model (ignored when ``device_map`` is given).
            dtype: Weight dtype, default float32.
            device_map: accelerate placement (``"auto"``) for checkpoints larger than one device.
            family: Family name; default from the config (``vlminterp_family`` or ``model_type``).
                Required for a checkpoint whose model type is not a registered family.
            trust_remote_code: Run the checkpoint's own modeling code (remote-code VLMs).
            **fallback_options: ``FallbackBridge.from_model`` keywords (``layers_path=``,
                ``attn_out_proj=``, ``mlp=``, ...); passing any forces the fallback adapter.

        Raises:
            ValueError: the family is unknown or does not match the checkpoint.
            ProcessorLoadError: the processor cannot be loaded.
        """
        from transformer_lens.model_bridge import TransformerBridge
        from transformers import AutoConfig

        from vlminterp.models.fallback import bridge_supports, load_fallback

        source = str(name_or_dir)
        config = AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code)
        rules = choose_family(config, family, source)
        processor = load_processor(source, rules, trust_remote_code)
        if fallback_options or not bridge_supports(config):
            bridge = load_fallback(
                source,
                dtype=dtype,
                device=device,
                device_map=device_map,
                trust_remote_code=trust_remote_code,
                **fallback_options,
            )
        else:
            boot_kwargs: dict[str, Any] = {"dtype": dtype or torch.float32}
            if device_map is not None:
                boot_kwargs["device_map"] = device_map
            else:
                boot_kwargs["device"] = str(device)
            if rules.model_class is not None:
                import transformers

                boot_kwargs["model_class"] = getattr(transformers, rules.model_class)
            bridge = TransformerBridge.boot_transformers(source, **boot_kwargs)
            fix_kv_cache_keyword(bridge)
            skip_unobserved_norm_math(bridge)
            if rules.prepare is not None:
                rules.prepare(bridge)
        bridge.processor = processor
        bridge.eval()
        return cls(bridge, processor, rules, model_id=getattr(config, "_name_or_path", "") or source)

    @classmethod
    def tiny(
        cls,
        family: str = "llava",
        seed: int = 0,
        *,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | None = None,
        **sizes: int,
    ) -> HookedVLM:
        """A tiny random VLM of ``family``, saved to a cached temp dir and loaded like a checkpoint.

        A convenience for tests, examples and notebooks: the checkpoint comes from the test builders
        of :mod:`vlminterp.testing` (``tiny_vlm_dir``), imported here when called. This is the one
        call from ``vlminterp.models`` up into them; nothing in the package imports them at load.

        Args:
            family: A family with a tiny builder (``vlminterp.testing.tiny_families()``).
            seed: Seed of the random weights.
            device: Device to load on.
            dtype: Weight dtype (the checkpoint is float32), e.g. ``torch.float16``.
            **sizes: ``TinySizes`` overrides (``d_model``, ``n_layers``, ...).

        Example:
            >>> HookedVLM.tiny("gemma3", n_layers=3).cfg.n_layers
            3
            >>> HookedVLM.tiny("llava", dtype=torch.bfloat16).hf_model.dtype
            torch.bfloat16
        """
        from vlminterp.testing import tiny_vlm_dir

        return cls.from_pretrained(tiny_vlm_dir(family, seed, **sizes), device=device, dtype=dtype)

    @classmethod
    def from_organism(cls, device: str | torch.device = "cpu") -> HookedVLM:
        """The shipped toy VLM whose safety alignment breaks when it sees an image (offline)."""
        from vlminterp.models.organism import organism_dir

        return cls.from_pretrained(organism_dir(), device=device)

    # ------------------------------------------------------------------ properties
    @property
    def family(self) -> str:
        return self.family_rules.name

    @property
    def tokenizer(self) -> Any:
        return self.processor.tokenizer

    @property
    def chat_template(self) -> str:
        """The checkpoint's own chat template when it ships one, else the family default."""
        return getattr(self.processor, "chat_template", None) or self.family_rules.chat_template

    @property
    def device(self) -> torch.device:
        return next(self.bridge.original_model.parameters()).device

    @property
    def hf_model(self) -> torch.nn.Module:
        """The wrapped HF model (same weights as the bridge)."""
        return self.bridge.original_model

    def __repr__(self) -> str:
        c = self.cfg
        return f"HookedVLM({c.model_id!r}, family={c.family!r}, n_layers={c.n_layers}, d_model={c.d_model})"

    # ------------------------------------------------------------------ names
    @property
    def hook_dict(self) -> dict[str, Any]:
        """Every hook point of the model, by TransformerLens name."""
        return self.bridge.hook_dict

    def layer_hook(self, kind: str, layer: int) -> str:
        """The name of hook ``kind`` at ``layer``, validated: ``layer_hook("resid_post", 3)``."""
        if not 0 <= int(layer) < self.cfg.n_layers:
            raise ValueError(f"Layer {layer} is out of range for a {self.cfg.n_layers}-layer model.")
        return resolve_names(layer_hook_name(kind, layer), self._valid_names)[0]

    def hook_names(self, kind: str, layers: Iterable[int] | None = None) -> list[str]:
        """Names of hook ``kind`` at ``layers`` (default all): ``hook_names("resid_post", range(10, 32))``."""
        chosen = range(self.cfg.n_layers) if layers is None else layers
        return [self.layer_hook(kind, layer) for layer in chosen]

    def resolve_names(self, names_filter: NamesFilter) -> list[str]:
        """Validated hook names selected by ``names_filter`` (raises on unknown names)."""
        return resolve_names(names_filter, self._valid_names)

    def generate(
        self,
        batch: PromptBatch,
        max_new_tokens: int = 32,
        do_sample: bool = False,
        fwd_hooks: FwdHooks = (),
        follow: Sequence[int | None] | None = None,
        temperature: float = 1.0,
        top_k: int | None = None,
        generator: torch.Generator | None = None,
        cache_names: NamesFilter | None = None,
        before_step: Callable[[Tensor | None], None] | None = None,
        prefix: KVPrefix | None = None,
    ) -> Generation:
        """Continue every prompt of ``batch`` with the KV cache, hooks firing at every step.

        Hooks see the whole prompt at the first step (``pos`` = prompt length) and one new token
        per later step (``pos`` = 1); "last position" is ``x[:, -1]`` in both. Images are encoded
        once, at the first step. As in HF ``generate``, the prompt pass unembeds only the last
        position (hooks on ``unembed`` see ``pos`` = 1), unless ``cache_names`` asks for ``unembed``.

        Args:
            batch: The prompts (left-padded).
            max_new_tokens: Tokens to generate per row (a row stops at EOS).
            do_sample: Sample (with ``temperature``/``top_k``) instead of greedy decoding.
            fwd_hooks: Interventions active during generation.
            follow: Teacher-forced twins: ``follow[i] = j`` feeds row ``i`` the tokens chosen for
                row ``j`` (which must follow nobody), so twin rows (e.g. TEXT_ONLY copies of IMAGE
                rows) carry the same generated suffix at every step. None = every row free.
            temperature: Sampling temperature (``do_sample=True``).
            top_k: Sample among the ``top_k`` most likely tokens (``do_sample=True``).
            generator: Random generator for reproducible sampling.
            cache_names: Hooks to cache at every step (name, names or predicate; activations with a
                ``[batch, pos, ...]`` layout, not attention patterns), returned as
                :attr:`Generation.cache`, on CPU, after ``fwd_hooks`` acted. None caches nothing.
            before_step: Called before each step's forward, inside the hooks, with the tokens this
                step feeds (``[batch]``; None at the prompt pass): per-input interventions run their
                twin rows there (a :class:`~vlminterp.models.stepping.CachedRun` fed the same tokens).
            prefix: The KV cache of each row's first tokens (:class:`~vlminterp.models.stepping.KVPrefix`,
                used up): the prompt pass feeds only the rest (hooks see those positions only).
                Not with ``cache_names``.

        Returns:
            A :class:`Generation` with the new tokens and texts per row.

        Example:
            >>> from vlminterp import HookedVLM, Sample, Condition, PromptBatch
            >>> model = HookedVLM.tiny("llava")
            >>> batch = PromptBatch.paired(model, [Sample(id="a", query="hi")], [Condition.TEXT_ONLY])
            >>> out = model.generate(batch, max_new_tokens=3, cache_names="blocks.1.hook_resid_post")
            >>> out.cache["resid_post", 1].shape[1] == batch.input_ids.shape[1] + len(out.tokens[0]) - 1
            True

        Raises:
            KVCacheError: the prompt pass left the KV cache without the prompt (installed
                transformers and TransformerLens disagree; see :mod:`vlminterp.models.compat`).
        """
        require_batch(batch, "generate")
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}.")
        n = len(batch)
        leaders = _leaders(follow, n).to(self.device)
        eos = self.tokenizer.eos_token_id
        if prefix is not None and cache_names is not None:
            raise ValueError(
                "generate(cache_names=...) caches the whole prompt; it cannot start from a prefix."
            )
        steps, caching = self._step_cache(cache_names)
        unembed = any(name.startswith(("unembed.", "hook_unembed")) for name in steps)
        run = CachedRun(self, batch, all_logits=unembed, prefix=prefix)
        done = torch.zeros(n, dtype=torch.bool, device=self.device)
        chosen: list[Tensor] = []
        token = None
        with torch.no_grad(), self.hooks([*fwd_hooks, *caching]):
            for _ in range(max_new_tokens):
                if before_step is not None:
                    before_step(token)
                logits = run.step(token)
                token = _next_token(logits[:, -1].float(), do_sample, temperature, top_k, generator)[leaders]
                token = torch.where(done, torch.full_like(token, eos), token)
                chosen.append(token)
                done = done | (token == eos)
                if bool(done.all()):
                    break
        tokens = []
        for row in torch.stack(chosen, dim=1).tolist():
            tokens.append(row[: row.index(eos)] if eos in row else row)
        cache = None
        if cache_names is not None:
            data = {name: torch.cat(parts, dim=1) for name, parts in steps.items()}
            cache = ActivationCache(data, meta=batch.to_dict(), model=self.bridge)
        return Generation.decoded(self.tokenizer, tokens, batch, cache)

    def _step_cache(self, cache_names: NamesFilter | None) -> tuple[dict[str, list[Tensor]], list[Any]]:
        """Per-step storage and the hooks filling it, for ``generate(cache_names=...)``."""
        if cache_names is None:
            return {}, []
        names = self.resolve_names(cache_names)
        patterns = [n for n in names if n.endswith(("hook_pattern", "hook_attn_scores"))]
        if patterns:
            raise ValueError(
                f"generate(cache_names=...) joins steps on the position axis; {patterns} have a key axis "
                "that grows each step. Cache them with run_with_cache on batch.with_suffix(tokens) instead."
            )
        steps: dict[str, list[Tensor]] = {name: [] for name in names}

        def keep(activation: Tensor, hook: Any) -> None:
            steps[hook.name].append(activation.detach().to("cpu"))

        return steps, [(name, keep) for name in names]


def _leaders(follow: Sequence[int | None] | None, n: int) -> Int[Tensor, " batch"]:
    """Row whose tokens each row is fed (itself when free); validates ``follow``."""
    if follow is None:
        return torch.arange(n)
    if len(follow) != n:
        raise ValueError(f"follow needs one entry per row ({n}), got {len(follow)}.")
    leaders = [i if j is None else int(j) for i, j in enumerate(follow)]
    for i, j in enumerate(leaders):
        if not 0 <= j < n:
            raise ValueError(f"follow[{i}] = {j} is not a row index (batch has {n} rows).")
        if leaders[j] != j:
            raise ValueError(
                f"follow[{i}] = {j}, but row {j} itself follows row {leaders[j]}; follow a free row."
            )
    return torch.tensor(leaders)


def _next_token(
    logits: Float[Tensor, "batch d_vocab"],
    do_sample: bool,
    temperature: float,
    top_k: int | None,
    generator: torch.Generator | None,
) -> Int[Tensor, " batch"]:
    if not do_sample:
        return logits.argmax(-1)
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0 when sampling, got {temperature}.")
    logits = logits / temperature
    if top_k is not None:
        kth = logits.topk(top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return torch.multinomial(logits.softmax(-1), 1, generator=generator).squeeze(-1)
