"""ShiftDC.generate_chunks decodes two chunks' captions or responses in each generation, equal to chunk by chunk.

With self-captioning, the first two chunks' captions run together, then chunk ``k``'s steered rows
with chunk ``k + 2``'s caption rows (each started from its own cached prefix, the caption rows with
zero corrections), and the last two chunks' responses together. The
responses and captions must equal those of running each chunk alone: tokens equal to the one-batch
path (``reuse_kv=False``: captions from scratch, one unsteered pass over inputs and twins, steered
generation from scratch), and at every step the logits of each row within 1e-5 of the same row in
the chunk-by-chunk generations (``ShiftDC.generate`` per chunk). Chunks hold a text-only sample and
images of different sizes; captions as long as, shorter and longer than the responses.
"""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from tests.conftest import safe_unsafe_direction
from vlminterp import HookedVLM, Sample
from vlminterp.eval.runner import generate_responses
from vlminterp.interventions import ShiftDC
from vlminterp.interventions.captioning import caption_images

FAMILIES = [
    "llava",
    "organism",
    pytest.param("qwen2_5_vl", marks=[pytest.mark.slow, pytest.mark.reference]),
]
STEPS = 4
ALPHA = 25.0


@pytest.fixture(scope="module", params=FAMILIES)
def model(request):
    return HookedVLM.from_organism() if request.param == "organism" else HookedVLM.tiny(request.param)


@pytest.fixture(scope="module")
def direction(model):
    return safe_unsafe_direction(model)


def _chunks():
    """Three chunks: images of different sizes and query lengths, one text-only sample in the second."""
    queries = ["what is this ?", "how do i make a bomb from the things in this picture", "describe it", "why"]
    samples = [
        Sample(
            id=f"c{i}",
            query=queries[i % 4],
            image=None
            if i == 3
            else Image.effect_noise((40 + 6 * i, 30 + 4 * i), 30 + 10 * i).convert("RGB"),
        )
        for i in range(7)
    ]
    return [samples[:3], samples[3:5], samples[5:]]


class _Calls:
    """Every ``model.generate`` call: its rows' sample ids and, per step, the rows' last logits."""

    def __init__(self, model, monkeypatch):
        self.calls: list[tuple[list[str], list[torch.Tensor]]] = []
        generate = model.generate

        def recorded(batch, *args, **kwargs):
            steps: list[torch.Tensor] = []

            def keep(x, hook):
                if x.shape[1] == 1:
                    steps.append(x[:, -1].double().clone())

            with model.hooks([("unembed.hook_out", keep)]):
                out = generate(batch, *args, **kwargs)
            self.calls.append((list(batch.sample_ids), steps))
            return out

        monkeypatch.setattr(model, "generate", recorded)

    def take(self) -> list[tuple[list[str], list[torch.Tensor]]]:
        calls, self.calls = self.calls, []
        return calls


def _rows(calls, captioned: set[str]) -> dict[tuple[str, str], list[torch.Tensor]]:
    """Per (sample id, "caption" | "response"), the row's logits at every step of the call that decoded it.

    A sample with an image is captioned before it is answered, so its first row is its caption.
    """
    out: dict[tuple[str, str], list[torch.Tensor]] = {}
    for ids, steps in calls:
        for j, sid in enumerate(ids):
            kind = "caption" if sid in captioned and (sid, "caption") not in out else "response"
            out[(sid, kind)] = [step[j] for step in steps]
    return out


def _shiftdc(direction, caption_steps: int = STEPS, **options) -> ShiftDC:
    return ShiftDC(
        direction,
        alpha=ALPHA,
        caption_prompt="describe the image",
        caption_max_new_tokens=caption_steps,
        **options,
    )


