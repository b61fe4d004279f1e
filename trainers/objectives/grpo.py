"""diffu-GRPO (d1, Zhao et al. 2025, "d1: Scaling Reasoning in Diffusion Large Language Models via
Reinforcement Learning", arXiv 2504.12216; dllm-reasoning/d1 `diffu-grpo/diffu_grpo_trainer.py`).

Per micro-batch of prompts, every `num_iterations` (mu) optimizer steps:
1. rollouts: `num_generations` (G) completions per prompt with the model's own sampler (LLaDA's
   semi-autoregressive `generate`, Dream's `generate_dream`); the completion mask keeps every token
   up to and including the first EOS;
2. rewards: the task's reward functions (trainers/tasks/rewards.py), summed with weight 1; the
   advantage of a completion is its reward minus its group's mean (d1 does not divide by the group's
   std; `scale_rewards` does, as TRL's GRPOTrainer: / (std + 1e-4));
3. mask seeds, one per iteration: random in [0, 4096) (`random_masking`, d1's default) or 42;
4. old and reference log-probabilities of the completion tokens for each iteration, by d1's
   one-step estimate (`per_token_logps`): the completion fully masked, each prompt token masked
   with probability `p_mask_prompt` from the iteration's seed, one forward pass. The reference is
   the model with its LoRA adapter disabled (no second copy), or a frozen copy under full
   fine-tuning.
Each of the mu steps (iteration i) recomputes the policy's log-probabilities with seed i and takes
    ratio = exp(logp - old),  loss_t = -min(ratio A, clip(ratio, 1 - eps, 1 + eps) A) + beta KL_t,
    KL_t = exp(ref - logp) - (ref - logp) - 1      (the k3 estimator),
    loss = sum_t loss_t m_t / sum_t m_t             (over the micro-batch's completion tokens),
and the loop averages the micro-batches' losses (d1's normalisation under gradient accumulation).
With mu = 1 the old log-probabilities are the current ones detached (ratio 1), as in d1.

What differs from d1, on purpose (the values do not): the mask of a seed is drawn from a generator
of its own instead of re-seeding every global RNG (d1's `set_seed`); each iteration's forward runs
alone instead of all mu in one batch; the reference log-probabilities are computed with mu = 1 too
(d1 reads a variable that only exists when mu > 1); iteration i of a rollout batch is optimizer step
i after it (TRL's counter advances per micro-batch, so under gradient accumulation d1 cycles the
iterations per micro-batch; every iteration still pairs its own seed with its own old and reference
values). Groups never span micro-batches: a micro-batch holds `batch_size` prompts x G completions.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from dlmarch.sampling.options import DecodingOptions

from .common import ObjectiveOutput, predicts_next_token
from .protocol import Objective


# --- d1's pieces, as pure functions ------------------------------------------------------------------


def prompt_masking(ids: Tensor, prompt_len: int, mask_id: int, p_mask_prompt: float, seed: int) -> Tensor:
    """d1's `forward_process`: (B, L) -> (B, L) with every completion token (positions >= prompt_len)
    masked and each prompt token masked where a uniform draw of the seed's generator is < p_mask_prompt."""
    B, L = ids.shape
    g = torch.Generator(device=ids.device)
    g.manual_seed(int(seed))
    u = torch.rand((B, L), generator=g, device=ids.device)
    is_prompt = torch.arange(L, device=ids.device) < prompt_len
    masked = (is_prompt & (u < p_mask_prompt)) | ~is_prompt
    return torch.where(masked, torch.full_like(ids, mask_id), ids)


def per_token_logps(model, ids: Tensor, prompt_len: int, mask_id: int, p_mask_prompt: float, seed: int) -> Tensor:
    """d1's `_get_per_token_logps` for one iteration: log p(completion token) (B, C) in fp32 from one
    forward of the masked sequence (B, L = prompt_len + C). A shifted head (Dream) scores token j
    with the logits of position j - 1."""
    noisy = prompt_masking(ids, prompt_len, mask_id, p_mask_prompt, seed)
    shift = 1 if predicts_next_token(model) else 0
    logits = model(noisy, logits_at=slice(prompt_len - shift, ids.shape[1] - shift)).logits  # (B, C, V)
    targets = ids[:, prompt_len:]
    ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none")
    return (-ce).view(targets.shape).float()


