"""Log-likelihood of a continuation given a context, for every model family.

- LLaDA (masked diffusion) has no exact likelihood; `llada_log_likelihood` is the Monte Carlo
  estimate of its ELBO that ML-GSAI/LLaDA `get_log_likelihood.py` (and its lm-eval wrapper
  `eval_llada.py`) uses (LLaDA paper, Appendix B.5): the same sequence repeated `batch_size` times,
  each copy with a different number of answer tokens masked (low-discrepancy: one random start,
  then evenly spaced), the masked tokens' cross-entropy divided by the mask ratio, averaged over
  mc_num / batch_size mini-batches.
- Dream has no exact likelihood either; `dream_log_likelihood` is the Monte Carlo estimate of
  DreamLM/Dream `eval/eval.py` (`_eval_target_nll_mc`, nll_type "mc", log_type "ftb", after SMDM's
  evaluate_diff.py): one t per copy, low-discrepancy from one uniform draw (Kingma et al. 2021,
  I.1), p_mask = (1 - eps) t + eps, every answer token masked with probability p_mask except the
  sequence's last (the EOS the harness appends) and first, logits shifted right by one (Dream's head
  predicts the next token), cross-entropy / p_mask averaged over mc_num / batch_size mini-batches.
- Causal models (Llama/Qwen2) and L2D (whose diffusion path at t = 0 leaves the main path's logits
  unchanged, so its likelihood is the main path's) have the exact autoregressive one:
  `causal_log_likelihood`.

A model names its estimator in the model protocol (`model.likelihood`: "llada", "dream", "causal").
The Monte Carlo estimators draw from a CPU `generator`; with None they use torch's global generator,
so that `torch.manual_seed(s)` then the estimator gives the reference's value for a reference run on
CPU (on GPU the references draw from the CUDA generator, which no CPU seed reproduces).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def forward_process(seq: Tensor, prompt_len: int, mask_id: int, generator: torch.Generator | None = None
                    ) -> tuple[Tensor, Tensor]:
    """Mask answer tokens of seq (b, l) (its copies of one sequence) -> (noisy (b, l), p_mask (b, l)).

    Row i masks x_i of the l - prompt_len answer tokens, chosen uniformly; x_i = k, k + T/b, ...
    (rounded, wrapped into [1, T]) from one uniform k in [1, T]; p_mask = x_i / T. The draws (one
    randint, then one randperm per row) are the reference's, in its order, from `generator`.
    """
    b, l = seq.shape
    T = l - prompt_len
    k = torch.randint(1, T + 1, (), generator=generator)
    # The reference's arithmetic, float32 tensor for the end point included: rounding must agree.
    x = torch.round(torch.linspace(float(k), k + (b - 1) * (T / b), steps=b)).long()
    x = ((x - 1) % T) + 1
    is_mask = torch.arange(T).repeat(b, 1) < x[:, None]
    for i in range(b):
        is_mask[i] = is_mask[i][torch.randperm(T, generator=generator)]
    is_mask = torch.cat([torch.zeros(b, prompt_len, dtype=torch.bool), is_mask], dim=1).to(seq.device)
    noisy = torch.where(is_mask, mask_id, seq)
    return noisy, (x / T)[:, None].repeat(1, l).to(seq.device)


def guided_logits(model, x: Tensor, prompt_len: int, at: Tensor, cfg_scale: float, mask_id: int) -> Tensor:
    """Logits (K, V), fp32, of the positions selected by `at` (b, l), in row-major order. With
    cfg_scale > 0, guided by a copy whose prompt is masked: u + (cfg + 1)(c - u)."""
    if cfg_scale <= 0:
        return model(x, logits_at=at).logits.float()
    uncond = x.clone()
    uncond[:, :prompt_len] = mask_id
    cond, un = model(torch.cat([x, uncond]), logits_at=at.repeat(2, 1)).logits.float().chunk(2)
    return un + (cfg_scale + 1) * (cond - un)


@torch.no_grad()
def llada_log_likelihood(model, prompt: Tensor, answer: Tensor, mc_num: int = 128, batch_size: int = 16,
                         cfg_scale: float = 0.0, mask_id: int | None = None,
                         generator: torch.Generator | None = None) -> float:
    """Monte Carlo estimate of log p(answer | prompt) under a LLaDA model. prompt (l1,), answer (l2,).

    The reference's keywords and defaults (mask_id defaults to the model's). `generator` (a CPU
    generator) drives the masks; None uses torch's global CPU generator. After torch.manual_seed(s)
    this equals ML-GSAI/LLaDA get_log_likelihood.py run on CPU with the same seed. On GPU the
    reference draws k from the CUDA generator (`torch.randint(..., device=batch.device)`) and the
    permutations from the CPU one, so its masks, and its estimate, differ from ours there: the same
    estimator under other random draws, not the same number.
    """
    if mc_num % batch_size:
        raise ValueError(f"mc_num ({mc_num}) must be a multiple of batch_size ({batch_size})")
    if prompt.dim() != 1 or answer.dim() != 1 or answer.numel() == 0:
        raise ValueError(f"prompt and answer must be 1-D token ids, answer non-empty (got {tuple(prompt.shape)}, "
                         f"{tuple(answer.shape)})")
    mask_id = model.config.mask_token_id if mask_id is None else mask_id
    seq = torch.cat([prompt, answer])[None].repeat(batch_size, 1).to(model.device)
    P = prompt.numel()
    losses = []
    for _ in range(mc_num // batch_size):
        noisy, p_mask = forward_process(seq, P, mask_id, generator)
        masked = noisy == mask_id
        logits = guided_logits(model, noisy, P, masked, cfg_scale, mask_id)
        loss = F.cross_entropy(logits, seq[masked], reduction="none") / p_mask[masked]
        losses.append((loss.sum() / batch_size).item())
    return -sum(losses) / len(losses)


@torch.no_grad()
def dream_log_likelihood(model, prompt: Tensor, answer: Tensor, mc_num: int = 128, batch_size: int = 1,
                         sampling_eps: float = 1e-3, mask_id: int | None = None,
                         generator: torch.Generator | None = None) -> float:
    """Monte Carlo estimate of log p(answer | prompt) under a Dream model, DreamLM/Dream eval/eval.py's
    (module docstring). prompt (l1,), answer (l2,): the harness passes continuation + EOS. Defaults
    are the harness's (mc_num 128, batch_size = lm-eval's batch_size, sampling_eps 1e-3)."""
    if prompt.dim() != 1 or answer.dim() != 1 or answer.numel() == 0:
        raise ValueError(f"prompt and answer must be 1-D token ids, answer non-empty (got {tuple(prompt.shape)}, "
                         f"{tuple(answer.shape)})")
    mask_id = model.config.mask_token_id if mask_id is None else mask_id
    seq = torch.cat([prompt, answer])[None].repeat(batch_size, 1)
    b, l = seq.shape
    T = answer.numel()
    seq_dev = seq.to(model.device)
    losses = []
    for _ in range(max(mc_num // batch_size, 1)):
        u0 = torch.rand(1, generator=generator)
        t = (u0 + torch.arange(b).float() / b) % 1
        p_mask = ((1 - sampling_eps) * t + sampling_eps)[:, None].repeat(1, l)
        hide = torch.rand((b, l), generator=generator) < p_mask
        hide[:, 0] = False  # the reference never masks the first and last (EOS) positions
        hide[:, -1] = False
        noisy = seq.clone()
        noisy[:, -T:] = torch.where(hide, mask_id, seq)[:, -T:]  # log_type ftb: only the answer is noised
        noisy = noisy.to(model.device)
        masked = noisy == mask_id
        logits = model(noisy).logits
        logits = torch.cat([logits[:, :1], logits[:, :-1]], dim=1)  # position j scored by logits[:, j - 1]
        loss = F.cross_entropy(logits[masked].float(), seq_dev[masked], reduction="none") / p_mask.to(model.device)[masked]
        losses.append((loss.sum() / b).item())
    return -sum(losses) / len(losses)


@torch.no_grad()
def llada_suffix_greedy(model, prompt: Tensor, answer: Tensor, cfg_scale: float = 0.0, mask_id: int | None = None) -> bool:
    """Whether greedy decoding from `prompt` gives `answer` (ML-GSAI/LLaDA eval_llada.py's
    suffix_greedy_prediction): len(answer) masks after the prompt, one per step, the most confident
    masked position committed to its argmax."""
    mask_id = model.config.mask_token_id if mask_id is None else mask_id
    P = prompt.numel()
    x = torch.cat([prompt, torch.full_like(answer, mask_id)])[None].to(model.device)
    for _ in range(answer.numel()):
        masked = x == mask_id
        logits = guided_logits(model, x, P, masked, cfg_scale, mask_id)
        x0 = logits.argmax(-1)
        confidence = logits.softmax(-1).gather(-1, x0[:, None]).squeeze(-1)
        best = int(confidence.argmax())
        x[0, masked[0].nonzero()[best, 0]] = x0[best]
    return bool((x[0, P:] == answer.to(x.device)).all())


@torch.no_grad()
def causal_log_likelihood(model, requests: list[tuple[list[int], list[int]]], batch_size: int = 1
                          ) -> list[tuple[float, bool]]:
    """Exact log p(continuation | context) of a causal LM, and whether greedy decoding gives the
    continuation, for (context ids, continuation ids) pairs (context non-empty). Rows are batched
    with right padding, which a causal model never attends to."""
    out = []
    for start in range(0, len(requests), batch_size):
        chunk = requests[start:start + batch_size]
        rows = [(ctx + cont)[:-1] for ctx, cont in chunk]
        L = max(len(r) for r in rows)
        ids = torch.zeros(len(rows), L, dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, :len(r)] = torch.tensor(r)
        logp = model(ids.to(model.device)).logits.float().log_softmax(-1)
        for i, (ctx, cont) in enumerate(chunk):
            n = len(ctx) + len(cont) - 1
            lp = logp[i, n - len(cont): n]  # the positions that predict the continuation
            target = torch.tensor(cont, device=lp.device)
            out.append((float(lp.gather(-1, target[:, None]).sum()), bool((lp.argmax(-1) == target).all())))
    return out


@torch.no_grad()
def causal_rolling_log_likelihood(model, tokens: list[int], prefix_token: int, max_length: int,
                                  batch_size: int = 1) -> float:
    """Exact log p(tokens) of a causal LM over disjoint windows of at most `max_length` tokens, each
    conditioned on up to max_length - 1 previous ones (lm-eval's rolling windows, as its hf model)."""
    from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

    windows = [make_disjoint_window(w) for w in get_rolling_token_windows(
        token_list=tokens, prefix_token=prefix_token, max_seq_len=max_length, context_len=1)]
    return sum(ll for ll, _ in causal_log_likelihood(model, windows, batch_size))


ESTIMATORS = {"llada": llada_log_likelihood, "dream": dream_log_likelihood, "causal": causal_log_likelihood}


def estimator_for(model):
    """The likelihood estimator a model declares (`model.likelihood`, the model protocol)."""
    name = getattr(model, "likelihood", None)
    if name not in ESTIMATORS:
        raise ValueError(f"a {type(model).__name__} declares no likelihood estimator of dlmarch.likelihood (found {name!r})")
    return ESTIMATORS[name]


__all__ = ["forward_process", "guided_logits", "llada_log_likelihood", "dream_log_likelihood", "llada_suffix_greedy",
           "causal_log_likelihood", "causal_rolling_log_likelihood", "estimator_for", "ESTIMATORS"]
