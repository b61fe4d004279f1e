"""Blockwise SFT (arXiv 2508.19529), every block in one pass, and LIFT (arXiv 2605.22939)."""

import math

import pytest
import torch
import torch.nn.functional as F

from dlmarch.sampling.llada import block_causal_mask
from tests.helpers import tiny_llada
from trainers.data import Example, pack_rows, packed_batch, pad_batch
from trainers.objectives.blockwise import (active_blocks, all_blocks, all_blocks_losses, blockwise,
                                           blockwise_masks, example_draws, two_copy_layout)
from trainers.objectives.lift import BOTTOM, RANDOM, TOP, components, keep_counts, lift, lift_keep, sample_rho

MASK, EOS, B = 60, 61, 4


def batch_of(resp_lens=(9, 3, 4, 5), prompt_lens=(3, 2, 4, 1), epoch=0, seed=0, pad="exclude"):
    g = torch.Generator().manual_seed(seed)
    ex = [Example(torch.randint(0, 59, (p + r,), generator=g).tolist(), p, 100 + i)
          for i, (p, r) in enumerate(zip(prompt_lens, resp_lens))]
    b = pad_batch(ex, EOS, pad)
    b.epoch = epoch
    return b


@pytest.mark.parametrize("pad", ["exclude", "train"])
def test_blockwise_masks_follow_the_reference_token_by_token(pad):
    """Partial last block (9 = 4 + 4 + 1; 5 = 4 + 1) and one-block responses (3, 4) included; under
    --eos-pad train the padding after each answer is part of the hidden suffix, never a block."""
    resp_lens = (9, 3, 4, 5)
    batch = batch_of(resp_lens, pad=pad)
    for prefix_rate, suffix_prob in [(0.0, 1.0), (0.5, 0.5), (0.0, 0.0)]:
        m = blockwise_masks(batch, torch.Generator().manual_seed(7), block_size=B, seed=0,
                            prefix_mask_rate=prefix_rate, suffix_mask_prob=suffix_prob)
        # Replay the draws and apply the reference's rule by hand, token by token.
        p, u = example_draws(batch, torch.Generator().manual_seed(7), n=3)
        for row in range(batch.input_ids.shape[0]):
            P = int(batch.prompt_len[row])
            R = resp_lens[row]
            act = int(m["active_block"][row])
            assert 0 <= act < math.ceil(R / B)
            for j in range(batch.input_ids.shape[1]):
                in_loss = masked_suffix = prefix_noise = False
                if P <= j < P + R:
                    blk = (j - P) // B
                    if blk == act:
                        in_loss = bool(u[0, row, j] < p[row])
                    elif blk < act:
                        prefix_noise = prefix_rate > 0 and bool(u[1, row, j] < prefix_rate)
                    else:
                        masked_suffix = suffix_prob >= 1 or (suffix_prob > 0 and bool(u[2, row, j] < suffix_prob))
                elif j >= P + R and pad == "train":  # trained padding: after every block
                    masked_suffix = suffix_prob >= 1 or (suffix_prob > 0 and bool(u[2, row, j] < suffix_prob))
                assert bool(m["active"][row, j]) == in_loss, (row, j)
                assert bool(m["suffix"][row, j]) == masked_suffix, (row, j)
                assert bool(m["prefix_noise"][row, j]) == prefix_noise, (row, j)


def test_active_blocks_without_replacement_across_epochs():
    seen = {i: [] for i in range(4)}
    for epoch in range(3 * 3):  # the 9-token response has 3 blocks: three full cycles
        act = active_blocks(batch_of(epoch=epoch), B, seed=5)
        for i, a in enumerate(act.tolist()):
            seen[i].append(a)
    assert all(sorted(seen[0][c * 3:(c + 1) * 3]) == [0, 1, 2] for c in range(3))
    assert set(seen[1]) == {0} and set(seen[3]) == {0, 1}
    assert len({tuple(seen[0][c * 3:(c + 1) * 3]) for c in range(3)}) > 1  # a new permutation each cycle


def test_blockwise_loss_is_mean_ce_over_active_masked_tokens():
    model = tiny_llada()
    batch = batch_of()
    out = blockwise(model, batch, torch.Generator().manual_seed(3), mask_id=MASK, block_size=B)
    m = blockwise_masks(batch, torch.Generator().manual_seed(3), block_size=B, seed=0)
    noisy = torch.where(m["active"] | m["suffix"], MASK, batch.input_ids)
    logits = model(noisy, attention_mask=batch.attention_mask).logits
    want = 0.0
    for row in range(4):
        sel = m["active"][row]
        if sel.any():
            want += F.cross_entropy(logits[row][sel], batch.input_ids[row][sel])
    torch.testing.assert_close(out.loss_sum / out.denom, want / 4, atol=1e-5, rtol=1e-5)