def completion_mask(completion: Tensor, eos_id: int) -> Tensor:
    """(B, C) 1 up to and including the first EOS (every token when there is none), as d1."""
    is_eos = completion == eos_id
    first = torch.where(is_eos.any(1), is_eos.int().argmax(1), torch.full_like(is_eos[:, 0], completion.shape[1], dtype=torch.long))
    return (torch.arange(completion.shape[1], device=completion.device)[None] <= first[:, None]).int()


def group_advantages(rewards: Tensor, num_generations: int, scale: bool = False) -> tuple[Tensor, Tensor]:
    """(advantages (N,), group std repeated (N,)): reward minus its group's mean; divided by the
    group's std + 1e-4 with `scale` (TRL), not by default (d1)."""
    grouped = rewards.view(-1, num_generations)
    mean = grouped.mean(1).repeat_interleave(num_generations)
    std = grouped.std(1).repeat_interleave(num_generations)
    adv = rewards - mean
    return (adv / (std + 1e-4) if scale else adv), std


def grpo_loss(logps: Tensor, old: Tensor | None, ref: Tensor | None, advantages: Tensor, mask: Tensor,
              epsilon: float, beta: float) -> tuple[Tensor, dict]:
    """d1's `compute_loss`: the clipped surrogate plus beta x k3 KL, mean over completion tokens.
    logps, old, ref, mask: (B, C); advantages: (B,). Returns (loss, {"kl", "clip_ratio"})."""
    old = logps.detach() if old is None else old
    ratio = torch.exp(logps - old)
    clipped = torch.clamp(ratio, 1 - epsilon, 1 + epsilon)
    l1, l2 = ratio * advantages[:, None], clipped * advantages[:, None]
    per_token = -torch.min(l1, l2)
    m = mask.to(per_token.dtype)
    n = m.sum()
    metrics = {}
    if beta != 0.0:
        kl = torch.exp(ref - logps) - (ref - logps) - 1
        per_token = per_token + beta * kl
        metrics["kl"] = float((kl.detach() * m).sum() / n)
    metrics["clip_ratio"] = float(((l1 < l2).to(m.dtype) * m).sum() / n)
    return (per_token * m).sum() / n, metrics


# --- the objective -----------------------------------------------------------------------------------


@dataclass
class GRPOSettings:
    task: str
    num_generations: int = 8
    num_iterations: int = 1
    epsilon: float = 0.2
    beta: float = 0.04
    p_mask_prompt: float = 0.3
    random_masking: bool = True
    scale_rewards: bool = False
    # rollouts: the model's own sampler (dlmarch.sampling.sampler_for) with these decoding options,
    # d1's rollout settings (D1_ROLLOUTS) filling what they leave out
    decoding: DecodingOptions | None = None
    generation_batch_size: int = 0  # 0: all completions of a micro-batch at once


# DiffuGRPOConfig's rollout defaults (dllm-reasoning/d1 diffu-grpo/diffu_grpo_config.py): 256 completion
# tokens, block 64, 64 diffusion steps, temperature 0.9; the rest is the sampler's reference default.
D1_ROLLOUTS = {"gen_length": 256, "block_length": 64, "steps": 64, "temperature": 0.9}


BUFFER_KEYS = ("ids", "mask", "advantages", "old", "ref", "seeds", "rewards", "prompt_len")


