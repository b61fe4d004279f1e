"""Dream's sampler: `diffusion_generate` of the Dream remote code (generation_utils.py of
Dream-org/Dream-v0-Instruct-7B, vendored in ZHZisZZ/dllm under dllm/pipelines/dream/models/), token for
token under the same torch random state.

The canvas is the prompt followed by `max_new_tokens` mask ids; every position holding the mask id is
generated (mask ids inside the prompt too: infilling), pad tokens are left alone. Timesteps
t = linspace(1, eps, steps + 1). At step i the whole canvas is scored, the logits are shifted right by
one (Dream's head predicts the next token, so position j is scored with logits[:, j - 1], position 0
with logits[:, 0]) and each masked position, in row-major order, gets a token and a confidence
(`sample_tokens`). Then:

- `origin`: each masked position is revealed with probability 1 - t[i+1] / t[i] (1 at the last
  step), one uniform draw per masked position of the whole batch; tokens are drawn for the revealed
  positions only.
- `maskgit_plus` (probability of the drawn token), `topk_margin` (top-1 minus top-2 probability),
  `entropy` (negative entropy): every row reveals n = int(M / B * (1 - t[i+1] / t[i])) positions
  (int(M / B) at the last step; M masked positions in the batch, B rows) with the highest confidence,
  or, with alg_temp > 0, n positions drawn without replacement from softmax(confidence / alg_temp).

Random draws (torch.rand, torch.multinomial) are taken with the reference's shapes and in its order,
from `generator` (default: torch's global generator, as the reference). Differences, on purpose:
- when a row holds fewer masked positions than n (rows of a batch with different numbers of masks),
  the reference's top-k also picks unmasked slots and writes the mask id into them (prompt or pad
  tokens become masks); here only masked slots are written. Where no row runs short the two agree.
- nothing is computed for a step with no masked position left (the reference runs the model and
  draws nothing; the output is the same).

Block decoding, caches and confidence thresholds (opt-in: `block_length`, `kv_cache`, `threshold`), as
NVlabs/Fast-dLLM decodes Dream (`dream/model/generation_utils_block.py`, `_sample`): the new tokens are
decoded in blocks of `block_length`, each with steps / num_blocks steps. Each block starts with one full
forward that commits the block's first token (its argmax or draw) and, with a cache, stores keys/values:
- kv_cache="prefix": of the positions before the block; later steps run the block and everything after it;
- kv_cache="dual": of every position outside the block; later steps run the block alone. (Fast-dLLM
  writes the block's new keys into the cache at its positions; here they are appended after the cached
  ones, which is the same attention, keys carrying their RoPE positions.)
- kv_cache=None: every step runs the whole canvas (no approximation beyond the schedule).
Both caches are APPROXIMATIONS (a bidirectional model's keys change as the block is decoded). Later
steps of a block:
- threshold=None: Fast-dLLM's schedule, with "entropy" confidences whatever `alg` (its
  `neg_entropy=True`): n = int(M / B * (1 - s / t)) over the block's masked positions (all at the
  block's last step), t, s from linspace(1, eps, steps_per_block + 1), starting at its second timestep;
- threshold=τ: the probability of the token as confidence; every masked position of the block at or
  above τ, and at least the most confident one, is committed, until the block is full (Fast-dLLM's
  `alg='confidence_threshold'`, written there for one row; here each row on its own).
Fast-dLLM shifts the logits of the window it runs (`cat([l[:, :1], l[:, :-1]])`), so the block's first
position reads its own logits: that position is committed at the block's start and never read again, so
the shift is the full canvas's. Off by default: without these arguments the reference mode above runs,
token for token.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .llada import block_cache, threshold_transfer

ALGORITHMS = ("origin", "maskgit_plus", "topk_margin", "entropy")


def top_p_filter(logits: Tensor, top_p: float) -> Tensor:
    """Nucleus filter (N, V): a token is dropped when the tokens ranked before it already hold more
    than top_p of the probability; the most likely token is always kept. Dropped -> dtype's lowest."""
    sorted_logits, order = torch.sort(logits, descending=True)
    cumulative = torch.cumsum(F.softmax(sorted_logits, dim=-1), dim=-1)
    drop_sorted = torch.zeros_like(cumulative, dtype=torch.bool)
    drop_sorted[..., 1:] = cumulative[..., :-1] > top_p
    drop = torch.zeros_like(logits, dtype=torch.bool).scatter_(-1, order, drop_sorted)
    return logits.masked_fill(drop, torch.finfo(logits.dtype).min)


