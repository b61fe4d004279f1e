"""GIFT: entropy-guided per-token masking rates (arXiv 2509.20863, first titled WeFT; re-implemented
in divelab/LIFT `SFT/sft_trainer.py`, gift_loss).

1. Probe, without gradient: the whole response masked; at each content token (the answer through
   its first EOS) H_i = entropy of the predicted distribution, beta_i = sqrt(H_i).
2. beta_ref = mean of beta_i over the micro-batch's content tokens (clamped away from 0).
3. t ~ U(0, 1) per document (with LLaDA's eps); t_i = 1 - (1 - t)^(beta_i / beta_ref): beta_i =
   beta_ref gives t_i = t, uncertain tokens are masked more often.
4. Mask token i with probability t_i; loss = sum over masked i of CE_i / t_i, divided by the
   normaliser (default: the number of masked tokens, as the re-implementation does). 1 / t_i is
   taken only where masked (t_i can underflow to 0 elsewhere). If nothing got masked, the plain
   mask (rate t) is used instead, weighted by its own 1 / t (the re-implementation keeps the
   entropy rates' weights there, which can be arbitrarily large).

Content: the response's tokens that are not the pad id (`pad_id`, the tokenizer's pad token; EOS
for LLaDA), as the re-implementation's `response_mask = ~(prompt_mask | input_ids.eq(pad_token_id))`,
which also drops the answer's own EOS when pad = EOS. beta and beta_ref are read over content only,
so EOS padding, on which a fine-tuned LLaDA is confident (beta ~ 0), never lowers beta_ref and never
sets a content token's rate. Pad-id tokens of the response (trailing padding, the answer's EOS):
- `eos_pad="exclude"` (the re-implementation's rule, configs/gift-llada-8b.yaml): never masked, in
  the probe or the loss, and out of the loss;
- `eos_pad="train"` (LLaDA's layout, on purpose): masked at the document's plain rate t, weighted by
  1 / t, and masked in the probe, so the model still learns to fill the canvas with EOS.

The probe runs in the model's current mode under torch.no_grad(), as the re-implementation's does:
in training, LoRA dropout is active in the probe too.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..data import Batch
from .common import EPS, ObjectiveOutput, doc_times, doc_uniform, loss_metrics, masked_forward, with_masks, zero_loss
from .protocol import Objective
from .sft import denom_without_masks, weighted_loss

BETA_FLOOR = 1e-12


def entropy_from_logits(logits: Tensor) -> Tensor:
    """Entropy (nats) of softmax(logits) along the last dim, in fp32; never negative."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return (-(logp.exp() * logp).sum(-1)).clamp_min(0)


def token_rates(t_doc: Tensor, beta: Tensor, beta_ref: Tensor) -> Tensor:
    """t_i = 1 - (1 - t)^(beta_i / beta_ref), for per-token t (K,) and beta (K,)."""
    return 1 - (1 - t_doc).pow(beta / beta_ref)


def gift_regions(batch: Batch, pad_id: int | None, train_padding: bool) -> tuple[Tensor, Tensor]:
    """(content, pad-like) (B, L): content = the answer's tokens other than the pad id; pad-like = the
    response's other tokens (trained padding, pad-id tokens of the answer) when they are trained
    (`train_padding`), else nothing."""
    content = batch.answer if pad_id is None else batch.answer & (batch.input_ids != pad_id)
    padding = batch.loss_mask & ~content
    return content, padding if train_padding else torch.zeros_like(padding)


@torch.no_grad()  # (not inference_mode: FSDP2's all-gathered parameters must stay ordinary tensors)
def probe_betas(model, batch: Batch, mask_id: int, pad_id: int | None = None, train_padding: bool = True) -> Tensor:
    """beta_i = sqrt(entropy) at every content token, (K,) in row-major order of the content; the
    content and the trained pad-like tokens are masked, as at t = 1."""
    content, padding = gift_regions(batch, pad_id, train_padding)
    all_masked = with_masks(batch, content | padding, mask_id)
    logits = masked_forward(model, all_masked, batch, content)
    return entropy_from_logits(logits).sqrt()


def run_probe(model, batch: Batch, mask_id: int, pad_id: int | None = None, train_padding: bool = True) -> Tensor:
    """The probe in the model's current mode (the reference's no_grad pass, dropout as in training)."""
    return probe_betas(model, batch, mask_id, pad_id, train_padding)


