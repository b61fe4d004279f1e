"""LIFT: learnability-informed masking (arXiv 2605.22939, divelab/LIFT method lift3).

Per document: t ~ U(0, 1) and rho ~ U(0.1, 1 - t) (U(0, 1 - t) when 1 - t <= 0.1); t then gets card
2's eps. The response is masked with rate t + rho (a superset), and k = round(#masked * t / (t + rho)).
Which k of the superset stay masked depends on t (LIFT-3, thresholds 1/H and 1 - 1/H, H = 3):
  t > 1 - 1/H: the k most confident (easy tokens are learned late, with little context);
  t < 1/H:     the k least confident (hard tokens are learned with much context);
  otherwise:   a random k-subset (plain SFT).
LIFT-2: the k most confident if t > 0.5, else the k least confident. Confidence is log p(gold) from
a forward without gradient on the superset view; the other superset positions are refilled with
the ground truth; the loss is the sum over the kept tokens of CE / t, divided by all response
positions of the batch.

Which t picks the component (`component_from`):
  "batch" (default, the reference): one component for the whole micro-batch, from the mean of its
           documents' t (after eps), as the reference's `mixture_sft_loss` with `--loss_selection
           time` does: argmax of (3 t (1 - t), t, 1 - t) for (random, top, bottom), i.e. the
           thresholds above with H = mix_vanilla_coef = 3 (LIFT-2: argmax of (t, 1 - t)). With two
           documents per micro-batch the mixture is 0.56 / 0.22 / 0.22 (random / top / bottom);
           it depends on the micro-batch size.
  "document": each document's own t picks its component; the mixture is 1/3 each whatever the
           batch size (identical to "batch" with one document per micro-batch).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..data import Batch
from .common import (EPS, ObjectiveOutput, doc_times, doc_uniform, loss_metrics, masked_forward, per_doc, token_ce,
                     with_masks, zero_loss)

TOP, BOTTOM, RANDOM = 0, 1, 2
COMPONENT_NAMES = {TOP: "top", BOTTOM: "bottom", RANDOM: "random"}


def sample_rho(t: Tensor, r: Tensor) -> Tensor:
    """rho ~ U(0.1, 1 - t), or U(0, 1 - t) when 1 - t <= 0.1, from uniforms r."""
    upper = 1 - t
    lower = torch.where(upper <= 0.1, torch.zeros_like(upper), torch.full_like(upper, 0.1))
    return lower + (upper - lower) * r


COMPONENT_FROM = ("batch", "document")


def components(t: Tensor, variant: str = "lift3", h: float = 3.0) -> Tensor:
    """The component of each t (ties go where the reference's argmax sends them: LIFT-3's to random,
    LIFT-2's t = 0.5 to top)."""
    if variant == "lift2":
        return torch.where(t >= 0.5, TOP, BOTTOM)
    if variant != "lift3":
        raise ValueError(f"unknown LIFT variant {variant!r} (lift3, lift2)")
    comp = torch.full_like(t, RANDOM, dtype=torch.long)
    comp = torch.where(t > 1 - 1 / h, TOP, comp)
    return torch.where(t < 1 / h, BOTTOM, comp)


def keep_counts(n_superset: Tensor, t: Tensor, rho: Tensor, comp: Tensor) -> Tensor:
    """k = round(#masked * t / (t + rho)) (the fraction clamped to [1e-3, 1]); at least 1 for the
    random component when anything is masked, as the reference does; never more than #masked."""
    frac = (t / (t + rho).clamp(min=1e-3)).clamp(1e-3, 1.0)
    k = (n_superset.float() * frac).round().long()
    k = torch.where((comp == RANDOM) & (n_superset > 0), k.clamp(min=1), k)
    return torch.minimum(k, n_superset.long())


def rank_within_docs(select: Tensor, seg: Tensor, scores: Tensor, k: Tensor, num_docs: int) -> Tensor:
    """Of the selected tokens (B, L), keep the k[d] highest-scoring of each document d."""
    idx = select.nonzero(as_tuple=True)
    doc, score = seg[idx], scores[idx]
    by_score = torch.argsort(score, descending=True, stable=True)
    order = by_score[torch.argsort(doc[by_score], stable=True)]
    doc_sorted = doc[order]
    counts = torch.bincount(doc_sorted, minlength=num_docs)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(doc_sorted.numel(), device=doc.device) - starts[doc_sorted]
    kept = torch.zeros_like(doc, dtype=torch.bool)
    kept[order] = rank < k[doc_sorted]
    out = torch.zeros_like(select)
    out[idx] = kept
    return out


def doc_components(t: Tensor, variant: str = "lift3", h: float = 3.0, component_from: str = "batch") -> Tensor:
    """The component of every document (num_docs,): from the micro-batch's mean t, or from its own t."""
    if component_from == "batch":
        return components(t.mean(), variant, h).expand(t.shape)
    if component_from == "document":
        return components(t, variant, h)
    raise ValueError(f"component_from must be one of {COMPONENT_FROM}, found {component_from!r}")


def lift_keep(superset: Tensor, seg: Tensor, num_docs: int, t: Tensor, rho: Tensor, confidence: Tensor | None,
              random_scores: Tensor, variant: str = "lift3", h: float = 3.0,
              component_from: str = "batch") -> tuple[Tensor, Tensor, Tensor]:
    """Which superset positions stay masked. confidence: log p(gold) (B, L) (may be None when every
    document is RANDOM). Returns (keep (B, L), component per document, k per document)."""
    comp = doc_components(t, variant, h, component_from)
    n_sup = per_doc(superset.flatten().long(), seg.flatten().clamp(min=0), num_docs)
    k = keep_counts(n_sup, t, rho, comp)
    c = comp[seg.clamp(min=0)]
    if confidence is None:
        if bool((comp != RANDOM).any()):
            raise ValueError("top/bottom components need the confidences")
        confidence = torch.zeros_like(random_scores)
    scores = torch.where(c == TOP, confidence, torch.where(c == BOTTOM, -confidence, random_scores))
    return rank_within_docs(superset, seg.clamp(min=0), scores, k, num_docs), comp, k


@torch.no_grad()  # (not inference_mode: FSDP2's all-gathered parameters must stay ordinary tensors)
def gold_confidence(model, batch: Batch, superset: Tensor, mask_id: int) -> Tensor:
    """log p(gold) at the superset positions of the superset view, (B, L) (0 elsewhere)."""
    noisy = with_masks(batch, superset, mask_id)
    logits = masked_forward(model, noisy, batch, superset)
    conf = torch.zeros(superset.shape, device=logits.device)
    conf[superset] = torch.log_softmax(logits.float(), -1).gather(-1, batch.input_ids[superset][:, None]).squeeze(-1)
    return conf


def lift(model, batch: Batch, generator: torch.Generator, *, mask_id: int, variant: str = "lift3", h: float = 3.0,
         component_from: str = "batch") -> ObjectiveOutput:
    t_raw = doc_times(batch, generator)
    rho = sample_rho(t_raw, doc_times(batch, generator))
    t = (1 - EPS) * t_raw + EPS
    u = doc_uniform(batch, generator, n=2)
    seg = batch.seg.clamp(min=0)
    superset = batch.loss_mask & (u[0] < (t + rho)[seg])
    comp = doc_components(t, variant, h, component_from)
    confidence = None
    if bool((comp != RANDOM).any()):
        if bool(superset.any()):
            # In the model's own mode, as the reference's torch.no_grad() pass (LoRA dropout active in training).
            confidence = gold_confidence(model, batch, superset, mask_id)
        else:  # nothing to rank
            confidence = torch.zeros(superset.shape, device=superset.device)
    keep, comp, k = lift_keep(superset, batch.seg, batch.num_docs, t, rho, confidence, u[1], variant, h, component_from)
    noisy = with_masks(batch, keep, mask_id)
    logits = masked_forward(model, noisy, batch, keep)
    denom = float(batch.loss_mask.sum())
    if not bool(keep.any()):
        return ObjectiveOutput(zero_loss(logits), denom, {"masked_frac": 0.0})
    ce = token_ce(logits, batch.input_ids[keep])
    loss_sum = (ce / t[batch.seg[keep]]).sum()
    metrics = {**loss_metrics(ce, keep, batch.loss_mask, float(t.mean())), "rho": float(rho.mean())}
    for c, name in COMPONENT_NAMES.items():
        metrics[f"frac_{name}"] = float((comp == c).float().mean())
    return ObjectiveOutput(loss_sum, denom, metrics)
