"""Real tokenizers in the family battery: llava (Llama-2), qwen2_5_vl (Qwen) and gemma3 (Gemma 3).

Each tiny random checkpoint is built with the real tokenizer files of ``../shared/tokenizers`` (real
vocabulary sizes, special tokens and ids; tiny hidden sizes), saved like a real checkpoint and loaded
through ``HookedVLM.from_pretrained``. Every check compares vlminterp with references built here
without vlminterp's prompt code: the tokenizer files loaded as they are, the chat template rendered
with the query, the processor class applied to the rendered text, and a plain HF model (eager):

- the batch's tokens are the reference processor's, and its logits those of the HF model;
- the image and instruction masks agree with an alignment built from the character offsets of the
  query inside the rendered prompt (``offset_mapping`` plus the processor's image-replacement
  offsets); exactly one BOS; ``positions="last_instruction"`` picks the last query token;
- the query's surrounding whitespace is kept where the template inserts it verbatim (llava, qwen)
  and trimmed where it trims (Gemma 3's ``| trim``);
- the family battery's checks that involve prompts, tokens or the vocabulary (``test_families.py``:
  logits and ``resid_post`` vs HF, image content, greedy generation, hook names) run on them too.

Queries mix unicode, emoji (with a zero-width joiner), newlines and a leading space. The tokenizer
folder is ``../shared/tokenizers`` beside the checkout; without it every test on these builds skips.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from tests.conftest import SHARED_TOKENIZERS, noise_image
from tests.integration import test_families as battery
from vlminterp import Condition, HookedVLM, PromptBatch, Sample
from vlminterp.models.families import LLAVA_15_CHAT_TEMPLATE
from vlminterp.models.families.qwen import QWEN2_5_VL_CHAT_TEMPLATE
from vlminterp.testing import build_tiny_vlm, tiny_vlm_dir

pytestmark = pytest.mark.reference

TOKENIZERS = SHARED_TOKENIZERS

#: Tiny hidden sizes: the vocabularies are real (up to 262,145 rows).
SIZES = {"d_model": 16, "n_heads": 2, "n_kv_heads": 1, "d_mlp": 32}

QUERIES = [
    " what is in this picture? 🤔",
    "Wie groß ist die Straße?\nAntworte kurz: ä ö ü ß",
    "東京の写真 👨\u200d👩\u200d👧 naïve café\n",
]
CONDITIONS = [Condition.IMAGE, Condition.TEXT_ONLY]

# The family battery's checks that involve the prompt, tokens or vocabulary, run on these builds
# through its fixtures (``family_model`` is defined below). Left out: its role-mask test, which
# tokenizes the query alone (a real tokenizer merges differently at the query's edges inside a
# prompt; test_masks_agree_with_the_offset_alignment replaces it), batched == one-at-a-time (here
# every padded batch row is compared with HF on the unpadded reference row), and the hook and
# intervention mechanics (CMRM, ShiftDC, head ablation, hook_z, vision positions), which do not
# depend on the tokenizer and run on the same architectures in test_families.py.
hf_model, batch = battery.hf_model, battery.batch
test_logits_and_resid_post_equal_transformers = battery.test_logits_and_resid_post_equal_transformers
test_image_content_reaches_the_logits = battery.test_image_content_reaches_the_logits
test_generate_equals_transformers_greedy = battery.test_generate_equals_transformers_greedy
test_hook_names_golden = battery.test_hook_names_golden


@dataclass(frozen=True)
class Build:
    """A tiny checkpoint on a real tokenizer, and how its real counterpart tokenizes.

    Attributes:
        family: The vlminterp family.
        folder: The tokenizer folder under ``TOKENIZERS``.
        template: The real checkpoint's chat template (None: the one bundled with the tokenizer).
        appended: Special tokens the real checkpoint appends to the tokenizer's vocabulary.
        pad: The pad token it appends after them, when the tokenizer has none.
        ids: Ids of the real checkpoint's special tokens.
        image_token: The image placeholder token after the processor's expansion.
        trims: The template trims the user text.
    """

    family: str
    folder: str
    template: str | None
    appended: tuple[str, ...]
    pad: str | None
    ids: dict[str, int]
    image_token: str
    trims: bool


BUILDS = [
    Build(
        family="llava",  # llava-hf/llava-1.5-7b-hf: Llama-2 + <image>, <pad>
        folder="llama2",
        template=LLAVA_15_CHAT_TEMPLATE,
        appended=("<image>",),
        pad="<pad>",
        ids={"<image>": 32000, "<pad>": 32001},
        image_token="<image>",
        trims=False,
    ),
    Build(
        family="qwen2_5_vl",  # the folder bundles Qwen3's template; Qwen2.5-VL's is the family's
        folder="qwen3",
        template=QWEN2_5_VL_CHAT_TEMPLATE,
        appended=(),
        pad=None,
        ids={"<|vision_start|>": 151652, "<|vision_end|>": 151653, "<|image_pad|>": 151655},
        image_token="<|image_pad|>",
        trims=False,
    ),
    Build(
        family="gemma3",  # the folder's own template (google/gemma-3-*-it), which trims the text
        folder="gemma3",
        template=None,
        appended=(),
        pad=None,
        ids={"<start_of_image>": 255999, "<end_of_image>": 256000, "<image_soft_token>": 262144},
        image_token="<image_soft_token>",
        trims=True,
    ),
]


@dataclass
class Reference:
    """The real tokenizer and processor, built from the files without vlminterp's prompt code."""

    build: Build
    tokenizer: Any
    processor: Any

    def render(self, query: str, with_image: bool) -> str:
        content = [{"type": "image"}] if with_image else []
        messages = [{"role": "user", "content": [*content, {"type": "text", "text": query}]}]
        return self.tokenizer.apply_chat_template(
            messages, chat_template=self.build.template, add_generation_prompt=True, tokenize=False
        )

    def encode(self, query: str, image: Image.Image | None) -> tuple[str, dict]:
        """The rendered prompt and the processor's outputs on it (with character offsets)."""
        text = self.render(query, image is not None)
        bos = self.tokenizer.bos_token
        out = self.processor(
            text=[text],
            images=[[image]] if image is not None else None,
            return_tensors="pt",
            add_special_tokens=not (bos and text.startswith(bos)),  # HF's apply_chat_template rule
            return_offsets_mapping=True,
            return_text_replacement_offsets=True,
        )
        return text, out

    def query_tokens(self, query: str, image: Image.Image | None) -> torch.Tensor:
        """Bool mask of the processor's tokens that overlap the query as the template inserted it."""
        text, out = self.encode(query, image)
        inserted = query.strip() if self.build.trims else query
        start = text.rindex(inserted)
        for r in out["text_replacement_offsets"][0]:  # image expansions, all before the query
            assert r["span"][1] <= start
            start += (r["new_span"][1] - r["new_span"][0]) - (r["span"][1] - r["span"][0])
        end = start + len(inserted)
        a, b = out["offset_mapping"][0].unbind(-1)
        return (b > a) & (a < end) & (b > start)