# --- all blocks in one pass ------------------------------------------------------------------------------------


def test_two_copy_mask_equals_a_dense_reference_from_the_rule():
    """Each slot's (clean, block, valid) from the layout's description, then the rule by loops."""
    from tests.dlmarch.test_masks import loop_mask

    batch = batch_of(resp_lens=(5, 3), prompt_lens=(2, 3))
    ids, mask, src = two_copy_layout(batch, batch.input_ids, B)
    Bn, R = src.shape
    L = batch.input_ids.shape[1]
    meta = {"pos": mask.q.pos.tolist(), "clean": [], "block": [], "valid": []}
    for row in range(Bn):
        P = int(batch.prompt_len[row])
        clean, block, valid = [], [], []
        for i in range(R):  # the noisy copy: response tokens, then filler (block -1)
            j = int(src[row, i])
            clean.append(False), block.append(-1 if j < 0 else (j - P) // B + 1), valid.append(True)
        for j in range(L):  # the clean row: prompt = block 0, response block k = k + 1, padding last
            v = bool(batch.attention_mask[row, j])
            clean.append(True), block.append(0 if j < P else ((j - P) // B + 1 if v else 1 << 30)), valid.append(v)
        meta["clean"].append(clean), meta["block"].append(block), meta["valid"].append(valid)
    want = loop_mask("block_causal", meta, meta, Bn, R + L, R + L)
    assert torch.equal(mask.dense()[:, 0], want)


@pytest.mark.parametrize("packed", [False, True])
@torch.no_grad()  # (FlexAttention has no backward on CPU)
def test_each_block_loss_equals_its_own_forward_with_the_future_removed(packed):
    model = tiny_llada()
    g = torch.Generator().manual_seed(2)
    ex = [Example(torch.randint(0, 59, (p + r,), generator=g).tolist(), p, i)
          for i, (p, r) in enumerate([(3, 9), (2, 5), (4, 4)])]
    batch = packed_batch(pack_rows(ex, 24), 24, EOS) if packed else pad_batch(ex, EOS, "exclude")
    masked = batch.loss_mask & (torch.rand(batch.input_ids.shape, generator=g) < 0.6)
    noisy = torch.where(masked, MASK, batch.input_ids)
    for backend in ("sdpa", "flex"):
        model.config.attn_backend = backend
        ce, doc, block, _ = all_blocks_losses(model, batch, noisy, masked, B)
        for d, e in enumerate(ex):
            row_tokens = torch.tensor(e.ids)
            P, R = e.prompt_len, len(e.ids) - e.prompt_len
            rows, cols = (batch.seg == d).nonzero(as_tuple=True)
            doc_masked, doc_noisy = masked[rows, cols], noisy[rows, cols]
            for b in range(math.ceil(R / B)):
                s, stop = P + b * B, min(P + (b + 1) * B, len(e.ids))
                x = torch.cat([row_tokens[:s], doc_noisy[s:stop]])[None]
                m = block_causal_mask(1, stop, s, P, B, x.device)
                sel = doc_masked[s:stop]
                if not sel.any():
                    continue
                logits = model(x, mask=m).logits[0, s:stop][sel]
                want = F.cross_entropy(logits, row_tokens[s:stop][sel], reduction="none")
                got = ce[(doc == d) & (block == b)]
                torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5, msg=f"{backend} doc {d} block {b}")


def test_all_blocks_loss_is_the_mean_over_blocks():
    model = tiny_llada()
    batch = batch_of(resp_lens=(9, 3), prompt_lens=(3, 2))
    out = all_blocks(model, batch, torch.Generator().manual_seed(1), mask_id=MASK, block_size=B)
    assert out.denom == 2.0 and math.isfinite(float(out.loss_sum.detach())) and out.metrics["supervised_tokens"] > 0


def test_all_blocks_counts_and_trains_the_answer_blocks_only_under_trained_padding():
    """--eos-pad train: padding after an answer is hidden in the noisy copy, never in the loss, and
    never a block: each document's loss is the mean over its answer's blocks of the mean CE of their
    masked tokens (recomputed here from the noisy copy the model was given)."""
    model = tiny_llada()
    batch = batch_of(resp_lens=(9, 3), prompt_lens=(3, 2), pad="train")  # doc 1: 3 answer tokens, 7 padding
    seen = []
    forward = model.forward
    model.forward = lambda ids, **kw: (seen.append(ids), forward(ids, **kw))[1]
    out = all_blocks(model, batch, torch.Generator().manual_seed(1), mask_id=MASK, block_size=B)
    model.forward = forward
    _, _, src = two_copy_layout(batch, batch.input_ids, B)
    slots = seen[0][:, : src.shape[1]]
    padding = batch.loss_mask & ~batch.answer
    noisy = batch.input_ids.clone()
    for row in range(src.shape[0]):
        real = src[row] >= 0
        noisy[row, src[row][real]] = slots[row][real]
    assert bool((noisy[padding] == MASK).all())  # the padding is hidden ...
    masked = batch.answer & (noisy == MASK)  # ... and only the answer's masked tokens are scored
    assert out.metrics["supervised_tokens"] == float(masked.sum()) > 0
    ce, doc, block, _ = all_blocks_losses(model, batch, noisy, masked, B)
    want = 0.0
    for d, n_blocks in enumerate((3, 1)):  # ceil(9 / 4), ceil(3 / 4): the padding adds no block
        means = [ce[(doc == d) & (block == b)].mean() for b in range(n_blocks) if ((doc == d) & (block == b)).any()]
        want += sum(means) / n_blocks
    torch.testing.assert_close(out.loss_sum.detach(), torch.as_tensor(want).float(), atol=1e-5, rtol=1e-5)


# --- LIFT --------------------------------------------------------------------------------------------------------


def test_lift_components_for_each_t():
    t = torch.tensor([0.05, 0.32, 0.34, 0.5, 0.66, 0.68, 0.99])
    assert components(t, "lift3", 3.0).tolist() == [BOTTOM, BOTTOM, RANDOM, RANDOM, RANDOM, TOP, TOP]
    assert components(t, "lift3", 4.0).tolist() == [BOTTOM, RANDOM, RANDOM, RANDOM, RANDOM, RANDOM, TOP]
    # LIFT-2: the reference's argmax of (t, 1 - t) sends the tie at t = 0.5 to top
    assert components(t, "lift2").tolist() == [BOTTOM, BOTTOM, BOTTOM, TOP, TOP, TOP, TOP]


def test_lift_rho_and_k():
    t = torch.tensor([0.2, 0.95, 0.5])
    rho = sample_rho(t, torch.tensor([0.0, 0.5, 1.0]))
    torch.testing.assert_close(rho, torch.tensor([0.1, 0.025, 0.5]))
    n = torch.tensor([10, 10, 0])
    comp = torch.tensor([BOTTOM, RANDOM, RANDOM])
    # k = round(n t / (t + rho)); the random component keeps at least one; nothing from nothing.
    assert keep_counts(n, t, rho, comp).tolist() == [round(10 * 0.2 / 0.3), round(10 * 0.95 / 0.975), 0]
    assert keep_counts(torch.tensor([10]), torch.tensor([0.001]), torch.tensor([0.9]), torch.tensor([RANDOM])).tolist() == [1]


def test_lift_keeps_the_right_positions_on_hand_made_confidences():
    # One row, two documents of 6 response tokens, all in the superset.
    seg = torch.tensor([[0] * 6 + [1] * 6])
    superset = torch.ones(1, 12, dtype=torch.bool)
    conf = torch.tensor([[-0.1, -3.0, -0.5, -2.0, -0.2, -5.0, -1.0, -0.3, -4.0, -0.05, -2.5, -0.7]])
    rand = torch.tensor([[0.9, 0.1, 0.8, 0.2, 0.7, 0.3, 0.6, 0.4, 0.5, 0.05, 0.95, 0.15]])
    t, rho = torch.tensor([0.9, 0.1]), torch.tensor([0.09, 0.2])  # k = round(6*0.9/0.99)=5, round(6*0.1/0.3)=2
    keep, comp, k = lift_keep(superset, seg, 2, t, rho, conf, rand, component_from="document")
    assert comp.tolist() == [TOP, BOTTOM] and k.tolist() == [5, 2]
    assert keep[0, :6].tolist() == [True, True, True, True, True, False]  # 5 most confident: all but -5.0
    assert keep[0, 6:].tolist() == [False, False, True, False, True, False]  # 2 least confident: -4.0, -2.5
    t2 = torch.tensor([0.5, 0.5])
    keep, comp, k = lift_keep(superset, seg, 2, t2, torch.tensor([0.5, 0.25]), conf, rand)
    assert comp.tolist() == [RANDOM, RANDOM] and k.tolist() == [3, 4]
    assert keep[0, :6].tolist() == [True, False, True, False, True, False]  # highest random scores 0.9, 0.8, 0.7
    assert keep[0, 6:].tolist() == [True, True, True, False, True, False]  # 0.6, 0.4, 0.5, 0.95


@pytest.mark.parametrize("t_value", [1e-6, 0.999999])
def test_lift_loss_finite_at_the_ends(monkeypatch, t_value):
    import trainers.objectives.lift as L

    model = tiny_llada()
    batch = batch_of()
    monkeypatch.setattr(L, "doc_times", lambda b, g: torch.full((b.num_docs,), t_value))
    out = lift(model, batch, torch.Generator().manual_seed(0), mask_id=MASK)
    assert math.isfinite(float(out.loss_sum.detach())) and out.denom == float(batch.loss_mask.sum())
