"""Train the model organism from scratch (CPU, deterministic for a seed) and save it as a llava checkpoint.

Phases (AdamW, weight decay 0, batch 48, grad-clip 1.0, 30-step linear warm-up then cosine to 0):

| phase | trainable | steps | lr | data |
|---|---|---|---|---|
| P1 text alignment | language model + head | 500 | 2e-3 | :func:`~vlminterp.organism.data.p1_example` |
| P2a feature alignment | vision tower + projector | 300 | 3e-3 | :func:`~vlminterp.organism.data.p2a_example` |
| P2b visual instruction tuning | everything | 500 | 1e-3 | :func:`~vlminterp.organism.data.p2b_example` |

The output directory is a plain llava-hf checkpoint (``config.json`` with
``"vlminterp_family": "organism"``, safetensors, tokenizer, processor, chat template) plus
``organism_training.json`` (seed, schedule, loss curve, timings). It is written to a temporary
directory and renamed into place, so an interrupted run leaves no half checkpoint.

Example:
    >>> from vlminterp.organism.train import train_organism  # doctest: +SKIP
    >>> train_organism(seed=0, out_dir="organism-seed0")       # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
import random
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from vlminterp.models.families import ORGANISM
from vlminterp.organism.data import Encoder, Example, p1_example, p2a_example, p2b_example
from vlminterp.organism.images import IMAGE_SIZE
from vlminterp.organism.language import IMAGE_TOKEN, N_IMAGE_TOKENS, make_organism_tokenizer

__all__ = ["Phase", "PHASES", "BATCH_SIZE", "MANIFEST", "build_organism", "train_organism"]

BATCH_SIZE = 48
WARMUP_STEPS = 30
GRAD_CLIP = 1.0
PATCH_SIZE = 8
#: Training record written next to the weights.
MANIFEST = "organism_training.json"
_RECIPE_VERSION = 1
_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class Phase:
    """One training phase: which parts train, for how long, at which peak learning rate."""

    name: str
    trainable: tuple[str, ...]  # "language", "vision", "projector"
    steps: int
    lr: float
    mix: str  # name of the example function in vlminterp.organism.data


PHASES: tuple[Phase, ...] = (
    Phase("p1_text_alignment", ("language",), 500, 2e-3, "p1_example"),
    Phase("p2a_feature_alignment", ("vision", "projector"), 300, 3e-3, "p2a_example"),
    Phase("p2b_visual_instruction", ("language", "vision", "projector"), 500, 1e-3, "p2b_example"),
)
_MIXES: dict[str, Callable[[random.Random], Example]] = {
    "p1_example": p1_example,
    "p2a_example": p2a_example,
    "p2b_example": p2b_example,
}


def build_organism(seed: int) -> tuple[Any, Any]:
    """A freshly initialised organism (``LlavaForConditionalGeneration``) and its ``LlavaProcessor``.

    Sizes: text Llama hidden 64, MLP 128, 4 layers, 4 heads (4 KV heads), untied embeddings; vision
    CLIP hidden 64, MLP 128, 2 layers, 4 heads, 32 px images, 8 px patches (16 image tokens); a
    2-layer GELU projector. About 267k parameters.
    """
    from transformers import (
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    tokenizer = make_organism_tokenizer(ORGANISM.chat_template)
    text = LlamaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=4,
        vocab_size=len(tokenizer),
        max_position_embeddings=64,
        tie_word_embeddings=False,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    vision = CLIPVisionConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=IMAGE_SIZE,
        patch_size=PATCH_SIZE,
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        image_seq_length=N_IMAGE_TOKENS,
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
        tie_word_embeddings=False,
        pad_token_id=tokenizer.pad_token_id,
    )
    config.vlminterp_family = ORGANISM.name
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config)
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": IMAGE_SIZE},
        crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        image_mean=list(_CLIP_MEAN),
        image_std=list(_CLIP_STD),
    )
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=PATCH_SIZE,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=ORGANISM.chat_template,
    )
    return model, processor


def _parts(model: Any) -> dict[str, list[torch.nn.Parameter]]:
    inner = model.model
    return {
        "language": [*inner.language_model.parameters(), *model.lm_head.parameters()],
        "vision": list(inner.vision_tower.parameters()),
        "projector": list(inner.multi_modal_projector.parameters()),
    }


def _lr_factor(step: int, steps: int) -> float:
    if step < WARMUP_STEPS:
        return (step + 1) / WARMUP_STEPS
    return 0.5 * (1.0 + math.cos(math.pi * (step - WARMUP_STEPS) / max(1, steps - WARMUP_STEPS)))


def _answer_loss(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    labels = batch["labels"]
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    logits = model(**inputs).logits
    return torch.nn.functional.cross_entropy(
        logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100
    )


def _run_phase(
    model: Any, encoder: Encoder, phase: Phase, rng: random.Random, bar: Any, log: list[dict[str, Any]]
) -> None:
    parts = _parts(model)
    for p in model.parameters():
        p.requires_grad_(False)
    params = [p for name in phase.trainable for p in parts[name]]
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(params, lr=phase.lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _lr_factor(s, phase.steps))
    mix = _MIXES[phase.mix]
    model.train()
    for step in range(phase.steps):
        batch = encoder.collate([mix(rng) for _ in range(BATCH_SIZE)])
        loss = _answer_loss(model, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, GRAD_CLIP)
        optimizer.step()
        schedule.step()
        value = float(loss.detach())
        if step % 25 == 0 or step == phase.steps - 1:
            log.append({"phase": phase.name, "step": step, "loss": value})
        bar.set_postfix(phase=phase.name[:3], loss=f"{value:.3f}", refresh=False)
        bar.update(1)
    model.eval()


def _matches(out: Path, seed: int) -> bool:
    manifest = out / MANIFEST
    if not manifest.is_file():
        return False
    record = json.loads(manifest.read_text())
    return record.get("seed") == seed and record.get("recipe_version") == _RECIPE_VERSION


def train_organism(seed: int, out_dir: str | Path, progress: bool = True, overwrite: bool = False) -> Path:
    """Train the organism with ``seed`` and save it to ``out_dir`` (atomically: tmp dir + rename).

    Runs on CPU in one thread, so a seed always gives the same weights. A complete checkpoint of
    the same seed already in ``out_dir`` is kept as is (the call returns at once).

    Args:
        seed: Seed of the weight initialisation and of the training data stream. The held-out split
            is fixed (``SPLIT_SEED``) and does not depend on it.
        out_dir: Checkpoint directory to write.
        progress: Show a tqdm progress bar.
        overwrite: Replace an existing checkpoint of another seed (otherwise that raises).

    Returns:
        ``out_dir`` as a Path.

    Raises:
        FileExistsError: ``out_dir`` holds something other than this seed's checkpoint.
    """
    from tqdm.auto import tqdm

    out = Path(out_dir)
    if _matches(out, seed):
        return out
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(
            f"{str(out)!r} is not empty and is not a seed-{seed} organism checkpoint. Choose another out_dir, "
            "or pass overwrite=True to replace it."
        )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        start = time.perf_counter()
        model, processor = build_organism(seed)
        encoder = Encoder(processor)
        rng = random.Random(seed)
        log: list[dict[str, Any]] = []
        timings: dict[str, float] = {}
        total = sum(p.steps for p in PHASES)
        with tqdm(total=total, desc=f"organism seed {seed}", disable=not progress) as bar:
            for phase in PHASES:
                t0 = time.perf_counter()
                _run_phase(model, encoder, phase, rng, bar, log)
                timings[phase.name] = round(time.perf_counter() - t0, 1)
        timings["total"] = round(time.perf_counter() - start, 1)
    finally:
        torch.set_num_threads(threads)
    record = {
        "seed": seed,
        "recipe_version": _RECIPE_VERSION,
        "batch_size": BATCH_SIZE,
        "phases": [asdict(p) for p in PHASES],
        "n_parameters": sum(p.numel() for p in model.parameters()),
        "train_seconds": timings,
        "loss": log,
        "torch": torch.__version__,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        for p in model.parameters():
            p.requires_grad_(False)
        model.save_pretrained(staging)
        processor.save_pretrained(staging)
        (staging / MANIFEST).write_text(json.dumps(record, indent=1))
        staging.chmod(0o755)
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out
