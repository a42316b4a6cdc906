"""Exact patching grids and attribution patching across conditions, against plain torch on another HF model.

The references below are written out here with plain ``register_forward_pre_hook`` on an
independently loaded transformers model (``load_reference_model``): the decoder layer's input is
``resid_pre``; the output projection's input, split into heads, is ``attn.hook_z``. Position groups
are recomputed here from the batch's role masks.
"""

from __future__ import annotations

import math

import pytest
import torch

from vlminterp import Condition, PromptBatch
from vlminterp.analysis import attribution, patching
from vlminterp.references import hf_decoder_layers, load_reference_model

pytestmark = [
    pytest.mark.reference,
    pytest.mark.usefixtures("one_thread"),
]  # reference: also run by `make test-latest`

TOL = 1e-4
#: (clean, corrupt, with a teacher-forced response of different lengths per row appended to both)
PAIRINGS = [
    (Condition.TEXT_ONLY, Condition.IMAGE, False),
    (Condition.BLANK, Condition.IMAGE, False),
    (Condition.TEXT_ONLY, Condition.IMAGE, True),
]
RESPONSE = [[5, 7, 9], [11, 13]]


def pairing_id(pairing):
    clean, corrupt, response = pairing
    return f"{clean.value}->{corrupt.value}" + ("+response" if response else "")


def metric(logits):
    """One value per row: a logit difference at the last position (differentiable)."""
    return logits[:, -1, 3] - logits[:, -1, 5]


@pytest.fixture(scope="module")
def hf(tiny_model):
    return load_reference_model(tiny_model)


def batches(model, samples, pairing):
    clean, corrupt, response = pairing
    out = [PromptBatch.paired(model, samples, [c]) for c in (clean, corrupt)]
    return [b.with_suffix(RESPONSE[: len(b)]) for b in out] if response else out


def positions(batch, group):
    """Per row, the group's columns, written out from the role masks (the last column is its own group)."""
    real = batch.attention_mask.bool().clone()
    real[:, -1] = False
    mask = {
        "image": batch.image_mask & real,
        "instruction": batch.instruction_mask & real,
        "template": batch.template_mask & real,
        "generated": batch.generated_mask & real,
    }.get(group)
    n, t = batch.input_ids.shape
    if mask is None:
        return [[t - 1] for _ in range(n)]
    return [[j for j in range(t) if mask[i, j]] for i in range(n)]


def aligned(clean, corrupt, group):
    """Per row (src, dst) column lists when the group has the same non-zero size in both, else None."""
    return [
        (s, d) if s and len(s) == len(d) else None
        for s, d in zip(positions(clean, group), positions(corrupt, group), strict=True)
    ]


