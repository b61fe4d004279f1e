"""LLaDA's semi-autoregressive sampler (ML-GSAI/LLaDA generate.py), exactly, plus opt-in faster variants.

Reference mode (every option off) reproduces ML-GSAI/LLaDA `generate.py` token for token: the
canvas is prompt + gen_length mask ids, decoded block by block; each block gets steps / num_blocks
steps; each step scores the canvas, takes x0 = argmax of (Gumbel-perturbed, float64) logits,
scores each masked position of the current block by softmax(logits)[x0] ('low_confidence') or a
uniform draw ('random'), and commits the top-k, k following `num_transfer_tokens`. Nothing is
re-masked. Random draws are taken with the reference's shapes, so that with the same generator
state the same tokens come out at temperature > 0 too. With more steps than masks a block is full
before its steps run out; the reference keeps stepping (k = 0) and so keeps drawing. We skip those
model calls but still make their draws, so the random stream of later blocks stays the reference's.
At temperature > 0 the committed token can be the mask id itself; the reference then counts that
position as masked in every later step and block (it only rules out positions after the current
block), and so do we.

Differences from the reference, on purpose:
- classifier-free guidance works without an attention mask (the reference crashes);
- `logits_eos_inf` uses the model's EOS id instead of LLaDA-8B's hard-coded 126081;
- `confidence_eos_eot_inf` sets the logits of both EOS and EoT to -inf before the confidence
  softmax, at every temperature. (The reference's line only reaches EoT, except at temperature 0
  where its `logits_with_noise` aliases `logits` and both are hit; at temperature 0 we agree.)
- logits are computed only for the current block's positions, and any earlier position still
  holding the mask id (the reference computes them for the whole canvas and then discards the rest);
  the values at those positions are the same.

Faster variants (opt-in; approximations where noted):
- `kv_cache=True` or "prefix" (Fast-dLLM's prefix cache, `generate_with_prefix_cache`): at the
  start of each block one full forward fills the keys/values of every position before the block;
  the block's remaining steps run only the block and what follows it against that cache. APPROXIMATION: LLaDA attends bidirectionally, so
  the true prefix keys/values change as the block is decoded; the cache keeps them as they were at
  the start of the block (refreshed at the next block).
- `kv_cache="dual"` (Fast-dLLM's dual cache, NVlabs/Fast-dLLM `llada/generate.py`
  `generate_with_dual_cache`): the block-start forward also keeps the keys/values of every position
  after the block (the suffix, still mask tokens for the most part); the block's remaining steps run
  the block alone (block_length tokens) against prefix + suffix. Same APPROXIMATION as the prefix
  cache, now for the suffix too. Fast-dLLM writes the block's new keys into the cache at the block's
  positions; here the block's keys are appended after the cached ones (keys carry their RoPE
  position, and bidirectional attention does not depend on key order), which is the same attention.
- `threshold=τ` (confidence-threshold parallel decoding): each step commits every masked position
  of the block whose confidence is at least τ, and at least the most confident one; the block ends
  when it is full, so `steps` no longer fixes the number of steps. APPROXIMATION of the schedule.
- `block_causal=True`: the sampler of models trained with `--all-blocks` (Blockwise SFT's one-pass
  mode): the future is cut off instead of masked; the current block attends to itself and to the
  clean prompt and earlier blocks, which attend block-causally among themselves. With
  `kv_cache=True` their keys/values are computed once per block and cached; that cache is exact
  (a finished block's keys never change), so cached and uncached runs agree. This is a different
  model family's decoder, not an approximation of reference mode.

Early stop (`stop_at_eos=True`, off by default): after each block, if every row has an EOS or EoT
among its generated tokens so far, the remaining blocks are not decoded and their positions are set
to the EOS id. Everything up to and including each row's first EOS/EoT is what the full run gives
(it lies in a finished block, and later blocks never change earlier ones); what follows differs
(the full run's later blocks, typically more EOS padding in LLaDA's instruct models).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..masks import AttentionMask

REMASKING = ("low_confidence", "random")
KV_CACHES = (False, True, "prefix", "dual")


def add_gumbel_noise(logits: Tensor, temperature: float, generator: torch.Generator | None = None, noise: Tensor | None = None) -> Tensor:
    """The reference's Gumbel-max perturbation in float64: exp(l) / (-log u)^T. T = 0: logits as is."""
    if temperature == 0:
        return logits
    logits = logits.to(torch.float64)
    if noise is None:
        noise = torch.rand(logits.shape, dtype=torch.float64, device=logits.device, generator=generator)
    return logits.exp() / (-torch.log(noise)) ** temperature