def gift(model, batch: Batch, generator: torch.Generator, *, mask_id: int, normaliser: str = "masked",
         betas: Tensor | None = None, pad_id: int | None = None, train_padding: bool = True) -> ObjectiveOutput:
    """`betas` (K,) at the content tokens, if given, replace the probe (GIFTObjective's amortised probe).
    pad_id: tokens of the response equal to it are not content (None: every answer token is);
    train_padding: whether the response's other tokens are trained (eos_pad "train")."""
    beta = run_probe(model, batch, mask_id, pad_id, train_padding) if betas is None else betas
    beta_ref = beta.mean().clamp_min(BETA_FLOOR)
    t = doc_times(batch, generator)
    p = (1 - EPS) * t + EPS
    u = doc_uniform(batch, generator, n=2)
    content, padding = gift_regions(batch, pad_id, train_padding)
    resp = content | padding
    rates = torch.zeros(batch.input_ids.shape, device=beta.device)
    rates[content] = token_rates(p[batch.seg[content]], beta, beta_ref)
    rates[padding] = p[batch.seg[padding]]  # trained EOS padding: the plain rate
    masked = resp & (u[0] < rates)
    fallback = not bool(masked.any())
    if fallback:  # masked-diffusion SFT's plain mask
        masked = resp & (u[1] < p[batch.seg.clamp(min=0)])
        rates = p[batch.seg.clamp(min=0)]
    noisy = with_masks(batch, masked, mask_id)
    logits = masked_forward(model, noisy, batch, masked)
    if not bool(masked.any()):
        return ObjectiveOutput(zero_loss(logits), denom_without_masks(batch, normaliser), {"masked_frac": 0.0})
    weights = 1.0 / rates[masked]
    loss_sum, denom, ce = weighted_loss(logits, batch.input_ids[masked], weights, batch, masked, normaliser)
    metrics = {**loss_metrics(ce, masked, resp, float(t.mean())), "beta_ref": float(beta_ref), "fallback": float(fallback)}
    return ObjectiveOutput(loss_sum, denom, metrics)


class GIFTObjective(Objective):
    """GIFT with an optional amortised probe (`probe_every`, an approximation; 1 = GIFT exactly).

    With probe_every = K > 1 each example's betas are probed at its visits in epochs 0, K, 2K, ...
    and reused, from a per-example cache, at its visits in between: the probe pass then costs 1/K
    of its price. The choice depends only on the epoch, the cache is merged across ranks after
    every step, and it is saved in checkpoints, so one and several processes, and a resumed run,
    behave alike. A micro-batch with any example missing from the cache (or whose cached betas do
    not match its content length) is probed whole.
    """

    def __init__(self, mask_id: int, normaliser: str = "masked", probe_every: int = 1, pad_id: int | None = None,
                 train_padding: bool = True):
        if probe_every < 1:
            raise ValueError(f"probe_every must be >= 1, found {probe_every}")
        self.mask_id, self.normaliser, self.every = mask_id, normaliser, probe_every
        self.pad_id, self.train_padding = pad_id, train_padding
        self.cache: dict[int, Tensor] = {}
        self.fresh: dict[int, Tensor] = {}
        self.probes = self.calls = 0

    def betas(self, model, batch: Batch) -> Tensor:
        keys = batch.example_ids.tolist()
        content, _ = gift_regions(batch, self.pad_id, self.train_padding)
        counts = torch.bincount(batch.seg[content], minlength=batch.num_docs).tolist()
        cached = batch.epoch % self.every != 0 and all(
            k in self.cache and self.cache[k].numel() == n for k, n in zip(keys, counts))
        self.calls += 1
        if cached:
            return torch.cat([self.cache[k] for k in keys]).to(batch.input_ids.device)
        self.probes += 1
        beta = run_probe(model, batch, self.mask_id, self.pad_id, self.train_padding)
        if self.every > 1:
            for k, b in zip(keys, beta.detach().float().cpu().split(counts)):
                self.cache[k] = self.fresh[k] = b.clone()
        return beta

    def __call__(self, model, batch: Batch, generator: torch.Generator) -> ObjectiveOutput:
        out = gift(model, batch, generator, mask_id=self.mask_id, normaliser=self.normaliser,
                   betas=self.betas(model, batch), pad_id=self.pad_id, train_padding=self.train_padding)
        out.metrics["probed"] = self.probes / max(self.calls, 1)
        return out

    def sync(self) -> None:
        """Share the entries probed since the last call with every rank."""
        import torch.distributed as dist

        if self.every > 1 and dist.is_available() and dist.is_initialized():
            gathered = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, self.fresh)
            for part in gathered:
                self.cache.update(part)
        self.fresh = {}

    def state_dict(self) -> dict[str, Tensor]:
        return {str(k): v for k, v in self.cache.items()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        self.cache = {int(k): v for k, v in state.items()}