def top_k_filter(logits: Tensor, top_k: int) -> Tensor:
    """Keep the logits >= the k-th largest of each row (N, V); the rest -> dtype's lowest."""
    kth = torch.topk(logits, min(top_k, logits.shape[-1])).values[..., -1:]
    return logits.masked_fill(logits < kth, torch.finfo(logits.dtype).min)


def sample_tokens(logits: Tensor, temperature: float, top_p: float | None, top_k: int | None, alg: str,
                  generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Tokens and confidences (N,) of masked positions' logits (N, V), as the reference's `sample_tokens`.

    The filters apply at temperature 0 too (they change the confidences). temperature > 0 draws one
    token per row with torch.multinomial (what torch.distributions.Categorical.sample does);
    temperature 0 takes the argmax. Confidence: the token's probability, or per `alg` the top-1
    minus top-2 margin ('topk_margin') or sum p log(p + 1e-10) ('entropy').
    """
    if temperature > 0:
        logits = logits / temperature
    if top_p is not None and top_p < 1:
        logits = top_p_filter(logits, top_p)
    if top_k is not None:
        logits = top_k_filter(logits, top_k)
    probs = torch.softmax(logits, dim=-1)
    if temperature > 0:
        x0 = torch.multinomial(probs / probs.sum(-1, keepdim=True), 1, replacement=True, generator=generator)[:, 0]
        confidence = probs.gather(-1, x0[:, None])[:, 0]
    else:
        confidence, x0 = probs.max(dim=-1)
    if alg == "topk_margin":
        top2 = torch.sort(probs, dim=-1, descending=True).values[:, :2]
        confidence = top2[:, 0] - top2[:, 1]
    elif alg == "entropy":
        confidence = torch.sum(probs * torch.log(probs + 1e-10), dim=-1)
    return confidence, x0


def check_arguments(model, input_ids, attention_mask, max_new_tokens, steps, temperature, top_p, top_k, alg,
                    alg_temp, eps) -> int:
    """ValueError naming the argument that cannot work. Returns the mask id."""
    mask_id = getattr(model.config, "mask_token_id", None)
    if mask_id is None:
        raise ValueError(f"a {model.config.family} model has no mask_token_id; generate_dream needs a Dream model")
    if not isinstance(input_ids, Tensor) or input_ids.dim() != 2 or input_ids.dtype not in (torch.int64, torch.int32):
        raise ValueError("input_ids must be an integer tensor of shape (batch, length)")
    if input_ids.shape[0] == 0 or input_ids.shape[1] == 0:
        raise ValueError(f"input_ids is empty: shape {tuple(input_ids.shape)}")
    if attention_mask is not None and tuple(attention_mask.shape) != tuple(input_ids.shape):
        raise ValueError(f"attention_mask must have the shape of input_ids {tuple(input_ids.shape)}, "
                         f"found {tuple(attention_mask.shape)}")
    if max_new_tokens < 0 or steps <= 0:
        raise ValueError(f"max_new_tokens must be >= 0 and steps > 0 (got {max_new_tokens}, {steps})")
    if alg not in ALGORITHMS:
        raise ValueError(f"alg must be one of {ALGORITHMS}, found {alg!r}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, found {temperature}")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], found {top_p}")
    if top_k is not None and top_k <= 0:
        raise ValueError(f"top_k must be positive, found {top_k}")
    if alg_temp is not None and alg_temp < 0:
        raise ValueError(f"alg_temp must be >= 0, found {alg_temp}")
    if not 0 < eps < 1:
        raise ValueError(f"eps must be in (0, 1), found {eps}")
    return int(mask_id)


def _reveal_count(masked: Tensor, t: Tensor, s: Tensor, last: bool) -> int:
    """Positions each row reveals at the step from time t to s: int(M / B * (1 - s / t)), int(M / B) at
    the last step, M masked positions (masked: (B, W) bool) in the batch."""
    per_row = masked.sum() / masked.shape[0]  # float32 tensor, as the reference computes it
    return int(per_row) if last else int(per_row * (1 - s / t))


def _reveal_top_n(canvas: Tensor, masked: Tensor, confidence: Tensor, x0: Tensor, n: int, alg_temp: float | None,
                  mask_id: int, rows: Tensor, generator, dtype: torch.dtype) -> None:
    """Write the proposals x0 (M,) of n positions per row into canvas (B, W), in place: the n highest
    confidences (M,) of its masked (B, W) positions, or with alg_temp > 0 n positions drawn without
    replacement from softmax(confidence / alg_temp). Only masked slots are written (module docstring).
    rows: arange(B)[:, None]; dtype: the logits' (the confidences' scale)."""
    full = torch.full(canvas.shape, -torch.inf, dtype=dtype, device=canvas.device)
    full[masked] = confidence
    if alg_temp is None or alg_temp == 0:
        chosen = torch.topk(full, n).indices
    else:
        chosen = torch.multinomial(F.softmax(full / alg_temp, dim=-1), n, generator=generator)
    proposal = torch.full_like(canvas, mask_id)
    proposal[masked] = x0
    write = masked[rows, chosen]
    r = rows.expand_as(chosen)[write]
    canvas[r, chosen[write]] = proposal[r, chosen[write]]


@torch.no_grad()
def generate_dream(
    model,
    input_ids: Tensor,
    attention_mask: Tensor | None = None,
    *,
    max_new_tokens: int = 20,
    steps: int = 512,
    temperature: float = 1.0,
    top_p: float | None = None,
    top_k: int | None = 50,
    alg: str = "origin",
    alg_temp: float | None = None,
    eps: float = 1e-3,
    generator: torch.Generator | None = None,
    block_length: int | None = None,
    kv_cache: str | None = None,
    threshold: float | None = None,
) -> Tensor:
    """input_ids (B, P) (left-padded, 1/0 `attention_mask`) -> (B, P + max_new_tokens), prompt included.

    Defaults are what the reference's `diffusion_generate(input_ids)` resolves when an argument is left
    out (it starts from the model config, where transformers' generation defaults apply: temperature
    1.0, top_k 50, no top-p; max_length 20 + P; steps 512; alg 'origin'; eps 1e-3) — not the 0.0 /
    None / None of DreamGenerationConfig. Pass every argument to get what Dream's examples use
    (e.g. temperature=0.2, top_p=0.95, alg='entropy', alg_temp=0.0, steps=max_new_tokens).
    `block_length`, `kv_cache` (None, "prefix", "dual") and `threshold`: Fast-dLLM's block decoding (module
    docstring); any of them switches it on (block_length then defaults to 32, Fast-dLLM's).
    """
    mask_id = check_arguments(model, input_ids, attention_mask, max_new_tokens, steps, temperature, top_p, top_k,
                              alg, alg_temp, eps)
    device = model.device
    x = F.pad(input_ids.to(device, torch.long), (0, max_new_tokens), value=mask_id)
    if attention_mask is not None:
        # The appended positions are tokens to generate, not padding.
        attention_mask = F.pad(attention_mask.to(device, torch.long), (0, max_new_tokens), value=1)
    if block_length is not None or kv_cache is not None or threshold is not None:
        return _generate_blocks(model, x, attention_mask, input_ids.shape[1], max_new_tokens, steps,
                                32 if block_length is None else block_length, kv_cache, threshold, temperature,
                                top_p, top_k, alg_temp, eps, mask_id, generator)
    B = x.shape[0]
    rows = torch.arange(B, device=device)[:, None]
    timesteps = torch.linspace(1, eps, steps + 1, device=device)
    for i in range(steps):
        masked = x == mask_id
        n_masked = int(masked.sum())
        if n_masked == 0:
            continue
        logits = model(x, attention_mask).logits
        logits = torch.cat([logits[:, :1], logits[:, :-1]], dim=1)  # position j scored by logits[:, j - 1]
        mask_logits = logits[masked]  # (M, V), row-major (batch, position) order
        t, s = timesteps[i], timesteps[i + 1]
        last = i == steps - 1
        if alg == "origin":
            p_transfer = 1 if last else 1 - s / t
            x0 = torch.full((n_masked,), mask_id, dtype=torch.long, device=device)
            reveal = torch.rand(n_masked, device=device, generator=generator) < p_transfer
            if bool(reveal.any()):
                _, x0[reveal] = sample_tokens(mask_logits[reveal], temperature, top_p, top_k, alg, generator)
            x[masked] = x0
            continue
        confidence, x0 = sample_tokens(mask_logits, temperature, top_p, top_k, alg, generator)
        n = _reveal_count(masked, t, s, last)
        if n <= 0:
            continue
        _reveal_top_n(x, masked, confidence, x0, n, alg_temp, mask_id, rows, generator, logits.dtype)
    return x


KV_CACHES = (None, "prefix", "dual")


def dream_positions(attention_mask: Tensor | None, B: int, L: int, device) -> Tensor:
    """Dream's RoPE positions (B, L): cumsum(mask) - 1, 1 on padded slots (Fast-dLLM's tok_idx); arange
    without padding."""
    if attention_mask is None or bool(attention_mask.all()):
        return torch.arange(L, device=device).expand(B, L)
    pos = attention_mask.long().cumsum(-1) - 1
    return pos.masked_fill(attention_mask == 0, 1)


def _shift(logits: Tensor) -> Tensor:
    return torch.cat([logits[:, :1], logits[:, :-1]], dim=1)


def _check_blocks(gen_length: int, steps: int, block_length: int, kv_cache, threshold) -> int:
    """ValueError naming the block-decoding argument that cannot work. Returns the steps per block."""
    if kv_cache not in KV_CACHES:
        raise ValueError(f"kv_cache must be one of {KV_CACHES}, found {kv_cache!r}")
    if threshold is not None and not 0 < threshold <= 1:
        raise ValueError(f"threshold must be in (0, 1], found {threshold}")
    if block_length <= 0 or gen_length % block_length:
        raise ValueError(f"max_new_tokens ({gen_length}) must be a positive multiple of block_length ({block_length})")
    num_blocks = gen_length // block_length
    if steps % num_blocks:
        raise ValueError(f"steps ({steps}) must be divisible by the number of blocks ({num_blocks})")
    return steps // num_blocks


@dataclass
class _BlockDecoder:
    """Fast-dLLM's block decoding of Dream (module docstring): one call's settings, and its steps."""

    model: object
    am: Tensor | None  # (B, L), 1 = token
    pos: Tensor  # (B, L) RoPE positions
    kv_cache: str | None
    threshold: float | None
    block_length: int
    steps_per_block: int
    timesteps: Tensor  # linspace(1, eps, steps_per_block + 1)
    alg_temp: float | None
    mask_id: int
    sampling: tuple  # (temperature, top_p, top_k) of sample_tokens
    generator: torch.Generator | None
    rows: Tensor  # arange(B)[:, None]

    def sample(self, logits: Tensor, alg: str) -> tuple[Tensor, Tensor]:
        return sample_tokens(logits, *self.sampling, alg, self.generator)

    def start(self, x: Tensor, s: int, e: int) -> list | None:
        """The block's first forward, over the whole canvas: commits the block's first position (its
        argmax or draw) and returns the keys/values its later steps attend to (None without a cache)."""
        B, L = x.shape
        out = self.model(x, attention_mask=self.am, position_ids=self.pos, return_kv=self.kv_cache is not None)
        logits = _shift(out.logits)
        _, x0 = self.sample(logits.reshape(-1, logits.shape[-1]), "maskgit_plus")
        x[:, s] = x0.view(B, L)[:, s]
        return None if self.kv_cache is None else block_cache(out.kv, s, e, self.kv_cache == "dual")

    def window_logits(self, x: Tensor, s: int, e: int, past) -> Tensor:
        """A later step's logits (B, stop - s, V) of the window [s, stop) (stop = e under the dual cache,
        else the canvas's end), shifted within the window as Fast-dLLM."""
        am, pos = self.am, self.pos
        if self.kv_cache == "prefix":
            logits = self.model(x[:, s:], attention_mask=am, past_kv=past, position_ids=pos[:, s:]).logits
        elif self.kv_cache == "dual":
            dual_am = None if am is None else torch.cat([am[:, :s], am[:, e:], am[:, s:e]], 1)
            logits = self.model(x[:, s:e], attention_mask=dual_am, past_kv=past, position_ids=pos[:, s:e]).logits
        else:
            logits = self.model(x, attention_mask=am, position_ids=pos).logits[:, s:]
        return _shift(logits)

    def scheduled_step(self, window: Tensor, logits: Tensor, masked: Tensor, i: int) -> None:
        """Step i of the block without a threshold: "entropy" confidences, the block's schedule."""
        t, t_next = self.timesteps[i], self.timesteps[i + 1]
        confidence, x0 = self.sample(logits[masked], "entropy")
        n = _reveal_count(masked, t, t_next, last=i >= self.steps_per_block - 1)
        if n > 0:
            _reveal_top_n(window, masked, confidence, x0, n, self.alg_temp, self.mask_id, self.rows, self.generator,
                          logits.dtype)

    def threshold_step(self, window: Tensor, logits: Tensor, masked: Tensor, in_block: Tensor) -> None:
        """A step under the threshold. Fast-dLLM draws tokens for every masked position of the window,
        then commits the block's (`threshold_transfer`)."""
        confidence, x0 = self.sample(logits[masked], "maskgit_plus")
        full = torch.full(window.shape, -torch.inf, dtype=logits.dtype, device=window.device)
        full[masked] = confidence
        full[:, ~in_block] = -torch.inf
        proposal = torch.full_like(window, self.mask_id)
        proposal[masked] = x0
        transfer = threshold_transfer(full, masked & in_block, self.threshold)
        window.copy_(torch.where(transfer, proposal, window))  # a boolean-indexed write would wait on the device

    def decode(self, x: Tensor, s: int, e: int) -> None:
        """Decode the block [s, e) of the canvas x (B, L) in place."""
        past = self.start(x, s, e)
        stop = e if self.kv_cache == "dual" else x.shape[1]  # the window the later steps score: [s, stop)
        i = 1
        while bool((x[:, s:e] == self.mask_id).any()):
            if self.threshold is None and i == self.steps_per_block:
                break
            logits = self.window_logits(x, s, e, past)
            window = x[:, s:stop]  # a view: writes go to the canvas
            mask_index = window == self.mask_id
            in_block = torch.arange(stop - s, device=x.device) < self.block_length
            if self.threshold is None:
                self.scheduled_step(window, logits, mask_index & in_block, i)
                i += 1
            else:
                self.threshold_step(window, logits, mask_index, in_block)


def _generate_blocks(model, x: Tensor, am: Tensor | None, P: int, gen_length: int, steps: int, block_length: int,
                     kv_cache, threshold, temperature, top_p, top_k, alg_temp, eps, mask_id, generator) -> Tensor:
    """Fast-dLLM's block decoding of Dream (module docstring). x (B, P + gen_length) is decoded in place."""
    steps_per_block = _check_blocks(gen_length, steps, block_length, kv_cache, threshold)
    B, L = x.shape
    device = x.device
    decoder = _BlockDecoder(model, am, dream_positions(am, B, L, device), kv_cache, threshold, block_length,
                            steps_per_block, torch.linspace(1, eps, steps_per_block + 1, device=device), alg_temp,
                            mask_id, (temperature, top_p, top_k), generator, torch.arange(B, device=device)[:, None])
    for b in range(gen_length // block_length):
        decoder.decode(x, P + b * block_length, P + (b + 1) * block_length)
    return x


__all__ = ["generate_dream", "sample_tokens", "top_p_filter", "top_k_filter", "ALGORITHMS", "KV_CACHES"]
