"""LoRA (Hu et al., 2021, arXiv 2106.09685) around a frozen Linear, in SakanaAI/L2D's layout: L2D's
diffusion path wraps its copies of the main path's linears with it (`adapter="lora"`)."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class LoRALinear(nn.Module):
    """base(x) + (x @ A @ B) * alpha / rank around a frozen Linear. A is (in, r), B is (r, out), the
    reference's layout, so its checkpoints load as they are."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float):
        super().__init__()
        self.base = base
        self.scale = float(alpha) / rank
        self.A = nn.Parameter(torch.randn(base.in_features, rank, device=base.weight.device) / rank)
        self.B = nn.Parameter(torch.zeros(rank, base.out_features, device=base.weight.device))

    def forward(self, x: Tensor) -> Tensor:
        return self.base(x) + (x @ self.A @ self.B) * self.scale