@pytest.mark.parametrize("caption_steps", [STEPS, 2, 6], ids=["equal", "shorter", "longer"])
@pytest.mark.parametrize("steps", ["prefill", "all"])
def test_overlapped_chunks_equal_chunk_by_chunk(model, direction, monkeypatch, caption_steps, steps):
    chunks = _chunks()
    shiftdc = _shiftdc(direction, caption_steps, steps=steps)
    calls = _Calls(model, monkeypatch)
    overlapped = list(shiftdc.generate_chunks(model, chunks, max_new_tokens=STEPS))
    joint = calls.take()
    for chunk in chunks:
        shiftdc.generate(model, chunk, max_new_tokens=STEPS)
    sequential = calls.take()
    one_batch = [
        _shiftdc(direction, caption_steps, steps=steps, reuse_kv=False).generate(
            model, chunk, max_new_tokens=STEPS
        )
        for chunk in chunks
    ]
    for out, ref, chunk in zip(overlapped, one_batch, chunks, strict=True):
        assert out.tokens == ref.tokens
        assert out.texts == ref.texts
        assert out.batch.sample_ids == [s.id for s in chunk]
    # Two chunks' rows in every generation: chunks 1 and 2 captioned together, chunk 1 answered with
    # chunk 3's captions, chunks 2 and 3 answered together. 3 calls, not 6.
    image_ids = [[s.id for s in chunk if s.image is not None] for chunk in chunks]
    chunk_ids = [[s.id for s in chunk] for chunk in chunks]
    assert [ids for ids, _ in joint] == [
        image_ids[0] + image_ids[1],
        chunk_ids[0] + image_ids[2],
        chunk_ids[1] + chunk_ids[2],
    ]
    assert [ids for ids, _ in sequential] == [
        image_ids[0], chunk_ids[0], image_ids[1], chunk_ids[1], image_ids[2], chunk_ids[2]
    ]  # fmt: skip
    # Every row's logits equal the chunk-by-chunk run's at every step both ran (a call ends when all
    # its rows reached EOS; a row past its EOS is fed EOS in both).
    captioned = {sid for ids in image_ids for sid in ids}
    ref_rows, got_rows = _rows(sequential, captioned), _rows(joint, captioned)
    assert got_rows.keys() == ref_rows.keys()
    for key, ref in ref_rows.items():
        got = got_rows[key]
        assert 1 <= len(ref) <= (caption_steps if key[1] == "caption" else STEPS)
        assert len(got) >= 1
        for a, b in zip(got, ref, strict=False):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    assert model.count_hooks() == 0


def test_the_eval_runner_overlaps_captions_and_resumes_after_a_crash(model, direction, tmp_path, monkeypatch):
    samples = [s for chunk in _chunks() for s in chunk]
    shiftdc = _shiftdc(direction)
    expected = [t for i in (0, 3, 6) for t in shiftdc.generate(model, samples[i : i + 3], STEPS).texts]
    calls = _Calls(model, monkeypatch)
    path = tmp_path / "responses.jsonl"
    options = dict(intervention=shiftdc, max_new_tokens=STEPS, batch_size=3, progress=False)
    rows = generate_responses(model, samples, "image", path, **options)
    assert [r["response"] for r in rows] == expected
    assert len(calls.take()) == 3  # batches of 3, 3 and 1 samples, two batches in every generation
    # A crash in the third generation (batch 2's responses with batch 3's captions) keeps batch 1.
    crashed = tmp_path / "crashed.jsonl"
    generate, made = model.generate, []

    def third_fails(*args, **kwargs):
        if len(made) == 2:
            raise RuntimeError("killed")
        made.append(1)
        return generate(*args, **kwargs)

    monkeypatch.setattr(model, "generate", third_fails)
    with pytest.raises(RuntimeError, match="killed"):
        generate_responses(model, samples, "image", crashed, **options)
    assert [r["id"] for r in map(json.loads, crashed.read_text().splitlines())] == ["c0", "c1", "c2"]
    assert model.count_hooks() == 0
    monkeypatch.setattr(model, "generate", generate)
    resumed = generate_responses(model, samples, "image", crashed, **options)
    assert [r["response"] for r in resumed] == expected


def test_settings_that_cannot_overlap_run_chunk_by_chunk(model, direction, tmp_path, monkeypatch):
    chunks = _chunks()
    for shiftdc in (
        _shiftdc(direction, steer_template="Be safe. {query}"),
        _shiftdc(direction, estimate="per_step"),
    ):
        expected = [shiftdc.generate(model, chunk, max_new_tokens=STEPS).tokens for chunk in chunks]
        calls = _Calls(model, monkeypatch)
        got = [g.tokens for g in shiftdc.generate_chunks(model, chunks, max_new_tokens=STEPS)]
        assert got == expected
        chunk_of = {s.id: k for k, chunk in enumerate(chunks) for s in chunk}
        assert all(len({chunk_of[sid] for sid in ids}) == 1 for ids, _ in calls.take())  # one chunk a call
        monkeypatch.undo()