@pytest.fixture(scope="module", params=BUILDS, ids=lambda b: b.family)
def build(request) -> Build:
    if not TOKENIZERS.is_dir():
        pytest.skip(
            f"no real tokenizer files at {TOKENIZERS} (the shared/tokenizers folder beside the checkout)"
        )
    return request.param


@pytest.fixture(scope="module")
def family_model(build) -> HookedVLM:
    """The tiny checkpoint of ``build`` on its real tokenizer (the battery's fixture name)."""
    return HookedVLM.from_pretrained(
        tiny_vlm_dir(build.family, tokenizer_dir=TOKENIZERS / build.folder, **SIZES)
    )


@pytest.fixture(scope="module")
def reference(build, family_model) -> Reference:
    from transformers import PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast.from_pretrained(TOKENIZERS / build.folder)  # tokenizer.json as is
    tokenizer.add_special_tokens({"additional_special_tokens": list(build.appended)})
    if build.pad is not None:
        tokenizer.add_special_tokens({"pad_token": build.pad})
    folder = Path(family_model.cfg.model_id)
    config = json.loads((folder / "processor_config.json").read_text())
    options = {k: v for k, v in config.items() if k not in ("image_processor", "processor_class")}
    processor = type(family_model.processor)(
        image_processor=family_model.processor.image_processor, tokenizer=tokenizer, **options
    )
    return Reference(build, tokenizer, processor)


@pytest.fixture(scope="module")
def samples() -> list[Sample]:
    sizes = [(40, 56), (70, 30), (48, 48)]
    return [
        Sample(id=f"q{i}", query=q, image=noise_image(size, i))
        for i, (q, size) in enumerate(zip(QUERIES, sizes, strict=True))
    ]


@pytest.fixture(scope="module")
def real_batch(family_model, samples) -> PromptBatch:
    return PromptBatch.paired(family_model, samples, CONDITIONS)


@pytest.fixture(scope="module")
def real_run(family_model, real_batch):
    """Logits and the last layer's ``resid_post`` on ``real_batch`` (one forward for two tests)."""
    name = family_model.layer_hook("resid_post", family_model.cfg.n_layers - 1)
    logits, cache = family_model.run_with_cache(real_batch, names_filter=name)
    return logits, cache[name]


def _rows(prompts: PromptBatch, samples: list[Sample]):
    """(row, sample, image or None) for every row of a condition-major batch."""
    for i, cond in enumerate(prompts.conditions):
        sample = samples[i % len(samples)]
        yield i, sample, sample.image if cond.has_image else None


