"""LLaDA2.0's block-diffusion sampler: `LLaDA2MoeModelLM.generate` of the Hub's remote code (as copied in
ZHZisZZ/dllm, `dllm/pipelines/llada2/models/modeling_llada2_moe.py`), keyword for keyword.

The canvas is the prompt followed by mask ids, rounded up to whole blocks of `block_length` counted
from position 0. Blocks are denoised in turn, from the one the prompt ends in; each step runs the
model on the canvas up to the end of the current block under the block-diffusion mask (a query sees
its own block and earlier ones: `dlmarch.models.llada2.block_diffusion_mask`), samples every
position of the block (temperature, top-k, top-p; greedy at temperature 0) and commits, among the
still-masked positions, every one whose probability is above `threshold` when there are at least
the step's quota of them, else the quota's most confident. Steps per block: min(steps, gen_length //
minimal_topk); quota: block_length split over them, the remainder to the first steps. A block ends
early when it has no mask left; no block follows one that holds `eos_id`; with `eos_early_stop` the
call returns as soon as a step commits an eos with nothing masked before it. The return value is
the generated tokens only (no prompt), cut after the first eos.

With batch size 1 and `kv_cache=False` (the defaults) this is the reference token for token: same
random draws (one `torch.multinomial` over the block's rows per step, from `generator` or torch's
global generator), same commits, same stops.

Options the reference does not have (documented differences):
- batch size > 1 (prompts of one length): rows share each forward and each step's draw (one
  multinomial over all rows' block positions, so row 0 of a batch does not draw what a batch of one
  would); each row commits and stops on its own (a finished row no longer changes). The result is
  (B, gen_length): each row cut after its first eos and filled with `eos_id` past it.
- `kv_cache=True`: the keys/values of finished blocks are computed once (a block's keys attend only to
  its own and earlier blocks, so they do not change once it is finished) and each step runs the
  current block alone against them. Exact in arithmetic; the matmuls see other shapes, so the
  logits differ from the uncached run in the last bits (tokens agree unless a choice is that close).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..models.llada2 import block_diffusion_mask
from .llada import get_num_transfer_tokens


def top_k_logits(logits: Tensor, k: int | None) -> Tensor:
    """Logits below the k-th largest of each row -> -inf (k None or <= 0: unchanged)."""
    if k is None or k <= 0:
        return logits
    kth = torch.topk(logits, k)[0][..., -1, None]
    return torch.where(logits < kth, torch.full_like(logits, float("-inf")), logits)


def top_p_logits(logits: Tensor, p: float | None) -> Tensor:
    """Nucleus filtering: drop the tokens after the smallest prefix (by probability, descending) whose
    mass exceeds p; the most likely token always stays (p None or >= 1: unchanged)."""
    if p is None or p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, descending=True)
    drop = torch.cumsum(F.softmax(sorted_logits, dim=-1), dim=-1) > p
    drop[..., 1:] = drop[..., :-1].clone()
    drop[..., 0] = False
    return logits.masked_fill(torch.zeros_like(drop).scatter(-1, order, drop), float("-inf"))


def sample_tokens(logits: Tensor, temperature: float, top_k: int | None, top_p: float | None,
                  generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """(token, its probability), each logits.shape[:-1]. Temperature 0: argmax of softmax, no draw."""
    shape, V = logits.shape[:-1], logits.shape[-1]
    logits = logits.reshape(-1, V)
    if temperature == 0.0:
        probs = F.softmax(logits, dim=-1)
        token = probs.argmax(dim=-1, keepdim=True)
    else:
        if temperature != 1.0:
            logits = logits / temperature
        probs = F.softmax(top_p_logits(top_k_logits(logits, top_k), top_p), dim=-1)
        token = torch.multinomial(probs, num_samples=1, generator=generator)
    return token.view(shape), probs.gather(-1, token).view(shape)


def _check(model, input_ids, block_length, steps, gen_length, minimal_topk, threshold, eos_id, mask_id, temperature):
    if getattr(model, "sampler", None) != "generate_llada2":
        raise ValueError(f"generate_llada2 samples LLaDA2 models; a {type(model).__name__} is sampled with "
                         f"dlmarch.{getattr(model, 'sampler', None) or 'generate'}")
    if not isinstance(input_ids, Tensor) or input_ids.dim() != 2 or input_ids.dtype not in (torch.int64, torch.int32):
        raise ValueError("input_ids must be an integer tensor of shape (batch, length)")
    if input_ids.shape[0] == 0 or input_ids.shape[1] == 0:
        raise ValueError(f"input_ids is empty: shape {tuple(input_ids.shape)}")
    for name, v in (("block_length", block_length), ("steps", steps), ("gen_length", gen_length),
                    ("minimal_topk", minimal_topk)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive integer, found {v!r}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, found {temperature}")
    if mask_id is None:
        raise ValueError("mask_id is not in the model config; pass mask_id= (LLaDA2.0's <|mask|> is 156895)")
    if bool((input_ids == mask_id).any()):
        r, p = (input_ids == mask_id).nonzero()[0].tolist()
        raise ValueError(f"input_ids contains the mask id {mask_id} (row {r}, position {p})")
    if not 0 <= threshold <= 1:
        raise ValueError(f"threshold must be in [0, 1], found {threshold}")


def _canvas(input_ids: Tensor, gen_length: int, block_length: int, mask_id: int, device) -> Tensor:
    """The prompt (B, P) followed by mask ids, rounded up to whole blocks counted from position 0."""
    B, P = input_ids.shape
    num_blocks = (P + gen_length + block_length - 1) // block_length
    x = torch.full((B, num_blocks * block_length), mask_id, dtype=torch.long, device=device)
    x[:, :P] = input_ids.to(device)
    return x


def _transfer(confidence: Tensor, active: Tensor, n: int, threshold: float) -> Tensor:
    """The reference's commit rule of a step, row by row: every position whose confidence (B, bl) is
    above threshold when there are at least n of them, else the n most confident of the active (B, bl)
    positions (all of them when fewer). Returns (B, bl) bool."""
    transfer = torch.zeros_like(active)
    for j in range(active.shape[0]):
        high = confidence[j] > threshold
        if int(high.sum()) >= n:
            transfer[j] = high
        else:
            idx = torch.topk(confidence[j], k=min(n, int(active[j].sum())))[1]
            transfer[j, idx] = True
    return transfer


@dataclass
class _Plan:
    """The settings of one generate_llada2 call, resolved: what each block and step reads."""

    model: object
    prompt_len: int
    block_length: int
    schedule: list[int]  # tokens to commit at each step of a block
    threshold: float
    sampling: tuple  # (temperature, top_k, top_p) of sample_tokens
    generator: torch.Generator | None
    eos_id: int
    mask_id: int
    eos_early_stop: bool
    kv_cache: bool


def _eos_early_stop(plan: _Plan, x: Tensor, x0: Tensor, transfer: Tensor, e: int, done: Tensor, early: list) -> None:
    """eos_early_stop: a row whose step committed an eos with nothing masked before it is done; its
    end (exclusive, in the canvas) goes to early[j]."""
    hit = ((x0 == plan.eos_id) & transfer).any(1)
    for j in hit.nonzero().flatten().tolist():
        eos = (x[j, :e] == plan.eos_id).nonzero()
        if eos.numel() and bool((x[j, plan.prompt_len:int(eos[0])] != plan.mask_id).all()):
            early[j], done[j] = int(eos[0]) + 1, True


def _decode_block(plan: _Plan, x: Tensor, s: int, e: int, cache, done: Tensor, early: list) -> int:
    """Denoise the block [s, e) of the canvas x (B, L) in place, for the rows not done. Returns the
    number of model calls. cache: the finished blocks' keys/values under kv_cache, else None."""
    B, device = x.shape[0], x.device
    window = block_diffusion_mask(e, plan.block_length, B, device)  # the canvas up to the block's end
    calls = 0
    for n in plan.schedule:
        active = (x[:, s:e] == plan.mask_id) & ~done[:, None]
        if not bool(active.any()):
            break
        if plan.kv_cache:
            logits = plan.model(x[:, s:e], mask=window.with_queries(s), past_kv=cache).logits
        else:
            logits = plan.model(x[:, :e], mask=window, logits_at=slice(s, e)).logits
        calls += 1
        x0, p = sample_tokens(logits.float(), *plan.sampling, plan.generator)
        confidence = torch.where(active, p, torch.tensor(-torch.inf, device=device))
        transfer = _transfer(confidence, active, n, plan.threshold)
        block = x[:, s:e]
        block[transfer] = x0[transfer]
        if plan.eos_early_stop:
            _eos_early_stop(plan, x, x0, transfer, e, done, early)
            if bool(done.all()):  # the reference returns here
                break
    return calls


