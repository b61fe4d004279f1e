"""Attention kernels: SDPA, FlexAttention and flash-attn's varlen kernels, each fed the form of one
`dlmarch.masks.AttentionMask` it needs, and the choice among them (`resolve_backend`: `auto` picks per
batch; a requested backend that cannot run is refused with a clear error, never silently replaced).
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import Tensor

from .masks import AttentionMask

def flash_available() -> bool:
    try:
        import flash_attn  # noqa: F401
    except Exception:
        return False
    return torch.cuda.is_available()


def compute_dtype(x: Tensor) -> torch.dtype:
    """The dtype q, k and v will have: autocast's when autocast is on for x's device (they come out of
    autocast linears, while x, an embedding output, stays fp32), else x's own."""
    if torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return x.dtype


def resolve_backend(requested: str, mask: AttentionMask | None, device: torch.device, dtype: torch.dtype) -> str:
    """The backend that runs this batch. An explicit request is honoured or refused, never swapped."""
    if requested == "flash":
        if not flash_available():
            raise RuntimeError(
                "attn_backend='flash' needs the flash-attn package and a CUDA device "
                "(pip install 'dlmarch[flash]'); use 'auto', 'sdpa' or 'flex' otherwise"
            )
        if device.type != "cuda" or dtype not in (torch.float16, torch.bfloat16):
            raise RuntimeError(f"attn_backend='flash' needs CUDA tensors in fp16/bf16, found {device.type} {dtype}")
        if mask is not None and not mask.varlen_ok:
            raise RuntimeError(f"attn_backend='flash' cannot express the {mask.rule} mask; use 'flex'")
        return "flash"
    if requested in ("sdpa", "flex"):
        return requested
    if requested != "auto":
        raise ValueError(f"unknown attention backend {requested!r}")
    if mask is None or mask.hides_nothing or mask.is_plain_causal:
        return "sdpa"
    if device.type == "cuda":
        if dtype in (torch.float16, torch.bfloat16) and mask.varlen_ok and flash_available():
            return "flash"
        return "flex"
    # On CPU FlexAttention runs unfused; the dense mask is exact and faster there.
    return "sdpa"


_compiled_flex = None


def _flex(q, k, v, block_mask, scale):
    global _compiled_flex
    from torch.nn.attention.flex_attention import flex_attention

    gqa = q.shape[1] != k.shape[1]
    if q.device.type == "cuda":
        if _compiled_flex is None:
            _compiled_flex = torch.compile(flex_attention, dynamic=False)
        return _compiled_flex(q, k, v, block_mask=block_mask, scale=scale, enable_gqa=gqa)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")
        return flex_attention(q, k, v, block_mask=block_mask, scale=scale, enable_gqa=gqa)


def _flash(q, k, v, mask: AttentionMask, scale):
    from flash_attn import flash_attn_varlen_func

    B, H, L, D = q.shape
    idx, cu, max_len = mask.varlen()

    def pack(t):
        return t.transpose(1, 2).reshape(B * L, t.shape[1], D)[idx]

    out = flash_attn_varlen_func(
        pack(q), pack(k), pack(v), cu, cu, max_len, max_len, softmax_scale=scale, causal=mask.rule == "causal"
    )
    full = q.new_zeros(B * L, H, D)
    full[idx] = out
    return full.view(B, L, H, D).transpose(1, 2)


def attend(q: Tensor, k: Tensor, v: Tensor, mask: AttentionMask | None, backend: str, scale: float | None = None) -> Tensor:
    """Attention of q (B, H, Lq, D) over k, v (B, Hkv, Lk, D) under `mask`; returns (B, H, Lq, D).

    `backend` is already resolved (see `resolve_backend`). Grouped-query attention is native in
    every backend (no repeated k/v in memory).
    """
    gqa = q.shape[1] != k.shape[1]
    if mask is None or mask.hides_nothing:
        return F.scaled_dot_product_attention(q, k, v, scale=scale, enable_gqa=gqa)
    if backend == "flash":
        return _flash(q, k, v, mask, scale)
    if mask.is_plain_causal:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, enable_gqa=gqa)
    if backend == "flex":
        return _flex(q, k, v, mask.block_mask(), scale)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask.dense(), scale=scale, enable_gqa=gqa)


__all__ = ["attend", "compute_dtype", "resolve_backend", "flash_available"]

