"""Under bf16 autocast the backend is chosen for the dtype q/k/v have (bf16), not for the fp32
embedding output: otherwise `auto` never picks flash-attn and `flash` is refused in bf16 training."""

from __future__ import annotations

import torch

import dlmarch.models.base as base
from dlmarch.attention import compute_dtype
from tests.helpers import tiny_llada


def test_backend_sees_the_autocast_dtype(monkeypatch):
    seen = []

    def spy(requested, mask, device, dtype):
        seen.append(dtype)
        return "sdpa"

    monkeypatch.setattr(base, "resolve_backend", spy)
    model = tiny_llada()
    ids = torch.tensor([[1, 2, 3, 4], [5, 6, 7, 8]])
    attention_mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    model(ids, attention_mask)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model(ids, attention_mask)
    assert seen == [torch.float32, torch.bfloat16]
    x = torch.zeros(2)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=False):
        assert compute_dtype(x) == torch.float32