def _generated(x: Tensor, P: int, gen_length: int, early: list, eos_id: int) -> Tensor:
    """The generated tokens of the canvas x (B, L): each row cut after its first eos (or where
    eos_early_stop ended it); a batch of one as is (1, n), a larger one (B, gen_length) filled with eos_id."""
    B = x.shape[0]
    rows = []
    for j in range(B):
        if early[j] is not None:
            rows.append(x[j, P:early[j]])
            continue
        gen = x[j, P:P + gen_length]
        eos = (gen == eos_id).nonzero()
        rows.append(gen[: int(eos[0]) + 1] if eos.numel() else gen)
    if B == 1:
        return rows[0][None]
    out = torch.full((B, gen_length), eos_id, dtype=torch.long, device=x.device)
    for j, r in enumerate(rows):
        out[j, : r.numel()] = r
    return out


@torch.no_grad()
def generate_llada2(
    model,
    input_ids: Tensor,
    temperature: float = 0.0,
    block_length: int = 32,
    steps: int = 32,
    gen_length: int = 2048,
    top_p: float | None = None,
    top_k: int | None = None,
    eos_early_stop: bool = False,
    minimal_topk: int = 1,
    threshold: float = 0.95,
    eos_id: int | None = None,
    mask_id: int | None = None,
    *,
    generator: torch.Generator | None = None,
    kv_cache: bool = False,
    stats: dict | None = None,
) -> Tensor:
    """Prompt ids (B, P) -> generated ids (B, n <= gen_length), the prompt not included.

    The keywords up to `mask_id` are the reference `model.generate`'s, with its defaults except
    `eos_id` and `mask_id`, which default to the model config's eos and mask ids (the reference's
    156892 / 156895 are LLaDA2.0's). See the module docstring for batches, `kv_cache`, `generator`.
    `stats`, if given, receives the number of model calls ('nfe').
    """
    cfg = model.config
    eos_id = cfg.eos_token_id if eos_id is None else eos_id
    mask_id = getattr(cfg, "mask_token_id", None) if mask_id is None else mask_id
    _check(model, input_ids, block_length, steps, gen_length, minimal_topk, threshold, eos_id, mask_id, temperature)
    device = model.device
    steps = min(steps, gen_length // minimal_topk)
    B, P = input_ids.shape
    x = _canvas(input_ids, gen_length, block_length, mask_id, device)
    # block_length split over the steps, the remainder to the first ones (LLaDA's schedule)
    schedule = get_num_transfer_tokens(torch.ones(1, block_length, dtype=torch.bool), steps)[0].tolist() if steps else []
    plan = _Plan(model, P, block_length, schedule, threshold, (temperature, top_k, top_p), generator, eos_id, mask_id,
                 eos_early_stop, kv_cache)
    done = torch.zeros(B, dtype=torch.bool, device=device)
    early = [None] * B  # rows returned by eos_early_stop: their end (exclusive) in the canvas
    calls, cache, cached = 0, None, 0
    for b in range(P // block_length, x.shape[1] // block_length):
        s, e = b * block_length, (b + 1) * block_length
        if kv_cache and cached < s:  # the finished blocks' keys/values, once
            out = model(x[:, cached:s], mask=block_diffusion_mask(s, block_length, B, device).with_queries(cached),
                        past_kv=cache, return_kv=True, compute_logits=False)
            cache, cached = out.kv, s
            calls += 1
        calls += _decode_block(plan, x, s, e, cache, done, early)
        if bool(done.all()):
            break
        done |= (x[:, P:e] == eos_id).any(1)
        if bool(done.all()):
            break
    if stats is not None:
        stats["nfe"] = calls
    return _generated(x, P, gen_length, early, eos_id)


__all__ = ["generate_llada2", "sample_tokens", "top_k_logits", "top_p_logits"]
