"""Blockwise SFT (arXiv 2508.19529, Bowen-Sun-0728/Blockwise-SFT), and every block in one pass.

Reference mode (`blockwise`): each document's answer (through its EOS, never the trained EOS
padding) is split into its own ceil(len / block_size) blocks (the last may be partial), as
`train_blockwise.py` does. One active block per document: each visit of an example takes the next
block of a random permutation of its blocks, redrawn once all are used, which is the reference's
"uniform over the sample's unused blocks, without replacement" as a pure function of (seed,
example, epoch). The prefix (prompt and earlier blocks) stays clean (or, ablation, its answer part
is masked with rate `prefix_mask_rate`, out of the loss); the active block's tokens are masked with
one rate p ~ U(1e-3, 1); the suffix (later blocks, then any trained EOS padding) is replaced by the
mask id (ablation: with probability `suffix_mask_prob`) and left out of the loss. Attention stays
bidirectional. Loss: per document the mean CE over the active block's masked tokens (no 1/p), then
the mean over documents (a document with nothing masked counts as 0, as in the reference). Every
draw of a document (p and its per-token uniforms) comes from a generator keyed by (one seed drawn
from the micro-batch's generator, the example), so an example's blocks and masks do not depend on
its batch-mates or on how far the batch is padded.

All blocks in one pass (`all_blocks`, BD3-LM's training layout): the noisy copy of every response
token is concatenated with the clean row; a noisy token of block b sees the noisy tokens of block
b and the clean blocks before b, clean tokens see clean blocks up to their own (the prompt is
block 0). The blocks are the answer's, as in the reference mode; trained EOS padding is hidden in the
noisy copy and never in the loss. Each block gets its own rate p_b ~ U(1e-3, 1). The loss of each block is the mean CE over
its masked tokens; a document's loss is the mean over its blocks (the expectation of the reference
loss over the choice of active block), then the mean over documents. The model this trains
conditions on a future that is cut off, not masked: decode it with generate(block_causal=True).
"""

from __future__ import annotations

import random

import torch
from torch import Tensor

from dlmarch.masks import AttentionMask, pack_selected

from ..data import Batch
from .common import (ObjectiveOutput, doc_uniform, loss_metrics, masked_forward, per_doc_mean, predicts_next_token,
                     token_ce, with_masks, zero_loss)

P_MIN = 1e-3  # the reference's MASK_PROB_EPS: p ~ U(1e-3, 1)


def response_index(batch: Batch) -> Tensor:
    """Index of each token inside its document's response (prompt tokens negative). (B, L)"""
    return batch.positions - batch.prompt_len.to(batch.positions.device)[batch.seg.clamp(min=0)]


def answer_blocks(batch: Batch, block_size: int) -> Tensor:
    """ceil(answer length / block_size) per document: the reference's blocks, padding never counted. (num_docs,)"""
    return (batch.answer_lengths() + block_size - 1) // block_size


def active_blocks(batch: Batch, block_size: int, seed: int) -> Tensor:
    """The active block of every document: a permutation of its answer's blocks, consumed one per
    visit (epoch) and redrawn when used up, seeded by (seed, example, cycle). (num_docs,)"""
    n_blocks = answer_blocks(batch, block_size).tolist()
    out = []
    for key, n in zip(batch.example_ids.tolist(), n_blocks):
        cycle, visit = divmod(batch.epoch, max(n, 1))
        order = list(range(max(n, 1)))
        random.Random((seed * 1_000_003 + key) * 7919 + cycle).shuffle(order)
        out.append(order[visit])
    return torch.tensor(out, device=batch.input_ids.device)


def example_draws(batch: Batch, generator: torch.Generator, n: int) -> tuple[Tensor, Tensor]:
    """Each document's rate p ~ U(1e-3, 1) (num_docs,) and n uniforms per token (n, B, L), drawn from
    a generator keyed by (a seed drawn from `generator`, the example). A document's own tokens
    (prompt and answer) take the first draws and its trained padding the ones after, so an
    example's draws do not depend on its batch-mates, its row, or the padding."""
    dev = batch.input_ids.device
    base = int(torch.randint(0, 2**31 - 1, (1,), generator=generator, device=generator.device))
    own = (batch.prompt_len.cpu() + batch.answer_lengths().cpu()).tolist()
    seg, pos = batch.seg.cpu(), batch.positions.cpu()
    p = torch.empty(batch.num_docs)
    u = torch.zeros(n, *seg.shape)
    for d, key in enumerate(batch.example_ids.tolist()):
        g = torch.Generator().manual_seed((base * 1_000_003 + key) % (1 << 62))
        p[d] = P_MIN + (1 - P_MIN) * torch.rand(1, generator=g)
        sel = seg == d
        length = int(pos[sel].max()) + 1
        draws = torch.rand(n, own[d], generator=g)
        if length > own[d]:
            draws = torch.cat([draws, torch.rand(n, length - own[d], generator=g)], 1)
        u[:, sel] = draws[:, pos[sel]]
    return p.to(dev), u.to(dev)


