"""Masked-diffusion SFT (LLaDA's GUIDELINES.md; docs/masked-diffusion-sft.md): the baseline every objective is measured against.

Per document t ~ U(0, 1) and p = (1 - eps) t + eps; each response token is replaced by the mask id
with probability p (the prompt stays clean); the loss is the sum over masked tokens of CE / p,
divided by a normaliser the references disagree on:
  "answer_length" (LLaDA's guidelines, default): each document's sum divided by its response
                  length, then the mean over documents;
  "response":     all response (non-prompt) positions of the batch (d1, LIFT);
  "masked":       the number of masked tokens (the GIFT re-implementation).

Weighting (`weighting`):
  "inverse_t" (default): the 1 / p above, the masked-diffusion ELBO.
  "classical":  the Blockwise SFT paper's "classical SFT" baseline (Bowen-Sun-0728/Blockwise-SFT
                `train_fullseq.py`): no 1 / p; each document's mean CE over its masked tokens (0 when
                none is masked), then the mean over documents. The normaliser does not apply. Only the
                answer (through its EOS) is masked: trained EOS padding (`eos_pad="train"`) stays clean,
                attended and out of the loss, as the reference pads with clean pad (= EOS) tokens.

  "dream":      Dream's SFT recipe (ZHZisZZ/dllm `pipelines/dream/trainer.py` DreamTrainer with
                `core/trainers/mdlm.py` MDLMTrainer, as `examples/dream/sft.py` runs it, after DreamLM/Dream's
                `sft_trainer.yaml`): each masked token's CE weighted by CART alone (geometric p = `cart_p`,
                default 0.3; no 1 / t), the sum divided by the batch's response-token count (every
                maskable token: the responses and their trained padding; dllm's loss_norm_type "token").
                CART's context is every unmasked token of the row (prompt, response and padding, as dllm's
                `valid_mask = ~masked_mask`), within the token's document. The normaliser does not apply.
                The rest of the recipe is the data layout: `--eos-pad hidden` (padding trained as EOS
                targets, hidden from attention) and `--response-cutoff batch` (configs/sft-dream.yaml).

CART (option `cart_p` with the default weighting, the baseline shipped with LIFT, divelab/LIFT
`cart_loss`): each masked token's 1 / p term is further weighted by its closeness to unmasked tokens,
w_j = sum over unmasked i of 0.5 p (1 - p)^(|i - j| - 1) (within the token's own document), i.e.
LIFT's CART = Dream's CART weight x 1 / p.
"""

from __future__ import annotations

import torch

from ..data import Batch
from .common import (EPS, ObjectiveOutput, doc_times, doc_uniform, loss_metrics, masked_forward, per_doc, per_doc_mean,
                     token_ce, with_masks, zero_loss)

NORMALISERS = ("answer_length", "response", "masked")
WEIGHTINGS = ("inverse_t", "classical", "dream")
DREAM_CART_P = 0.3  # dllm DreamConfig loss_weight_type "cart[geo_p:0.3]"


def weighted_loss(logits, targets, weights, batch: Batch, masked, normaliser: str) -> tuple:
    """(loss_sum, denom) of per-token weights (K,) at the masked tokens, under a normaliser."""
    ce = token_ce(logits, targets)
    if normaliser == "answer_length":
        seg = batch.seg[masked]
        answer_len = per_doc(batch.loss_mask.flatten().float(), batch.seg.flatten().clamp(min=0), batch.num_docs)
        return (ce * weights / answer_len[seg]).sum(), float(batch.num_docs), ce
    if normaliser == "response":
        return (ce * weights).sum(), float(batch.loss_mask.sum()), ce
    if normaliser == "masked":
        return (ce * weights).sum(), float(masked.sum()), ce
    raise ValueError(f"unknown normaliser {normaliser!r}; expected one of {NORMALISERS}")


def cart_weights(batch: Batch, masked, cart_p: float, hidden_context: bool = False):
    """CART's weight of every token (B, L): sum over unmasked tokens i of its document of
    0.5 p (1 - p)^(|i - j| - 1), 0 at distance 0. hidden_context: tokens hidden from attention
    (padding) count as context too, as in Dream's recipe; else they do not."""
    if not 0 < cart_p < 1:
        raise ValueError(f"cart_p must be in (0, 1), found {cart_p}")
    L = masked.shape[1]
    idx = torch.arange(L, device=masked.device)
    dist = (idx[:, None] - idx[None]).abs().float()
    kernel = 0.5 * cart_p * (1 - cart_p) ** (dist - 1)
    kernel = kernel.masked_fill(dist == 0, 0.0)
    visible = ~masked
    if batch.attention_mask is not None and not hidden_context:
        visible = visible & batch.attention_mask.bool()
    doc = batch.doc_ids if batch.doc_ids is not None else batch.seg
    same = (doc[:, :, None] == doc[:, None, :]).float()
    return torch.einsum("bi,bij->bj", visible.float(), kernel * same)