def get_num_transfer_tokens(mask_index: Tensor, steps: int) -> Tensor:
    """Masks of a block split evenly over its steps, the remainder to the first steps. (B, steps)."""
    mask_num = mask_index.sum(dim=1, keepdim=True)
    base, remainder = mask_num // steps, mask_num % steps
    out = base.expand(-1, steps).clone()
    out += torch.arange(steps, device=mask_index.device)[None] < remainder
    return out.to(torch.int64)


def check_arguments(prompt: Tensor, attention_mask, steps: int, gen_length: int, block_length: int, remasking: str,
                    mask_id: int, threshold, temperature: float, cfg_scale: float, kv_cache=False) -> int:
    """ValueError naming the argument that cannot work. Returns the number of blocks."""
    if not isinstance(prompt, Tensor) or prompt.dim() != 2 or prompt.dtype not in (torch.int64, torch.int32):
        raise ValueError("prompt must be an integer tensor of shape (batch, length)")
    if prompt.shape[0] == 0 or prompt.shape[1] == 0:
        raise ValueError(f"prompt is empty: shape {tuple(prompt.shape)}")
    if gen_length <= 0 or block_length <= 0 or steps <= 0:
        raise ValueError(f"steps, gen_length and block_length must be positive (got {steps}, {gen_length}, {block_length})")
    if gen_length % block_length:
        raise ValueError(f"gen_length ({gen_length}) is not a multiple of block_length ({block_length})")
    num_blocks = gen_length // block_length
    if threshold is None and steps % num_blocks:
        raise ValueError(f"steps ({steps}) is not divisible by the number of blocks ({num_blocks} = gen_length / block_length)")
    if remasking not in REMASKING:
        raise ValueError(f"remasking must be one of {REMASKING}, found {remasking!r}")
    if threshold is not None and not 0 < threshold <= 1:
        raise ValueError(f"threshold must be in (0, 1], found {threshold}")
    if not isinstance(kv_cache, bool) and kv_cache not in KV_CACHES:
        raise ValueError(f"kv_cache must be one of {KV_CACHES}, found {kv_cache!r}")
    if temperature < 0 or cfg_scale < 0:
        raise ValueError(f"temperature and cfg_scale must be >= 0 (got {temperature}, {cfg_scale})")
    hits = (prompt == mask_id).nonzero()
    if hits.numel():
        r, p = hits[0].tolist()
        raise ValueError(f"prompt contains the mask token id {mask_id} (row {r}, position {p})")
    if attention_mask is not None and tuple(attention_mask.shape) != tuple(prompt.shape):
        raise ValueError(f"attention_mask must have the prompt's shape {tuple(prompt.shape)}, found {tuple(attention_mask.shape)}")
    return num_blocks