def run_hf(hf, batch, edits=(), capture=(), grad=False):
    """Logits of plain HF with pre-hooks: ``edits`` [(module, fn(x) -> x)], ``capture`` [(key, module)]."""
    captured = {}

    def pre(fn, key):
        def hook(module, args, kwargs):
            x = args[0] if args else kwargs["hidden_states"]
            if fn is not None:
                x = fn(x)
            if key is not None:
                captured[key] = x
            if args:
                return (x, *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": x}

        return hook

    handles = [m.register_forward_pre_hook(pre(fn, None), with_kwargs=True) for m, fn in edits]
    handles += [m.register_forward_pre_hook(pre(None, k), with_kwargs=True) for k, m in capture]
    kwargs = batch.model_kwargs()
    try:
        with torch.set_grad_enabled(grad):
            logits = hf(input_ids=batch.input_ids, **kwargs).logits
    finally:
        for h in handles:
            h.remove()
    return logits, captured


def sites(hf, kind):
    """Per layer, the module whose input is the hook ``kind`` (decoder layer: resid_pre; o_proj: z)."""
    layers = hf_decoder_layers(hf)
    return list(layers) if kind == "resid_pre" else [layer.self_attn.o_proj for layer in layers]


def per_head(term, model):
    """``[k, n_heads * d_head]`` summed to one value per head."""
    return term.view(len(term), model.cfg.n_heads, model.cfg.d_head).sum(dim=(0, 2))


@pytest.mark.parametrize("pairing", PAIRINGS, ids=pairing_id)
def test_attribution_equals_autograd_on_a_plain_hf_model(tiny_model, hf, noise_pair, pairing):
    model = tiny_model
    clean, corrupt = batches(model, noise_pair, pairing)
    grids = attribution.attribution_grids(model, clean, corrupt, metric, groups=patching.ALL_GROUPS)
    for kind in ("resid_pre", "z"):
        modules = sites(hf, kind)
        _, c = run_hf(hf, clean, capture=list(enumerate(modules)))
        logits, x = run_hf(hf, corrupt, capture=list(enumerate(modules)), grad=True)
        grads = torch.autograd.grad(metric(logits).sum(), [x[k] for k in range(len(modules))])
        got = grids[kind].effects
        for layer, grad in enumerate(grads):
            for g, group in enumerate(patching.ALL_GROUPS):
                for i, pair in enumerate(aligned(clean, corrupt, group)):
                    cell = got[i, layer, g]
                    if pair is None:
                        assert cell.isnan().all()
                        continue
                    src, dst = pair
                    term = grad[i, dst] * (c[layer][i, src] - x[layer][i, dst].detach())
                    want = term.sum() if kind == "resid_pre" else per_head(term, model)
                    torch.testing.assert_close(cell.float(), want, atol=TOL, rtol=TOL)
    defined = ~grids["resid_pre"].values.isnan()
    assert grids["resid_pre"].values[defined].abs().max() > 1e-3, "every estimate is zero: a vacuous test"
    assert model.count_hooks() == 0


@pytest.mark.parametrize("pairing", PAIRINGS, ids=pairing_id)
def test_exact_resid_grid_equals_patching_written_out(tiny_model, hf, noise_pair, pairing):
    model = tiny_model
    clean, corrupt = batches(model, noise_pair, pairing)
    grid = patching.resid_grid(model, clean, corrupt, metric, groups=patching.ALL_GROUPS)
    modules = sites(hf, "resid_pre")
    _, c = run_hf(hf, clean, capture=list(enumerate(modules)))
    base = metric(run_hf(hf, corrupt)[0])
    torch.testing.assert_close(grid.corrupt_metric.float(), base, atol=TOL, rtol=TOL)
    for layer, module in enumerate(modules):
        for g, group in enumerate(patching.ALL_GROUPS):
            pairs = aligned(clean, corrupt, group)

            def edit(x, pairs=pairs, layer=layer):
                x = x.clone()
                for i, pair in enumerate(pairs):
                    if pair is not None:
                        x[i, pair[1]] = c[layer][i, pair[0]]
                return x

            want = metric(run_hf(hf, corrupt, edits=[(module, edit)])[0]) - base
            for i, pair in enumerate(pairs):
                if pair is None:
                    assert math.isnan(grid.effects[i, layer, g])
                else:
                    torch.testing.assert_close(grid.effects[i, layer, g].float(), want[i], atol=TOL, rtol=TOL)
    assert (~grid.values.isnan()).sum() >= 6
    generated = grid.values[:, patching.ALL_GROUPS.index("generated")]
    assert generated.isnan().all() != pairing[2], "the response tokens are patched exactly when there is one"
    assert model.count_hooks() == 0


def test_exact_head_grid_equals_patching_written_out(tiny_model, hf, noise_pair):
    model = tiny_model
    clean, corrupt = batches(model, noise_pair, PAIRINGS[0])
    groups = ("instruction", "last")
    grid = patching.head_grid(model, clean, corrupt, metric, groups=groups)
    assert grid.values.shape == (model.cfg.n_layers, len(groups), model.cfg.n_heads)
    modules = sites(hf, "z")
    _, c = run_hf(hf, clean, capture=list(enumerate(modules)))
    base = metric(run_hf(hf, corrupt)[0])
    d = model.cfg.d_head
    for layer, module in enumerate(modules):
        for g, group in enumerate(groups):
            pairs = aligned(clean, corrupt, group)
            for head in range(model.cfg.n_heads):

                def edit(x, pairs=pairs, layer=layer, head=head):
                    x = x.clone()
                    for i, (src, dst) in enumerate(pairs):
                        x[i, dst, head * d : (head + 1) * d] = c[layer][i, src, head * d : (head + 1) * d]
                    return x

                want = metric(run_hf(hf, corrupt, edits=[(module, edit)])[0]) - base
                torch.testing.assert_close(grid.effects[:, layer, g, head].float(), want, atol=TOL, rtol=TOL)
    assert grid.values.abs().max() > 1e-3
    assert model.count_hooks() == 0


def test_batched_and_stacked_equal_one_pair_and_one_cell_at_a_time(tiny_model, noise_pair):
    model = tiny_model
    clean, corrupt = batches(model, noise_pair, PAIRINGS[0])
    exact = patching.resid_grid(model, clean, corrupt, metric, groups=("instruction", "last"))
    estimate = attribution.attribution_grids(model, clean, corrupt, metric, groups=("instruction", "last"))
    unstacked = patching.resid_grid(model, clean, corrupt, metric, groups=("instruction", "last"), max_rows=1)
    torch.testing.assert_close(exact.effects, unstacked.effects, atol=TOL, rtol=TOL)
    for i, sample in enumerate(noise_pair):
        one_clean, one_corrupt = batches(model, [sample], PAIRINGS[0])
        one = patching.resid_grid(model, one_clean, one_corrupt, metric, groups=("instruction", "last"))
        torch.testing.assert_close(exact.effects[i], one.effects[0], atol=TOL, rtol=TOL)
        one_estimate = attribution.attribution_grids(
            model, one_clean, one_corrupt, metric, groups=("instruction", "last")
        )
        for kind, grid in estimate.items():
            torch.testing.assert_close(grid.effects[i], one_estimate[kind].effects[0], atol=TOL, rtol=TOL)


def test_no_hooks_are_left_after_an_error_in_the_metric(tiny_model, noise_pair):
    model = tiny_model
    clean, corrupt = batches(model, noise_pair, PAIRINGS[0])
    for run in (patching.resid_grid, attribution.attribution_grids):
        with pytest.raises(ValueError, match="one value per row"):
            run(model, clean, corrupt, lambda logits: logits[:, -1, 0].sum())
        assert model.count_hooks() == 0


def test_unpaired_batches_and_unknown_groups_are_refused(tiny_model, noise_pair):
    model = tiny_model
    clean = PromptBatch.paired(model, noise_pair, [Condition.TEXT_ONLY])
    corrupt = PromptBatch.paired(model, noise_pair[::-1], [Condition.IMAGE])
    with pytest.raises(ValueError, match="Row 0: clean is sample"):
        patching.resid_grid(model, clean, corrupt, metric)
    with pytest.raises(ValueError, match="clean has 2 rows and corrupt 1"):
        attribution.attribution_grids(model, clean, corrupt.select([0]), metric)
    with pytest.raises(ValueError, match="Unknown position group 'images'"):
        patching.resid_grid(model, clean, clean, metric, groups=("images",))
    with pytest.raises(ValueError, match="Hook kind 'pattern' gives activations of shape"):
        attribution.attribution_grids(model, clean, clean, metric, hooks=("resid_pre", "pattern"))
    with pytest.raises(ValueError, match="Hook kind 'pattern' gives activations of shape"):
        patching.resid_grid(model, clean, clean, metric, hook="pattern")
    assert model.count_hooks() == 0


def test_rows_are_tidy_and_mark_undefined_cells(tiny_model, noise_pair):
    model = tiny_model
    clean, corrupt = batches(model, noise_pair, PAIRINGS[0])
    grid = attribution.attribution_grids(model, clean, corrupt, metric, hooks=("z",))["z"]
    rows = grid.to_rows(model="tiny")
    assert len(rows) == model.cfg.n_layers * len(patching.GROUPS) * model.cfg.n_heads
    first = rows[0]
    assert {
        k: first[k] for k in ("model", "method", "hook", "clean", "corrupt", "layer", "group", "head")
    } == {
        "model": "tiny",
        "method": "attribution",
        "hook": "z",
        "clean": "text_only",
        "corrupt": "image",
        "layer": 0,
        "group": "image",
        "head": 0,
    }
    assert first["value"] is None and first["n"] == 0  # no image tokens in TEXT_ONLY
    assert all(r["n"] == 2 and r["value"] is not None for r in rows if r["group"] == "last")


def test_rank_correlation_matches_a_hand_computation():
    # ranks of a: 1, 2.5, 2.5, 4; of b: 4, 3, 2, 1 -> Pearson of the ranks
    a, b = torch.tensor([0.0, 1.0, 1.0, 5.0]), torch.tensor([9.0, 3.0, 2.0, -1.0])
    ra, rb = torch.tensor([1, 2.5, 2.5, 4]), torch.tensor([4.0, 3, 2, 1])
    ra, rb = ra - ra.mean(), rb - rb.mean()
    want = float((ra * rb).sum() / (ra.norm() * rb.norm()))
    rho, n = attribution.rank_correlation(a, b)
    assert n == 4 and rho == pytest.approx(want)
    assert math.isnan(attribution.rank_correlation(torch.ones(3), torch.arange(3.0))[0])


@pytest.mark.parametrize("family", ["gemma3", "qwen2_5_vl"])
def test_template_tokens_of_an_image_block_are_left_out_and_the_rest_line_up(family, noise_pair):
    """Families whose image block adds template markers: the text-only template is matched, id for id."""
    from vlminterp import HookedVLM

    model = HookedVLM.tiny(family)
    clean, corrupt = batches(model, noise_pair, PAIRINGS[0])
    extra = [
        (corrupt.template_mask[i].sum() - clean.template_mask[i].sum()).item() for i in range(len(clean))
    ]
    assert min(extra) > 0, "the image block adds no template tokens here: the test would be vacuous"
    for i, pair in enumerate(patching.group_pairs(clean, corrupt, "template")):
        src, dst = pair
        assert src.tolist() == positions(clean, "template")[i]  # every text-only template token is matched
        assert clean.input_ids[i, src].tolist() == corrupt.input_ids[i, dst].tolist()
    grid = patching.resid_grid(model, clean, corrupt, metric, groups=("template",))
    assert not grid.values.isnan().any()
    assert model.count_hooks() == 0