def test_vocabulary_and_special_ids_are_the_real_ones(build, family_model, reference):
    tok = family_model.tokenizer
    assert len(tok) == len(reference.tokenizer)
    assert family_model.cfg.d_vocab == len(tok)
    for token, token_id in build.ids.items():
        assert (
            tok.convert_tokens_to_ids(token) == reference.tokenizer.convert_tokens_to_ids(token) == token_id
        )
    assert family_model.image_token_id == reference.tokenizer.convert_tokens_to_ids(build.image_token)
    assert tok.pad_token_id == reference.tokenizer.pad_token_id is not None


def test_tokens_equal_the_real_processor(family_model, reference, real_batch, samples):
    for i, sample, image in _rows(real_batch, samples):
        _, out = reference.encode(sample.query, image)
        real = real_batch.attention_mask[i].bool()
        assert real_batch.input_ids[i][real].tolist() == out["input_ids"][0].tolist(), sample.query


def test_logits_equal_transformers_on_the_real_inputs(hf_model, reference, real_batch, real_run, samples):
    logits, _ = real_run
    for i, sample, image in _rows(real_batch, samples):
        _, out = reference.encode(sample.query, image)
        inputs = {k: v for k, v in out.items() if k not in ("offset_mapping", "text_replacement_offsets")}
        with torch.no_grad():
            ref = hf_model(**inputs).logits[0]
        real = real_batch.attention_mask[i].bool()
        torch.testing.assert_close(logits[i][real], ref, atol=1e-4, rtol=0)


def test_masks_agree_with_the_offset_alignment(family_model, reference, real_batch, samples):
    image_id = family_model.image_token_id
    for i, sample, image in _rows(real_batch, samples):
        real = real_batch.attention_mask[i].bool()
        _, out = reference.encode(sample.query, image)
        expected_image = out["input_ids"][0] == image_id
        assert bool(expected_image.any()) == (image is not None)
        assert torch.equal(real_batch.image_mask[i][real], expected_image)
        assert torch.equal(real_batch.instruction_mask[i][real], reference.query_tokens(sample.query, image))
        template = ~expected_image & ~reference.query_tokens(sample.query, image)
        assert torch.equal(real_batch.template_mask[i][real], template)


def test_exactly_one_bos(family_model, reference, real_batch):
    bos = reference.tokenizer.bos_token_id
    if bos is None:  # Qwen has none
        assert family_model.tokenizer.bos_token_id is None
        return
    real = real_batch.attention_mask.bool()
    assert ((real_batch.input_ids == bos) & real).sum(-1).tolist() == [1] * len(real_batch)
    first = real.int().argmax(-1)
    assert real_batch.input_ids[torch.arange(len(real_batch)), first].tolist() == [bos] * len(real_batch)


def test_last_instruction_picks_the_last_query_token(family_model, reference, real_batch, real_run, samples):
    _, full = real_run
    name = family_model.layer_hook("resid_post", family_model.cfg.n_layers - 1)
    _, last = family_model.run_with_cache(real_batch, names_filter=name, positions="last_instruction")
    pad = (~real_batch.attention_mask.bool()).sum(-1)
    for i, sample, image in _rows(real_batch, samples):
        position = int(pad[i]) + int(reference.query_tokens(sample.query, image).nonzero().max())
        torch.testing.assert_close(last[name][i], full[i, position], atol=0, rtol=0)


def test_surrounding_whitespace_follows_the_template(build, family_model, reference):
    """Only a template that trims (Gemma 3) loses the query's leading space and trailing newline."""
    query = " what is this?\n"
    row = PromptBatch.paired(family_model, [Sample(id="w", query=query)], [Condition.TEXT_ONLY])
    ids = row.input_ids[0][row.attention_mask[0].bool()].tolist()
    as_is = reference.encode(query, None)[1]["input_ids"][0].tolist()
    stripped = reference.encode(query.strip(), None)[1]["input_ids"][0].tolist()
    assert (as_is == stripped) == build.trims
    assert ids == as_is
    n_query = int(row.instruction_mask.sum())
    assert n_query == int(reference.query_tokens(query, None).sum())


def test_a_builder_without_real_tokenizer_support_refuses_one(tmp_path):
    with pytest.raises(
        ValueError, match=r"cannot use a real tokenizer; families that can: \['gemma3', 'llava'"
    ):
        build_tiny_vlm("mistral3", tmp_path, tokenizer_dir=TOKENIZERS / "llama2")


def test_a_template_that_rewrites_the_query_raises(tiny_model, monkeypatch):
    """Verbatim or trimmed text is located; any other change to it would misplace the role masks."""
    upper = LLAVA_15_CHAT_TEMPLATE.replace("content['text'] + ' '", "content['text'] | upper + ' '")
    monkeypatch.setattr(tiny_model.processor, "chat_template", upper)
    with pytest.raises(RuntimeError, match="transforms the user text"):
        PromptBatch.paired(
            tiny_model, [Sample(id="u", query="what color is the car ?")], [Condition.TEXT_ONLY]
        )
