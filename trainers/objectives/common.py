"""Pieces every objective shares: noise drawn per document, logits of selected tokens, the output."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from dlmarch.masks import pack_selected

from ..data import Batch

EPS = 1e-3  # p = (1 - eps) t + eps: LLaDA's floor on the masking rate


class ObjectiveOutput(NamedTuple):
    """loss_sum: the un-normalised loss of this micro-batch (a graph to backpropagate).
    denom:    its share of the normaliser; the loop divides the step's summed loss (and gradients)
              by the step's summed denominators, over micro-batches and ranks, so that any
              normaliser is exact under accumulation and data parallelism.
    metrics:  floats to log (means over this micro-batch; the loop averages them over the step).
    """

    loss_sum: Tensor
    denom: float
    metrics: dict


def doc_uniform(batch: Batch, generator: torch.Generator, n: int = 1) -> Tensor:
    """Uniform draws per token, (n, B, L), indexed by (document, position in document).

    The same documents give the same draws whatever the layout (padded or packed, row order), so
    packed and padded batches see the same masks.
    """
    N = batch.num_docs
    L = int(batch.positions[batch.seg >= 0].max()) + 1  # the longest document, not the padded row
    u = torch.rand(n, N, L, generator=generator, device=batch.input_ids.device)
    seg = batch.seg.clamp(min=0)  # filler and padding read some draw; they are never noised
    return u[:, seg, batch.positions.clamp(max=L - 1)]


def doc_times(batch: Batch, generator: torch.Generator) -> Tensor:
    """t ~ U(0, 1) per document, (num_docs,)."""
    return torch.rand(batch.num_docs, generator=generator, device=batch.input_ids.device)


def per_doc(values: Tensor, seg: Tensor, num_docs: int) -> Tensor:
    """Sum of per-token values (K,) over their documents seg (K,) -> (num_docs,)."""
    return torch.zeros(num_docs, dtype=values.dtype, device=values.device).index_add_(0, seg, values)


def predicts_next_token(model) -> bool:
    """True for a masked-diffusion model with a shifted head (Dream): `logits[:, i]` is the
    distribution of token i+1, not token i. Read from the model protocol (`kind`, `shifted_logits`),
    looking through DDP's `module` (PEFT forwards attribute reads to the model it wraps)."""
    model = getattr(model, "module", model)
    return getattr(model, "kind", None) == "masked-diffusion" and bool(getattr(model, "shifted_logits", False))


def scoring_positions(positions: Tensor) -> Tensor:
    """For a shifted head: the position whose logits score each token, (B, L) -> (B, L).

    Token i is scored by logits[:, i - 1], and the first token of each document (position 0 inside
    it, which is also the first of a packed document) by its own logits, as Dream's generate does
    (`cat([logits[:, :1], logits[:, :-1]])`, Dream-org's generation_utils.py; dllm's Dream eval).
    LIFT (divelab/LIFT SFT/sft_trainer.py) puts zero logits there instead; both only matter for a
    supervised first token, which a prompt never leaves to the loss.
    """
    idx = torch.arange(positions.shape[1], device=positions.device).expand_as(positions)
    return torch.where(positions > 0, idx - 1, idx)


def masked_forward(model, noisy: Tensor, batch: Batch, select: Tensor) -> Tensor:
    """Logits (K, V) scoring the selected tokens (B, L) of the noisy batch, in row-major order (the LM
    head runs on those only). Every objective reads token logits here, so the shift of a next-token
    head (Dream) is handled in this one place: each token is scored by the logits of the position
    before it (see scoring_positions)."""
    if not predicts_next_token(model):
        return model(noisy, logits_at=select, **batch.model_inputs()).logits
    order, real = pack_selected(select)  # (B, K): each row's selected positions, in order
    at = scoring_positions(batch.positions).gather(1, order)
    return model(noisy, logits_at=at, **batch.model_inputs()).logits[real]  # (B, K, V) -> (K, V)


def with_masks(batch: Batch, where: Tensor, mask_id: int) -> Tensor:
    """The batch's tokens with the mask id at `where` (B, L): the noisy input of every objective."""
    return torch.where(where, torch.full_like(batch.input_ids, mask_id), batch.input_ids)


def per_doc_mean(values: Tensor, seg: Tensor, num_docs: int) -> Tensor:
    """Mean of per-token values (K,) over each document seg (K,) (counts clamped to 1; an empty document
    gives 0, as the references' clamped counts). (num_docs,)"""
    return per_doc(values, seg, num_docs) / per_doc(torch.ones_like(values), seg, num_docs).clamp(min=1)


def loss_metrics(ce: Tensor, masked: Tensor, of: Tensor, t_mean: float | None = None) -> dict:
    """The metrics every objective logs: masked_frac (masked tokens over the tokens `of` (B, L) they were
    drawn from), the mean CE of the scored tokens, their number, and the mean t when there is one."""
    out = {"masked_frac": float(masked.sum() / of.sum().clamp(min=1)), "ce": float(ce.detach().mean()),
           "supervised_tokens": float(masked.sum())}
    if t_mean is not None:
        out["t"] = t_mean
    return out


def token_ce(logits: Tensor, targets: Tensor) -> Tensor:
    """Per-token cross-entropy in fp32, (K,)."""
    return F.cross_entropy(logits.float(), targets, reduction="none")


def zero_loss(logits: Tensor) -> Tensor:
    """A zero that stays connected to the graph (every rank must backpropagate through the model)."""
    return logits.float().sum() * 0.0
