"""Autoregressive SFT: next-token cross-entropy on the response tokens (+ the trained EOS).

The plain fine-tuning of a causal LM (and L2D's baseline, Cetin et al. 2025, "Large Language Models
to Diffusion Finetuning"): position i predicts token i + 1, scored where token i + 1 is a response
token of the same document; the loss is the mean over those tokens (the sum, with their count as the
loop's denominator). The LM head runs on the scored positions only.
"""

from __future__ import annotations

import torch

from ..data import Batch
from .common import ObjectiveOutput, token_ce, zero_loss
from .l2d import l2d_queries


def ar(model, batch: Batch, generator: torch.Generator | None = None) -> ObjectiveOutput:
    """Next-token CE; `generator` is unused (no noise), kept for the objective signature."""
    queries = l2d_queries(batch)  # (B, L): positions whose next token is in the loss
    targets = batch.input_ids[:, 1:][queries[:, :-1]]  # (K,)
    logits = model(batch.input_ids, logits_at=queries, **batch.model_inputs()).logits  # (K, V)
    if targets.numel() == 0:
        return ObjectiveOutput(zero_loss(logits), 0.0, {})
    ce = token_ce(logits, targets)
    return ObjectiveOutput(ce.sum(), float(targets.numel()), {"ce": float(ce.detach().mean())})
