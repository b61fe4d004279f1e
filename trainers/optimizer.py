"""The optimizer a run steps: AdamW, and its learning rate by step (warmup, then cosine, linear or
constant), as the Hugging Face Trainer the reference recipes use sets them up.
"""

from __future__ import annotations

import math
from typing import Callable

import torch


def lr_lambda(total: int, warmup: int, schedule: str, min_ratio: float) -> Callable[[int], float]:
    """lr / peak lr after `step` optimizer steps: transformers' get_{linear,cosine,constant}_schedule_with_warmup
    (and get_cosine_with_min_lr_schedule_with_warmup's min_lr_rate), so the first step runs at lr 0 during a
    warmup, as under the HF Trainer the reference recipes use."""
    def f(step: int) -> float:
        if warmup and step < warmup:
            return step / warmup
        if schedule == "constant" or total <= warmup:
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        decay = 0.5 * (1 + math.cos(math.pi * progress)) if schedule == "cosine" else 1 - progress
        return min_ratio + (1 - min_ratio) * decay

    return f


def optimizer_for(params: list, args, total_steps: int, warmup: int):
    """AdamW (no weight decay on vectors: norms and biases) and its warmup-then-decay schedule."""
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=args.lr, betas=tuple(args.adam_betas))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(total_steps, warmup, args.schedule, args.min_lr_ratio))
    return optimizer, scheduler


__all__ = ["lr_lambda", "optimizer_for"]