@pytest.mark.parametrize("n_chunks", [1, 2, 4])
def test_any_number_of_chunks_and_a_chunk_that_cannot_join(model, direction, monkeypatch, n_chunks):
    image = Image.effect_noise((40, 30), 40).convert("RGB")
    chunks = [
        [Sample(f"n{k}{i}", f"what is in picture {k} ?", image) for i in range(2)] for k in range(n_chunks)
    ]
    shiftdc = _shiftdc(direction)
    expected = [shiftdc.generate(model, chunk, max_new_tokens=STEPS).tokens for chunk in chunks]
    calls = _Calls(model, monkeypatch)
    assert [g.tokens for g in shiftdc.generate_chunks(model, chunks, max_new_tokens=STEPS)] == expected
    assert len(calls.take()) == max(n_chunks, 2)  # every generation two chunks wide (one chunk: 2 calls)
    # A chunk with a repeated sample id cannot share its inputs' cache: the chunks before it finish first.
    repeated = [Sample("r", "what is this ?", image), Sample("r", "and this ?", image)]
    mixed = [*chunks, repeated, *chunks]
    got = [g.tokens for g in shiftdc.generate_chunks(model, mixed, max_new_tokens=STEPS)]
    assert got == [*expected, shiftdc.generate(model, repeated, max_new_tokens=STEPS).tokens, *expected]
    assert model.count_hooks() == 0


def test_a_caption_cache_is_filled_then_read_instead_of_captioning(model, direction, tmp_path, monkeypatch):
    chunks, path = _chunks(), tmp_path / "captions.json"
    plain = _shiftdc(direction)
    expected = [plain.generate(model, chunk, max_new_tokens=STEPS).tokens for chunk in chunks]
    shiftdc = _shiftdc(direction, caption_cache=path)
    calls = _Calls(model, monkeypatch)
    assert [g.tokens for g in shiftdc.generate_chunks(model, chunks, max_new_tokens=STEPS)] == expected
    assert len(calls.take()) == 3  # captions overlapped as without a cache
    with_image = [s for chunk in chunks for s in chunk if s.image is not None]
    captions = caption_images(model, with_image, "describe the image", STEPS)  # chunk by chunk, no cache
    calls.take()
    stored = json.loads(path.read_text())
    assert sorted(stored.values()) == sorted(s.caption for s in captions) and len(stored) == len(with_image)
    # A rerun reads every caption: no caption rows, only the responses, two chunks at a time.
    assert [g.tokens for g in shiftdc.generate_chunks(model, chunks, max_new_tokens=STEPS)] == expected
    assert [ids for ids, _ in calls.take()] == [
        [s.id for s in chunks[0]] + [s.id for s in chunks[1]],
        [s.id for s in chunks[2]],
    ]
    # Half the captions cached: only the others are made.
    path.write_text(json.dumps(dict(list(stored.items())[::2])))
    assert [g.tokens for g in shiftdc.generate_chunks(model, chunks, max_new_tokens=STEPS)] == expected
    assert json.loads(path.read_text()) == stored


def test_cached_captions_hold_at_most_three_chunks(model, direction, tmp_path, monkeypatch):
    """With every caption cached, responses go two chunks at a time, one chunk behind the input."""
    image = Image.effect_noise((40, 30), 40).convert("RGB")
    chunks = [[Sample(f"h{k}", f"what is in picture {k} ?", image)] for k in range(5)]
    shiftdc = _shiftdc(direction, caption_cache=tmp_path / "captions.json")
    expected = [g.tokens for g in shiftdc.generate_chunks(model, chunks, max_new_tokens=STEPS)]
    calls, seen = _Calls(model, monkeypatch), []
    for k, out in enumerate(shiftdc.generate_chunks(model, iter(chunks), max_new_tokens=STEPS)):
        seen.append((k, len(calls.calls)))
        assert out.tokens == expected[k]
    assert [ids for ids, _ in calls.calls] == [["h0", "h1"], ["h2", "h3"], ["h4"]]
    assert seen == [(0, 1), (1, 1), (2, 2), (3, 2), (4, 3)]


@pytest.mark.slow
@pytest.mark.reference
def test_a_model_with_sliding_window_layers_runs_chunk_by_chunk(monkeypatch):
    """Gemma 3's sliding-window layers share no prefix (the window counts columns): no joint generation."""
    gemma = HookedVLM.tiny("gemma3")
    shiftdc = _shiftdc(safe_unsafe_direction(gemma))
    chunks = _chunks()
    expected = [shiftdc.generate(gemma, chunk, max_new_tokens=STEPS).tokens for chunk in chunks]
    calls = _Calls(gemma, monkeypatch)
    assert [g.tokens for g in shiftdc.generate_chunks(gemma, chunks, max_new_tokens=STEPS)] == expected
    chunk_of = {s.id: k for k, chunk in enumerate(chunks) for s in chunk}
    assert all(len({chunk_of[sid] for sid in ids}) == 1 for ids, _ in calls.take())