class _Scorer:
    """Runs the model on (part of) the canvas, with classifier-free guidance when asked for.

    With guidance the batch is doubled: the conditional canvas and an unconditional copy whose
    prompt positions are masked; logits = u + (cfg + 1)(c - u).
    """

    def __init__(self, model, prompt_index: Tensor, attention_mask: Tensor | None, cfg_scale: float, mask_id: int,
                 eos_ids: list[int], logits_eos_inf: bool):
        self.model, self.prompt_index, self.cfg, self.mask_id = model, prompt_index, cfg_scale, mask_id
        self.eos_ids, self.logits_eos_inf = eos_ids, logits_eos_inf
        if attention_mask is not None and cfg_scale > 0:
            attention_mask = torch.cat([attention_mask, attention_mask])
        self.attention_mask = attention_mask
        self.calls = 0

    def canvas(self, x: Tensor) -> Tensor:
        if self.cfg <= 0:
            return x
        un_x = x.clone()
        un_x[self.prompt_index[:, : x.shape[1]]] = self.mask_id
        return torch.cat([x, un_x])

    def __call__(self, x: Tensor, start: int, stop: int, past_kv=None, return_kv: bool = False, kv_len: int | None = None,
                 block_causal: tuple[int, int] | None = None, dual: bool = False):
        """Logits (B, stop - start, V) of canvas positions [start, stop).

        Without a cache the model runs on x[:, :kv_len] (default: all of x); with `past_kv` (the
        keys/values of positions [0, start)) it runs on x[:, start:kv_len] only; with `dual`,
        `past_kv` holds positions [0, start) then [stop, kv_len) and the model runs on
        x[:, start:stop] only, at its own positions. `block_causal`
        = (prompt length, block length): positions before `start` are clean, [start, stop) is the
        noisy block, under the block-causal rule (the uncached form of the block-causal sampler).
        """
        self.calls += 1
        kv_len = x.shape[1] if kv_len is None else kv_len
        x_in = self.canvas(x[:, :kv_len])
        am = None if self.attention_mask is None else self.attention_mask[:, :kv_len]
        if block_causal is not None:
            mask = block_causal_mask(x_in.shape[0], kv_len, start, *block_causal, x.device, am)
            out = self.model(x_in, mask=mask, logits_at=slice(start, stop))
        elif past_kv is None:
            out = self.model(x_in, attention_mask=am, logits_at=slice(start, stop), return_kv=return_kv)
        elif dual:  # keys in cache order: prefix, suffix, then the block's own
            am = None if am is None else torch.cat([am[:, :start], am[:, stop:], am[:, start:stop]], 1)
            pos = torch.arange(start, stop, device=x.device).expand(x_in.shape[0], -1)
            out = self.model(x_in[:, start:stop], attention_mask=am, past_kv=past_kv, position_ids=pos)
        else:
            out = self.model(x_in[:, start:], attention_mask=am, past_kv=past_kv, logits_at=slice(0, stop - start),
                             return_kv=return_kv)
        logits = out.logits
        if self.cfg > 0:
            cond, uncond = logits.chunk(2)
            logits = uncond + (self.cfg + 1) * (cond - uncond)
        if self.logits_eos_inf:
            logits[..., self.eos_ids[:1]] = -torch.inf
        return logits, out.kv