class GRPOObjective(Objective):
    """diffu-GRPO under the objective protocol. The loop announces each step (`begin_step`); the
    rollout batch of each micro-batch index is kept for mu steps and saved with every checkpoint
    (state_dict), so that a resumed run continues with the same rollouts and losses."""

    def __init__(self, s: GRPOSettings, *, tokenizer, rows: dict, mask_id: int, eos_id: int, pad_id: int,
                 reward_fn, reward_names: list[str] | None = None, ref_model=None):
        self.s, self.tokenizer, self.rows = s, tokenizer, rows
        self.mask_id, self.eos_id, self.pad_id = mask_id, eos_id, pad_id
        self.reward_fn = reward_fn  # (completions, rows) -> {name: [float]}
        self.reward_names = list(reward_names or [])
        self.ref_model = ref_model  # None: the LoRA model with its adapter disabled
        self.buffers: dict[int, dict] = {}
        self.step, self.micro = 0, 0
        self.training_info = {}  # the record keeps the method; the settings are in run.json

    # --- protocol
    def begin_step(self, step: int) -> None:
        self.step, self.micro = step, 0

    def state_dict(self) -> dict[str, Tensor]:
        out = {}
        for k, buf in self.buffers.items():
            for name in BUFFER_KEYS:
                if buf.get(name) is not None:
                    out[f"{k}.{name}"] = buf[name].detach().cpu().contiguous()
        return out

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        self.buffers = {}
        for key, v in state.items():
            k, name = key.split(".", 1)
            self.buffers.setdefault(int(k), {})[name] = v

    # --- pieces
    def _reference(self, model):
        if self.ref_model is not None:
            return self.ref_model, None
        return model, model.disable_adapter()

    @staticmethod
    def resolve_rollouts(model, s: GRPOSettings) -> DecodingOptions:
        """The decoding options of the rollouts, completed for `model`'s sampler (OptionError, one line,
        when one does not apply or does not fit)."""
        from dlmarch.sampling import sampler_for

        return sampler_for(model).resolve(model, s.decoding, protocol=D1_ROLLOUTS)

    def rollout_options(self, model) -> DecodingOptions:
        return self.resolve_rollouts(model, self.s)

    def _generate(self, model, prompts: Tensor, generator) -> Tensor:
        """(n, P) prompts -> (n, P + gen_length): the model's own sampler, without an attention mask over
        the prompts' left padding, as d1's rollouts (its generate gets none)."""
        from dlmarch.sampling import sampler_for

        sampler, options = sampler_for(model), self.rollout_options(model)
        n = prompts.shape[0]
        chunk = self.s.generation_batch_size or n
        return torch.cat([sampler(model, prompts[i:i + chunk], None, options, generator=generator)
                          for i in range(0, n, chunk)])

    def rollout(self, model, batch, generator) -> dict:
        """Completions, rewards, advantages, mask seeds, old and reference log-probabilities of one micro-batch."""
        s = self.s
        t0 = time.time()
        gen_model = getattr(model, "module", model)  # DDP: sample with the module itself
        P = int(batch.prompt_len.max())
        prompts = torch.full((batch.num_docs, P), self.pad_id, dtype=torch.long, device=batch.input_ids.device)
        for i in range(batch.num_docs):  # left-padded with EOS (d1: the tokenizer's pad token is EOS)
            n = int(batch.prompt_len[i])
            prompts[i, P - n:] = batch.input_ids[i, :n]
        prompts = prompts.repeat_interleave(s.num_generations, 0)
        with torch.no_grad():
            ids = self._generate(gen_model, prompts, generator)
        t_gen = time.time() - t0
        completion = ids[:, P:]
        mask = completion_mask(completion, self.eos_id)
        texts = self.tokenizer.batch_decode(completion.tolist(), skip_special_tokens=True)
        lines = batch.example_ids.repeat_interleave(s.num_generations).tolist()
        rows = [self.rows[int(line)] for line in lines]
        per_fn = self.reward_fn(texts, rows)
        rewards_per_fn = torch.tensor([per_fn[k] for k in per_fn], dtype=torch.float32).T  # (N, F)
        rewards = rewards_per_fn.sum(1)
        advantages, std = group_advantages(rewards, s.num_generations, s.scale_rewards)
        if s.random_masking:
            seeds = torch.randint(0, 2 ** 12, (s.num_iterations,), generator=generator, device=generator.device).cpu()
        else:
            seeds = torch.full((s.num_iterations,), 42)
        old = ref = None
        with torch.no_grad():
            if s.num_iterations > 1:
                old = torch.stack([per_token_logps(gen_model, ids, P, self.mask_id, s.p_mask_prompt, int(seed))
                                   for seed in seeds])
            if s.beta != 0.0:
                ref_model, ctx = self._reference(gen_model)
                with ctx if ctx is not None else torch.no_grad():
                    ref = torch.stack([per_token_logps(ref_model, ids, P, self.mask_id, s.p_mask_prompt, int(seed))
                                       for seed in seeds])
        dev = ids.device
        stats = {"reward": float(rewards.mean()), "reward_std": float(std.mean()),
                 "zero_std_ratio": float((std[::s.num_generations] < 1e-6).float().mean()),
                 "completion_length": float(mask.sum(1).float().mean()), "rollout_s": time.time() - t0,
                 "generate_s": t_gen}
        for j, name in enumerate(per_fn):
            stats[f"rewards/{name}"] = float(rewards_per_fn[:, j].mean())
        return {"ids": ids, "mask": mask, "advantages": advantages.to(dev), "old": old, "ref": ref, "seeds": seeds,
                "rewards": rewards_per_fn, "prompt_len": torch.tensor(P), "stats": stats}

    def __call__(self, model, batch, generator) -> ObjectiveOutput:
        s = self.s
        k, self.micro = self.micro, self.micro + 1
        it = self.step % s.num_iterations
        if it == 0 or k not in self.buffers:
            if it != 0:
                raise RuntimeError(f"no rollouts kept for micro-batch {k} at iteration {it} (a checkpoint without them)")
            self.buffers[k] = self.rollout(model, batch, generator)
        buf = self.buffers[k]
        dev = batch.input_ids.device
        ids, P = buf["ids"].to(dev), int(buf["prompt_len"])
        t0 = time.time()
        logps = per_token_logps(model, ids, P, self.mask_id, s.p_mask_prompt, int(buf["seeds"][it]))
        old = buf["old"][it].to(dev) if buf.get("old") is not None else None
        ref = buf["ref"][it].to(dev) if buf.get("ref") is not None else None
        loss, metrics = grpo_loss(logps, old, ref, buf["advantages"].to(dev), buf["mask"].to(dev), s.epsilon, s.beta)
        stats = buf.get("stats") or self._stats_of(buf)
        metrics.update(stats if it == 0 else {**stats, "rollout_s": 0.0, "generate_s": 0.0})
        metrics["iteration"] = float(it)
        metrics["policy_forward_s"] = time.time() - t0
        return ObjectiveOutput(loss, 1.0, metrics)

    def _stats_of(self, buf: dict) -> dict:
        """The reward statistics of a rollout batch restored from a checkpoint (its timings are gone)."""
        per_fn = buf["rewards"]
        rewards = per_fn.sum(1)
        std = rewards.view(-1, self.s.num_generations).std(1)
        names = self.reward_names or [str(j) for j in range(per_fn.shape[1])]
        stats = {"reward": float(rewards.mean()), "reward_std": float(std.mean()),
                 "zero_std_ratio": float((std < 1e-6).float().mean()),
                 "completion_length": float(buf["mask"].sum(1).float().mean()), "rollout_s": 0.0, "generate_s": 0.0}
        for j, name in enumerate(names):
            stats[f"rewards/{name}"] = float(per_fn[:, j].mean())
        buf["stats"] = stats
        return stats


def frozen_copy(model):
    """The reference policy under full fine-tuning: a frozen copy of the starting weights (TRL's
    `create_reference_model`)."""
    ref = copy.deepcopy(model)
    for p in ref.parameters():
        p.requires_grad_(False)
    return ref.eval()
