"""L2D's loss (arXiv 2501.15781): plain cross-entropy on response tokens (+ EOS) with t ~ U(0, 1) per token.

The diffusion token at position i carries token i + 1, so the queries are the positions whose next
token is a response token of the same document; the diffusion path runs there only (not on context
positions whose loss would be ignored), and the main path runs under torch.no_grad.
"""

from __future__ import annotations

import torch

from ..data import Batch
from .common import ObjectiveOutput, token_ce, zero_loss


def l2d_queries(batch: Batch) -> torch.Tensor:
    """(B, L) True at positions whose next token is in the loss (same document)."""
    q = torch.zeros_like(batch.loss_mask)
    q[:, :-1] = batch.loss_mask[:, 1:] & (batch.seg[:, :-1] == batch.seg[:, 1:])
    return q


def l2d(model, batch: Batch, generator: torch.Generator, *, use_classes: bool = False) -> ObjectiveOutput:
    queries = l2d_queries(batch)
    targets = batch.input_ids[:, 1:][queries[:, :-1]]
    K = targets.numel()
    core = getattr(model, "module", model)  # DDP
    t = core.training_times((K,), generator, device=targets.device)
    x_t = core.noisy_targets(targets, t, generator)
    labels = None
    if use_classes and core.config.num_classes:
        labels = batch.labels.to(targets.device)[batch.seg[queries]]
        labels = torch.where(labels < 0, torch.full_like(labels, core.config.num_classes), labels)
        drop = torch.rand(K, generator=generator, device=labels.device) < core.config.class_dropout
        labels = torch.where(drop, torch.full_like(labels, core.config.num_classes), labels)  # guidance's null class
    logits = model(batch.input_ids, batch.attention_mask, x_t=x_t, t=t, queries=queries, doc_ids=batch.doc_ids,
                   position_ids=batch.positions, class_labels=labels).logits
    if K == 0:
        return ObjectiveOutput(zero_loss(logits), 0.0, {})
    ce = token_ce(logits, targets)
    return ObjectiveOutput(ce.sum(), float(K), {"ce": float(ce.detach().mean()), "t": float(t.mean())})
