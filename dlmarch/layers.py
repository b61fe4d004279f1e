"""The building blocks: RMSNorm, rotary embeddings, and one pre-norm transformer block.

The same `Block` serves the bidirectional LLaDA model, the causal Llama/Qwen2 decoders, and (built
with `cross_attention=True`, given the main path's keys and values and an adaLN modulation) the
diffusion path of L2D.

Shapes: B batch, L tokens, H query heads, Hkv key/value heads, D head dim, C hidden size.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import TransformerConfig
from .attention import attend
from .masks import AttentionMask


class RMSNorm(nn.Module):
    """x / rms(x) computed in fp32 and cast back, then times the weight (LLaDA, Llama, Qwen2 alike).

    `scale`/`shift` (broadcastable to x) give the adaLN form (weight + scale) * x_hat + shift used by
    the L2D diffusion path.
    """

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor, scale: Tensor | None = None, shift: Tensor | None = None) -> Tensor:
        dtype = x.dtype
        with torch.autocast(x.device.type, enabled=False):
            h = x.float()
            h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
            h = h.to(dtype)
        weight = self.weight if scale is None else self.weight + scale
        out = weight * h
        return out if shift is None else out + shift


class Rope(NamedTuple):
    """cos/sin tables for a batch: (B, 1, L, D) in fp32, and whether to rotate in fp32."""

    cos: Tensor
    sin: Tensor
    in_fp32: bool

    def slice(self, start: int, stop: int | None = None) -> "Rope":
        return Rope(self.cos[:, :, start:stop], self.sin[:, :, start:stop], self.in_fp32)

    def gather(self, index: Tensor) -> "Rope":
        """Tables at per-row token indices (B, K)."""
        idx = index[:, None, :, None].expand(-1, 1, -1, self.cos.shape[-1])
        return Rope(self.cos.gather(2, idx), self.sin.gather(2, idx), self.in_fp32)


def inverse_frequencies(cfg: TransformerConfig, device=None) -> Tensor:
    """RoPE inverse frequencies (R/2,) in fp32, with Llama-3 or linear scaling when configured. R is the
    rotary dimension: head_dim, or the first `cfg.rotary_dim` dims of each head (partial rotary, as
    LLaDA-MoE and LLaDA2 use; the frequencies then count over R, as transformers' default rope does)."""
    d = getattr(cfg, "rotary_dim", None) or cfg.head_dim
    inv = 1.0 / (cfg.rope_theta ** (torch.arange(0, d, 2, dtype=torch.float32, device=device) / d))
    scaling = cfg.rope_scaling
    if not scaling:
        return inv
    kind = scaling.get("rope_type", scaling.get("type"))
    factor = float(scaling["factor"])
    if kind == "linear":
        return inv / factor
    # llama3: long wavelengths divided by `factor`, short ones kept, a smooth blend in between.
    low, high = float(scaling["low_freq_factor"]), float(scaling["high_freq_factor"])
    old_len = float(scaling["original_max_position_embeddings"])
    wavelen = 2 * math.pi / inv
    scaled = torch.where(wavelen > old_len / low, inv / factor, inv)
    smooth = (old_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < old_len / high) & ~(wavelen > old_len / low)
    return torch.where(medium, smoothed, scaled)


def rope_tables(cfg: TransformerConfig, positions: Tensor, freq_dtype: torch.dtype | None = None) -> Rope:
    """cos/sin for integer positions (B, L), computed once per forward in fp32. `freq_dtype`: round the
    inverse frequencies to this dtype first (references whose inv_freq buffer is cast with the model)."""
    inv = inverse_frequencies(cfg, positions.device)
    if freq_dtype is not None:
        inv = inv.to(freq_dtype).float()
    with torch.autocast(positions.device.type, enabled=False):
        freqs = positions.float()[..., None] * inv  # (B, L, D/2)
        emb = torch.cat([freqs, freqs], dim=-1)[:, None]  # half-split layout: (B, 1, L, D)
        return Rope(emb.cos(), emb.sin(), cfg.rope_in_fp32)


def rotate_half(x: Tensor) -> Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rope(x: Tensor, rope: Rope) -> Tensor:
    """Rotate x (B, H, L, D). In fp32 then cast back (LLaDA), or in x's dtype (transformers). Tables
    narrower than D (partial rotary) rotate the first dims of each head; the rest pass through."""
    r = rope.cos.shape[-1]
    if r < x.shape[-1]:
        return torch.cat([apply_rope(x[..., :r], rope), x[..., r:]], dim=-1)
    if rope.in_fp32:
        xf = x.float()
        return (xf * rope.cos + rotate_half(xf) * rope.sin).to(x.dtype)
    cos, sin = rope.cos.to(x.dtype), rope.sin.to(x.dtype)
    return x * cos + rotate_half(x) * sin


class Modulation(NamedTuple):
    """adaLN terms for one diffusion block, each broadcastable to (B, L, C).

    The attention half uses (attn_scale, attn_shift, attn_gate), the MLP half the ff_* terms:
    h += gate * sublayer((norm.weight + scale) * x_hat + shift).
    """

    attn_scale: Tensor
    attn_shift: Tensor
    attn_gate: Tensor
    ff_scale: Tensor
    ff_shift: Tensor
    ff_gate: Tensor


class Block(nn.Module):
    """Pre-norm block: x += attn_out(attention(rope(q_proj(n)), k, v)); x += SwiGLU(ff_norm(x)).

    Names follow LLaDA: `ff_proj` is the gate, `up_proj` the up projection, `ff_out` the down
    projection, `attn_out` the attention output projection.

    With `cross_attention=True` the block has no k/v projections: it attends with its own queries
    into keys and values handed to it (the L2D diffusion path into the main path's).
    """

    def __init__(self, cfg: TransformerConfig, cross_attention: bool = False):
        super().__init__()
        c, d = cfg.hidden_size, cfg.head_dim
        self.num_heads, self.num_kv_heads, self.head_dim = cfg.num_heads, cfg.num_kv_heads, d
        self.cross_attention = cross_attention
        self.attn_norm = RMSNorm(c, cfg.rms_norm_eps)
        self.q_proj = nn.Linear(c, cfg.num_heads * d, bias=cfg.qkv_bias)
        if not cross_attention:
            self.k_proj = nn.Linear(c, cfg.num_kv_heads * d, bias=cfg.qkv_bias)
            self.v_proj = nn.Linear(c, cfg.num_kv_heads * d, bias=cfg.qkv_bias)
        self.attn_out = nn.Linear(cfg.num_heads * d, c, bias=cfg.out_bias)
        self.ff_norm = RMSNorm(c, cfg.rms_norm_eps)
        self.ff_proj = nn.Linear(c, cfg.intermediate_size, bias=cfg.mlp_bias)
        self.up_proj = nn.Linear(c, cfg.intermediate_size, bias=cfg.mlp_bias)
        self.ff_out = nn.Linear(cfg.intermediate_size, c, bias=cfg.mlp_bias)

    def keys_values(self, h: Tensor, rope: Rope) -> tuple[Tensor, Tensor]:
        """Post-RoPE keys and values (B, Hkv, L, D) of normed input h."""
        B, L, _ = h.shape
        k = self.k_proj(h).view(B, L, self.num_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(h).view(B, L, self.num_kv_heads, self.head_dim).transpose(1, 2)
        return apply_rope(k, rope), v

    def forward(
        self,
        x: Tensor,
        rope: Rope,
        mask: AttentionMask | None,
        backend: str,
        *,
        past_kv: tuple[Tensor, Tensor] | None = None,
        kv: tuple[Tensor, Tensor] | None = None,
        mod: Modulation | None = None,
    ) -> tuple[Tensor, tuple[Tensor, Tensor] | None]:
        """x (B, L, C) -> (x', (k, v)), where (k, v) are this layer's keys/values over every position
        attended to (the cached prefix included); None for a cross-attention block.

        past_kv: cached keys/values of earlier positions, prepended to this call's.
        kv:      for cross-attention, the keys/values to attend into.
        mod:     adaLN modulation (diffusion path).
        """
        B, L, _ = x.shape
        h = self.attn_norm(x) if mod is None else self.attn_norm(x, mod.attn_scale, mod.attn_shift)
        q = self.q_proj(h).view(B, L, self.num_heads, self.head_dim).transpose(1, 2)
        q = apply_rope(q, rope)
        if self.cross_attention:
            k, v = kv
            present = None
        else:
            k, v = self.keys_values(h, rope)
            if past_kv is not None:
                k = torch.cat([past_kv[0], k], dim=2)
                v = torch.cat([past_kv[1], v], dim=2)
            present = (k, v)
        a = attend(q, k, v, mask, backend)
        a = self.attn_out(a.transpose(1, 2).reshape(B, L, self.num_heads * self.head_dim))
        x = x + (a if mod is None else mod.attn_gate * a)
        h = self.ff_norm(x) if mod is None else self.ff_norm(x, mod.ff_scale, mod.ff_shift)
        m = self.ff_out(F.silu(self.ff_proj(h)) * self.up_proj(h))
        x = x + (m if mod is None else mod.ff_gate * m)
        return x, present


__all__ = ["RMSNorm", "Rope", "rope_tables", "apply_rope", "rotate_half", "inverse_frequencies", "Block", "Modulation"]