def blockwise_masks(batch: Batch, generator: torch.Generator, *, block_size: int, seed: int,
                    prefix_mask_rate: float = 0.0, suffix_mask_prob: float = 1.0) -> dict:
    """The reference's masks. Returns dict of (B, L) booleans: active (masked, in the loss),
    prefix_noise, suffix (masked, out of the loss), in_active, and the active block per document."""
    resp, answer = batch.loss_mask, batch.answer
    seg = batch.seg.clamp(min=0)
    block = torch.where(answer, response_index(batch) // block_size, torch.full_like(seg, -1))
    act_doc = active_blocks(batch, block_size, seed)
    act = act_doc[seg]
    p, u = example_draws(batch, generator, n=3)
    in_active = answer & (block == act)
    masked_active = in_active & (u[0] < p[seg])
    prefix = answer & (block < act)
    prefix_noise = prefix & (u[1] < prefix_mask_rate) if prefix_mask_rate > 0 else torch.zeros_like(prefix)
    after = (answer & (block > act)) | (resp & ~answer)  # later blocks, then the trained padding
    if suffix_mask_prob >= 1 - 1e-12:
        suffix = after
    elif suffix_mask_prob <= 1e-12:
        suffix = torch.zeros_like(after)
    else:
        suffix = after & (u[2] < suffix_mask_prob)
    return {"active": masked_active, "prefix_noise": prefix_noise, "suffix": suffix, "active_block": act_doc,
            "in_active": in_active}


def blockwise(model, batch: Batch, generator: torch.Generator, *, mask_id: int, block_size: int = 32, seed: int = 0,
              prefix_mask_rate: float = 0.0, suffix_mask_prob: float = 1.0) -> ObjectiveOutput:
    m = blockwise_masks(batch, generator, block_size=block_size, seed=seed, prefix_mask_rate=prefix_mask_rate,
                        suffix_mask_prob=suffix_mask_prob)
    hide = m["active"] | m["prefix_noise"] | m["suffix"]
    noisy = with_masks(batch, hide, mask_id)
    logits = masked_forward(model, noisy, batch, m["active"])
    if not bool(m["active"].any()):
        return ObjectiveOutput(zero_loss(logits), float(batch.num_docs), {"masked_frac": 0.0})
    ce = token_ce(logits, batch.input_ids[m["active"]])
    doc_loss = per_doc_mean(ce, batch.seg[m["active"]], batch.num_docs)
    metrics = loss_metrics(ce, m["active"], m["in_active"])
    return ObjectiveOutput(doc_loss.sum(), float(batch.num_docs), metrics)


# --- every block in one pass ----------------------------------------------------------------------------------


def block_ids(batch: Batch, block_size: int) -> Tensor:
    """Block of every token of the clean row: prompt 0, response block k is k + 1; padding that is
    not response goes after every block. (B, L)"""
    r = response_index(batch)
    blk = torch.where(r >= 0, r // block_size + 1, torch.zeros_like(r))
    if batch.attention_mask is not None:
        blk = torch.where(batch.attention_mask.bool(), blk, torch.full_like(blk, 1 << 30))
    return blk


def two_copy_layout(batch: Batch, noisy_ids: Tensor, block_size: int) -> tuple[Tensor, AttentionMask, Tensor]:
    """[noisy copy of each row's response tokens, padded to the batch's longest | the clean row].

    Returns (ids (B, R + L), the block-causal mask, index (B, R) of each noisy slot's position in
    the clean row). Noisy slots beyond a row's response are filler: block -1, seen by nothing else.
    """
    resp = batch.loss_mask
    B, L = resp.shape
    order, real = pack_selected(resp)  # each row's response positions, in order
    R = order.shape[1]
    blk = block_ids(batch, block_size)
    noisy_block = torch.where(real, blk.gather(1, order), torch.full_like(order, -1))
    doc = batch.doc_ids if batch.doc_ids is not None else torch.zeros_like(batch.input_ids)
    ids = torch.cat([noisy_ids.gather(1, order), batch.input_ids], 1)
    pos = torch.cat([batch.positions.gather(1, order), batch.positions], 1)
    doc2 = torch.cat([doc.gather(1, order), doc], 1)
    block2 = torch.cat([noisy_block, blk], 1)
    clean2 = torch.cat([torch.zeros(B, R, dtype=torch.bool, device=resp.device), torch.ones_like(resp)], 1)
    valid2 = None
    if batch.attention_mask is not None:
        valid2 = torch.cat([torch.ones(B, R, dtype=torch.bool, device=resp.device), batch.attention_mask.bool()], 1)
    mask = AttentionMask.self_attention("block_causal", pos, doc_ids=doc2 if batch.doc_ids is not None else None,
                                        valid=valid2, block_ids=block2, clean=clean2)
    return ids, mask, torch.where(real, order, torch.full_like(order, -1))


# A next-token head scores a block's first token with the last slot of the block before, which in the
# two-copy layout sees neither the noisy block nor, from the clean copy, anything after its own block.
ALL_BLOCKS_SHIFTED = ("--all-blocks: a Dream model (next-token head) cannot be trained in the two-copy layout "
                      "(no slot sees a block's first token's context); use the reference mode")


def all_blocks_losses(model, batch: Batch, noisy_ids: Tensor, masked: Tensor, block_size: int):
    """One forward of the two-copy layout. Returns (ce (K,) of the masked noisy tokens, their
    document (K,), their response block (K,), the logits (K, V)), tokens in row-major order of the
    noisy copy."""
    if predicts_next_token(model):
        raise ValueError(ALL_BLOCKS_SHIFTED)
    ids, mask, src = two_copy_layout(batch, noisy_ids, block_size)
    B, R = src.shape
    slot_masked = (src >= 0) & masked.gather(1, src.clamp(min=0))
    select = torch.cat([slot_masked, torch.zeros_like(batch.loss_mask)], 1)
    logits = model(ids, mask=mask, logits_at=select).logits
    src_pos = src[slot_masked]
    rows = torch.arange(B, device=src.device)[:, None].expand(B, R)[slot_masked]
    targets = batch.input_ids[rows, src_pos]
    ce = token_ce(logits, targets) if logits.numel() else logits.sum(-1)
    seg = batch.seg[rows, src_pos]
    block = response_index(batch)[rows, src_pos] // block_size
    return ce, seg, block, logits


def all_blocks(model, batch: Batch, generator: torch.Generator, *, mask_id: int, block_size: int = 32) -> ObjectiveOutput:
    # The answer's blocks only, as in the reference mode: trained EOS padding (--eos-pad train) is
    # hidden in the noisy copy and left out of the loss and of the block count.
    n_blocks = answer_blocks(batch, block_size)
    max_blocks = max(1, int(n_blocks.max()))
    p = P_MIN + (1 - P_MIN) * torch.rand(batch.num_docs, max_blocks, generator=generator, device=n_blocks.device)
    u = doc_uniform(batch, generator)[0]
    seg = batch.seg.clamp(min=0)
    blk = (response_index(batch) // block_size).clamp(min=0, max=max_blocks - 1)
    masked = batch.answer & (u < p[seg, blk])
    padding = batch.loss_mask & ~batch.answer
    noisy = with_masks(batch, masked | padding, mask_id)
    ce, doc, block, logits = all_blocks_losses(model, batch, noisy, masked, block_size)
    if ce.numel() == 0:
        return ObjectiveOutput(zero_loss(logits), float(batch.num_docs), {"masked_frac": 0.0})
    key = doc * max_blocks + block
    block_sum = torch.zeros(batch.num_docs * max_blocks, device=ce.device).index_add_(0, key, ce)
    block_cnt = torch.zeros(batch.num_docs * max_blocks, device=ce.device).index_add_(0, key, torch.ones_like(ce))
    block_loss = (block_sum / block_cnt.clamp(min=1)).view(batch.num_docs, max_blocks)
    doc_loss = block_loss.sum(1) / n_blocks.clamp(min=1)
    metrics = loss_metrics(ce, masked, batch.answer)
    return ObjectiveOutput(doc_loss.sum(), float(batch.num_docs), metrics)