def sft(model, batch: Batch, generator: torch.Generator, *, mask_id: int, normaliser: str = "answer_length",
        cart_p: float | None = None, weighting: str = "inverse_t") -> ObjectiveOutput:
    if weighting not in WEIGHTINGS:
        raise ValueError(f"unknown weighting {weighting!r}; expected one of {WEIGHTINGS}")
    t = doc_times(batch, generator)
    p = (1 - EPS) * t + EPS
    u = doc_uniform(batch, generator)[0]
    seg = batch.seg.clamp(min=0)
    if weighting == "dream":
        masked = batch.loss_mask & (u < p[seg])
        return dream_loss(model, batch, masked, mask_id=mask_id, cart_p=cart_p or DREAM_CART_P, t_mean=float(t.mean()))
    if weighting == "classical":
        if cart_p:
            raise ValueError("CART weights the 1 / p loss; it does not combine with the classical weighting")
        # train_fullseq.py masks the answer only: its EOS padding stays clean, attended and out of the loss.
        masked = batch.answer & (u < p[seg])
        return classical_loss(model, batch, masked, mask_id=mask_id, t_mean=float(t.mean()))
    masked = batch.loss_mask & (u < p[seg])
    extra = cart_weights(batch, masked, cart_p)[masked] if cart_p else None
    return sft_loss(model, batch, masked, p, mask_id=mask_id, normaliser=normaliser, t_mean=float(t.mean()),
                    extra_weights=extra)


def sft_loss(model, batch: Batch, masked, p, *, mask_id: int, normaliser: str, t_mean: float | None = None,
             extra_weights=None) -> ObjectiveOutput:
    """The masked-diffusion loss for a given mask (B, L) and per-document rate p (num_docs,); extra_weights
    (K,) multiply the masked tokens' terms (CART)."""
    noisy = with_masks(batch, masked, mask_id)
    logits = masked_forward(model, noisy, batch, masked)
    if not bool(masked.any()):
        return ObjectiveOutput(zero_loss(logits), denom_without_masks(batch, normaliser), {"masked_frac": 0.0})
    weights = 1.0 / p[batch.seg[masked]]
    if extra_weights is not None:
        weights = weights * extra_weights
    loss_sum, denom, ce = weighted_loss(logits, batch.input_ids[masked], weights, batch, masked, normaliser)
    return ObjectiveOutput(loss_sum, denom, loss_metrics(ce, masked, batch.loss_mask, t_mean))


def classical_loss(model, batch: Batch, masked, *, mask_id: int, t_mean: float | None = None) -> ObjectiveOutput:
    """Each document's mean CE over its masked tokens, no 1 / p; the loop divides the sum by num_docs."""
    noisy = with_masks(batch, masked, mask_id)
    logits = masked_forward(model, noisy, batch, masked)
    if not bool(masked.any()):
        return ObjectiveOutput(zero_loss(logits), float(batch.num_docs), {"masked_frac": 0.0})
    ce = token_ce(logits, batch.input_ids[masked])
    doc_loss = per_doc_mean(ce, batch.seg[masked], batch.num_docs)
    return ObjectiveOutput(doc_loss.sum(), float(batch.num_docs), loss_metrics(ce, masked, batch.answer, t_mean))


def dream_loss(model, batch: Batch, masked, *, mask_id: int, cart_p: float, t_mean: float | None = None) -> ObjectiveOutput:
    """Dream's recipe: sum over masked tokens of CART weight x CE, over the batch's response-token count."""
    noisy = with_masks(batch, masked, mask_id)
    logits = masked_forward(model, noisy, batch, masked)
    denom = float(batch.loss_mask.sum())
    if not bool(masked.any()):
        return ObjectiveOutput(zero_loss(logits), denom, {"masked_frac": 0.0})
    ce = token_ce(logits, batch.input_ids[masked])
    weights = cart_weights(batch, masked, cart_p, hidden_context=True)[masked]
    return ObjectiveOutput((ce * weights).sum(), denom, loss_metrics(ce, masked, batch.loss_mask, t_mean))


def denom_without_masks(batch: Batch, normaliser: str) -> float:
    return {"answer_length": float(batch.num_docs), "response": float(batch.loss_mask.sum()), "masked": 0.0}[normaliser]
