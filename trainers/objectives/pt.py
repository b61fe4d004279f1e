"""Masked-diffusion pretraining (LLaDA, Nie et al. 2025, sec. 2.2 and appendix B.1; ML-GSAI/LLaDA
GUIDELINES.md "Pre-training"), the objective of `python -m trainers.pt`.

Each row is a fixed-length chunk of the concatenated token stream (trainers/pt.py). Per row
t ~ U(0, 1), p = (1 - eps) t + eps, every token is masked with probability p, and the loss is the
sum over masked tokens of CE / p divided by the number of tokens in the batch (B x L): the
guideline's `token_loss.sum() / (input_ids.shape[0] * input_ids.shape[1])`.

Variable length: "we set 1% of the pre-training data to a random length that is uniformly sampled
from the range [1, 4096]" (sec. B.1); the guideline does it per batch, `if torch.rand(1) < 0.01:
input_ids = input_ids[:, :random_length]` with random_length ~ U{1..L}. So do we, per micro-batch,
with the micro-batch's generator (reproducible, and the same on 1 or N processes).

A next-token head (Dream) is read shifted in `masked_forward`, as in every objective.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from ..data import Batch
from .common import EPS, ObjectiveOutput, doc_times, doc_uniform
from .sft import sft_loss

RANDOM_LENGTH_FRACTION = 0.01  # LLaDA sec. B.1


def cut(batch: Batch, length: int) -> Batch:
    """The first `length` tokens of every row (each row is one chunk, so documents stay whole rows)."""
    if length >= batch.input_ids.shape[1]:
        return batch
    def head(t):
        return None if t is None else t[:, :length]
    return replace(batch, input_ids=head(batch.input_ids), loss_mask=head(batch.loss_mask), seg=head(batch.seg),
                   positions=head(batch.positions), doc_ids=head(batch.doc_ids),
                   attention_mask=head(batch.attention_mask), answer_mask=head(batch.answer_mask),
                   data_tokens=int(batch.loss_mask[:, :length].sum()))


def pretrain(model, batch: Batch, generator: torch.Generator, *, mask_id: int,
             random_length_fraction: float = RANDOM_LENGTH_FRACTION) -> ObjectiveOutput:
    L = batch.input_ids.shape[1]
    draw = torch.rand(1, generator=generator, device=batch.input_ids.device)
    length = int(torch.randint(1, L + 1, (1,), generator=generator, device=batch.input_ids.device))
    short = bool(draw < random_length_fraction)
    if short:
        batch = cut(batch, length)
    t = doc_times(batch, generator)
    p = (1 - EPS) * t + EPS
    u = doc_uniform(batch, generator)[0]
    masked = batch.loss_mask & (u < p[batch.seg.clamp(min=0)])
    out = sft_loss(model, batch, masked, p, mask_id=mask_id, normaliser="response", t_mean=float(t.mean()))
    out.metrics["seq_len"] = float(batch.input_ids.shape[1])
    return out