def block_causal_mask(rows: int, length: int, noisy_start: int, prompt_len: int, block_length: int, device,
                      attention_mask: Tensor | None = None) -> AttentionMask:
    """The block-causal mask of a canvas whose positions before `noisy_start` are clean: the prompt
    is block 0, generated block k is block k + 1; the noisy block sees itself and earlier clean
    blocks, clean blocks see clean blocks up to their own."""
    pos = torch.arange(length, device=device)
    block = torch.where(pos < prompt_len, 0, (pos - prompt_len) // block_length + 1)
    clean = pos < noisy_start
    valid = None if attention_mask is None else attention_mask.bool()
    return AttentionMask.self_attention("block_causal", pos.expand(rows, -1), block_ids=block.expand(rows, -1),
                                        clean=clean.expand(rows, -1), valid=valid)


def _reference_draws(B: int, L: int, V: int, temperature: float, remasking: str, generator, device) -> None:
    """The random numbers one reference step draws, thrown away: Gumbel noise over the whole canvas's
    logits (B, L, V) at temperature > 0, then a (B, L) uniform draw for 'random' remasking."""
    if temperature > 0:
        torch.rand((B, L, V), dtype=torch.float64, device=device, generator=generator)
    if remasking == "random":
        torch.rand((B, L), device=device, generator=generator)


def _proposal(logits: Tensor, temperature: float, remasking: str, generator, eos_eot: list[int] | None,
              full_shape: tuple | None, block_start: int) -> tuple[Tensor, Tensor]:
    """Each position's candidate token x0 and its confidence, both (B, bl), from the logits (B, bl, V).

    x0 is the argmax of the Gumbel-perturbed logits; the confidence is softmax(logits)[x0]
    ('low_confidence') or a uniform draw ('random'). full_shape: see `_choose`.
    """
    B, bl, V = logits.shape
    gumbel = None
    if temperature > 0:
        if full_shape is not None:
            gumbel = torch.rand(full_shape, dtype=torch.float64, device=logits.device, generator=generator)
            gumbel = gumbel[:, block_start: block_start + bl]
        noisy = add_gumbel_noise(logits, temperature, generator, noise=gumbel)
    else:
        noisy = logits
    x0 = noisy.argmax(dim=-1)
    if remasking == "low_confidence":
        if eos_eot:
            logits = logits.clone()
            logits[..., eos_eot] = -torch.inf
        p = F.softmax(logits if full_shape is not None else logits.to(torch.float64), dim=-1)
        x0_p = p.gather(-1, x0[..., None]).squeeze(-1)
    else:
        if full_shape is not None:
            x0_p = torch.rand(full_shape[:2], device=logits.device, generator=generator)[:, block_start: block_start + bl]
        else:
            x0_p = torch.rand((B, bl), device=logits.device, generator=generator)
    return x0, x0_p


def _top_k_transfer(confidence: Tensor, k: Tensor) -> Tensor:
    """The k[j] most confident positions of each row j: (B, bl) bool, from confidence (B, bl) and k (B,)."""
    transfer = torch.zeros_like(confidence, dtype=torch.bool)
    for j in range(confidence.shape[0]):
        kj = int(k[j])
        if kj == 0:
            continue
        _, idx = torch.topk(confidence[j], k=kj)
        transfer[j, idx] = True
    return transfer


def threshold_transfer(confidence: Tensor, candidates: Tensor, threshold: float) -> Tensor:
    """Confidence-threshold parallel decoding (NVlabs/Fast-dLLM `get_transfer_index` with a threshold):
    in each row, every candidate whose confidence is at least `threshold`, and at least the most
    confident one. confidence (B, L), -inf off the candidates; candidates (B, L) bool. Returns the
    positions to commit, (B, L) bool. LLaDA's and Dream's block decoding both select with it.
    """
    transfer = torch.zeros_like(candidates)
    for j in range(candidates.shape[0]):
        n = int(candidates[j].sum())
        if n == 0:
            continue
        conf, idx = torch.topk(confidence[j], k=n)
        keep = conf >= threshold
        keep[0] = True  # at least the most confident position
        transfer[j, idx[keep]] = True
    return transfer


def _choose(logits: Tensor, x_block: Tensor, mask_block: Tensor, k: Tensor | None, threshold: float | None,
            temperature: float, remasking: str, generator, eos_eot: list[int] | None,
            full_shape: tuple | None, block_start: int) -> Tensor:
    """Commit tokens into x_block (B, bl) in place. Returns the number committed per row.

    full_shape: in reference mode, the (B, L, V) shape the reference draws its random numbers with,
    so that the same generator state gives the same tokens; the block's slice of the draw is used.
    Confidences: reference mode takes the softmax in the logits' dtype, as ML-GSAI/LLaDA generate.py
    does; every other mode (cache, threshold, block-causal) in float64, as Fast-dLLM's
    get_transfer_index does (`F.softmax(logits.to(torch.float64))`): on a bf16 model the bf16 softmax
    rounds confidences across a threshold and ties the top-k.
    """
    x0, x0_p = _proposal(logits, temperature, remasking, generator, eos_eot, full_shape, block_start)
    confidence = torch.where(mask_block, x0_p, torch.tensor(-torch.inf, dtype=x0_p.dtype, device=x0_p.device))
    if threshold is None:
        transfer = _top_k_transfer(confidence, k)
    else:
        transfer = threshold_transfer(confidence, mask_block, threshold)
    x_block[transfer] = x0[transfer]
    return transfer.sum(dim=1)


def block_cache(kv: list, s: int, e: int, dual: bool) -> list:
    """The keys/values (per layer (B, H, T, D)) that the later steps of the block [s, e) attend to:
    those of the positions before it (prefix cache), or of every position outside it (dual cache)."""
    if dual:
        return [(torch.cat([k[:, :, :s], k[:, :, e:]], 2), torch.cat([v[:, :, :s], v[:, :, e:]], 2)) for k, v in kv]
    return [(k[:, :, :s], v[:, :, :s]) for k, v in kv]


def _resolve(model, prompt: Tensor, attention_mask, steps: int, gen_length: int, block_length: int, remasking: str,
             mask_id: int | None, threshold, temperature: float, cfg_scale: float, kv_cache, block_causal: bool,
             needs_eos: bool) -> tuple[int, int, list[int]]:
    """generate()'s arguments checked against the model: (mask id, number of blocks, EOS and EoT ids).
    needs_eos: an option that reads the EOS id is on."""
    cfg = model.config
    if not hasattr(cfg, "mask_token_id") and mask_id is None:
        raise TypeError(f"generate() decodes masked-diffusion models; for {type(model).__name__} use dlmarch.generate_l2d "
                        "(L2D) or a causal sampler")
    if getattr(model, "shifted_logits", False):  # (Dream) its logits at i predict token i+1; this sampler reads them in place
        raise ValueError(f"generate() is LLaDA's sampler; a {type(model).__name__} (shifted head) is sampled with "
                         f"dlmarch.{model.sampler or 'generate_dream'}")
    if getattr(model, "sampler", "generate") not in ("generate", None):  # (LLaDA2) a sampler of its own
        raise ValueError(f"generate() is LLaDA's sampler; a {type(model).__name__} is sampled with dlmarch.{model.sampler}")
    mask_id = cfg.mask_token_id if mask_id is None else mask_id
    num_blocks = check_arguments(prompt, attention_mask, steps, gen_length, block_length, remasking, mask_id,
                                 threshold, temperature, cfg_scale, kv_cache)
    if block_causal and kv_cache == "dual":
        raise ValueError("kv_cache='dual' caches the positions after the block, which block_causal cuts off; "
                         "use kv_cache=True")
    eos_ids = [i for i in (cfg.eos_token_id, getattr(cfg, "eot_token_id", None)) if i is not None]
    if needs_eos and not eos_ids:
        raise ValueError("logits_eos_inf / confidence_eos_eot_inf / stop_at_eos need eos_token_id in the model config")
    return mask_id, num_blocks, eos_ids


def _canvas(prompt: Tensor, attention_mask: Tensor | None, gen_length: int, mask_id: int, device) -> tuple[Tensor, Tensor | None]:
    """The prompt (B, P) followed by gen_length mask ids, (B, P + gen_length) on device, and the
    attention mask extended over them with ones."""
    prompt = prompt.to(device)
    B, P = prompt.shape
    x = torch.full((B, P + gen_length), mask_id, dtype=torch.long, device=device)
    x[:, :P] = prompt
    if attention_mask is not None:
        attention_mask = torch.cat([attention_mask.to(device), torch.ones(B, gen_length, dtype=attention_mask.dtype, device=device)], 1)
    return x, attention_mask


@dataclass
class _Plan:
    """The settings of one generate() call, resolved: what each block and step reads."""

    score: _Scorer
    prompt_len: int
    block_length: int
    steps_per_block: int
    mask_id: int
    threshold: float | None
    temperature: float
    remasking: str
    generator: torch.Generator | None
    eos_eot: list[int] | None  # the ids whose confidence is -inf (confidence_eos_eot_inf), else None
    kv_cache: bool | str
    block_causal: bool
    vocab_size: int

    def __post_init__(self):
        self.dual = self.kv_cache == "dual"
        self.reference_mode = not (self.kv_cache or self.threshold is not None or self.block_causal)


def _reference_window(x: Tensor, P: int, s: int, mask_id: int) -> int:
    """Where a reference-mode step's window starts: s, or the first generated position before it
    that still holds the mask id.

    A committed token can be the mask id itself (argmax of the noisy logits); the reference then
    treats it as masked, and as a candidate in every later block (it only rules out positions after
    the current block). Such leftovers widen the window to [w, e).
    """
    left = (x[:, P:s] == mask_id).any(0).nonzero()
    return P + int(left[0]) if left.numel() else s


def _step_logits(plan: _Plan, x: Tensor, s: int, e: int, w: int, i: int, past, prefix_kv) -> tuple[Tensor, list | None]:
    """Step i of the block [s, e): the logits of the window [w, e) (w = s outside reference mode), run
    the way the mode asks, and the block's cache (filled at its first step under kv_cache)."""
    score = plan.score
    if plan.block_causal and plan.kv_cache:
        return score(x, s, e, past_kv=prefix_kv, kv_len=e)[0], past
    if plan.block_causal:
        return score(x, s, e, kv_len=e, block_causal=(plan.prompt_len, plan.block_length))[0], past
    if plan.kv_cache and i > 0:
        return score(x, s, e, past_kv=past, dual=plan.dual)[0], past
    if plan.kv_cache:
        logits, kv = score(x, s, e, return_kv=True)
        return logits, block_cache(kv, s, e, plan.dual)
    return score(x, w, e)[0], past


def _decode_block(x: Tensor, s: int, e: int, prefix_kv, plan: _Plan) -> None:
    """Decode the block [s, e) of the canvas x (B, L) in place, step by step."""
    threshold, mask_id = plan.threshold, plan.mask_id
    k_schedule = get_num_transfer_tokens(x[:, s:e] == mask_id, plan.steps_per_block) if threshold is None else None
    max_steps = plan.steps_per_block if threshold is None else plan.block_length
    B, L = x.shape
    past = None
    for i in range(max_steps):
        w = _reference_window(x, plan.prompt_len, s, mask_id) if plan.reference_mode else s
        window = x[:, w:e]  # a view: committing into it writes the canvas
        mask_block = window == mask_id
        if not bool(mask_block.any()):
            if not plan.reference_mode:
                break
            # The reference still runs its step here (k = 0, nothing committed) and draws: the
            # model call can be skipped, the draws cannot.
            _reference_draws(B, L, plan.vocab_size, plan.temperature, plan.remasking, plan.generator, x.device)
            continue
        logits, past = _step_logits(plan, x, s, e, w, i, past, prefix_kv)
        full_shape = (B, L, plan.vocab_size) if plan.reference_mode else None
        k = None if k_schedule is None else k_schedule[:, i]
        _choose(logits, window, mask_block, k, threshold, plan.temperature, plan.remasking, plan.generator,
                plan.eos_eot, full_shape, w)


@torch.no_grad()
def generate(
    model,
    prompt: Tensor,
    attention_mask: Tensor | None = None,
    steps: int = 128,
    gen_length: int = 128,
    block_length: int = 128,
    temperature: float = 0.0,
    cfg_scale: float = 0.0,
    remasking: str = "low_confidence",
    mask_id: int | None = None,
    logits_eos_inf: bool = False,
    confidence_eos_eot_inf: bool = False,
    *,
    generator: torch.Generator | None = None,
    kv_cache: bool = False,
    threshold: float | None = None,
    block_causal: bool = False,
    stop_at_eos: bool = False,
    progress: bool = False,
    stats: dict | None = None,
) -> Tensor:
    """Prompt (B, P) [+ left-padding attention_mask (B, P)] -> prompt + generated ids (B, P + gen_length).

    The positional and keyword arguments up to `confidence_eos_eot_inf` are the reference's, with
    the same defaults except `mask_id`, which defaults to the model config's mask token. See the
    module docstring for `kv_cache` (False, True = "prefix", or "dual"), `threshold`, `block_causal`
    and `stop_at_eos`. `generator` drives every
    random draw (Gumbel noise, 'random' remasking); None uses torch's global generator, as the
    reference does. `stats`, if given, receives the number of model calls ('nfe').
    """
    mask_id, num_blocks, eos_ids = _resolve(model, prompt, attention_mask, steps, gen_length, block_length, remasking,
                                            mask_id, threshold, temperature, cfg_scale, kv_cache, block_causal,
                                            logits_eos_inf or confidence_eos_eot_inf or stop_at_eos)
    x, attention_mask = _canvas(prompt, attention_mask, gen_length, mask_id, model.device)
    P = prompt.shape[1]
    score = _Scorer(model, x != mask_id, attention_mask, cfg_scale, mask_id, eos_ids, logits_eos_inf)
    plan = _Plan(score, P, block_length, steps // num_blocks, mask_id, threshold, temperature, remasking, generator,
                 eos_ids if confidence_eos_eot_inf else None, kv_cache, block_causal, model.config.vocab_size)
    blocks = range(num_blocks)
    if progress:
        from tqdm.auto import tqdm

        blocks = tqdm(blocks, desc="blocks", unit="block", leave=False)

    prefix_kv = None
    if block_causal and kv_cache:  # the prompt is clean block 0: its keys/values once, attending to itself
        _, prefix_kv = score(x, P - 1, P, return_kv=True, kv_len=P)
    for b in blocks:
        s, e = P + b * block_length, P + (b + 1) * block_length
        _decode_block(x, s, e, prefix_kv, plan)
        if stop_at_eos and b + 1 < num_blocks and bool(torch.isin(x[:, P:e], torch.tensor(eos_ids, device=x.device)).any(1).all()):
            x[:, e:] = model.config.eos_token_id
            break
        if block_causal and kv_cache and b + 1 < num_blocks:  # the finished block joins the clean cache
            _, prefix_kv = score(x, s, e, past_kv=prefix_kv, return_kv=True, kv_len=e)
    if stats is not None:
        stats["nfe"] = score.calls
    return x


__all__ = ["generate", "get_num_transfer_tokens", "add_gumbel_noise", "threshold_transfer", "block_cache"]
