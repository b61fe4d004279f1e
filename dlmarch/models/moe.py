"""What the mixture-of-experts families share: their config fields, the routers, the experts and the
block. The families themselves (config.json names, key tables, model classes) are
`dlmarch/models/lladamoe.py` (LLaDA-MoE, inclusionAI/LLaDA-MoE-7B-A1B) and `dlmarch/models/llada2.py`
(LLaDA2.0-mini/flash); their reference code is the Hugging Face remote code as copied in
ZHZisZZ/dllm (`dllm/pipelines/llada/models/modeling_lladamoe.py`,
`dllm/pipelines/llada2/models/modeling_llada2_moe.py`).

A block is the pre-norm decoder block of `dlmarch.layers.Block` with per-head q/k RMSNorm, partial
rotary embeddings, and, on MoE layers, a sparse MoE MLP in place of the dense SwiGLU:

    x += attn_out(attention(rope(q_norm(q)), rope(k_norm(k)), v))
    h = ff_norm(x);  x += sum_k w_k * expert_{idx_k}(h) [+ shared(h)]

Experts are computed grouped by expert (`experts_forward`): the (token, slot) pairs are sorted by
expert once, each expert runs one matmul per projection on its contiguous segment of tokens, and
the weighted outputs are put back in token order. No loop ever runs over tokens. With torch's grouped
GEMM (`torch._grouped_mm`) and plain `nn.Linear` experts (no LoRA wrapper) the segments can run as one
grouped matmul per projection instead: `SparseMoE.grouped_mm` None (default) uses it on CUDA (sm90+) in bf16,
True everywhere it exists, False never. On CPU (torch 2.13) neither path won consistently
(benchmarks/moe_speed.py, docs/moe.md), and the segments need no stacked copy of the weights.

Shapes: N tokens (batch * length, flattened), C hidden, E experts, K experts per token, I expert
intermediate size, H/Hkv heads, D head dim, R rotary dims.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..attention import attend
from ..config import TransformerConfig, _number, _positive_int
from ..errors import ConfigError
from ..layers import RMSNorm, Rope, apply_rope
from ..masks import AttentionMask
from .base import TransformerLM

ROUTERS = ("softmax", "sigmoid_group")


@dataclass
class MoEConfig(TransformerConfig):
    """Fields of a mixture-of-experts transformer (on top of `TransformerConfig`, whose
    `intermediate_size` is the dense layers' MLP width).

    router: "softmax" (LLaDA-MoE: softmax probabilities, plus the expert bias when there is one, both
    to choose and to weight; top-k weights not renormalised) or "sigmoid_group" (LLaDA2, DeepSeek-V3
    style: sigmoid scores, the bias only to choose, group-limited top-k, weights renormalised and
    scaled by `routed_scaling_factor`).
    moe_layer_freq: per layer, 1 for a MoE MLP, 0 for a dense one.
    """

    num_experts: int = 8
    num_experts_per_tok: int = 2
    moe_intermediate_size: int = 0
    shared_expert_intermediate_size: int = 0  # 0: no shared expert
    moe_layer_freq: list = field(default_factory=list)
    router: str = "softmax"
    expert_bias: bool = False
    n_group: int = 1
    topk_group: int = 1
    routed_scaling_factor: float = 1.0
    qk_norm: bool = True
    partial_rotary_factor: float = 1.0
    clip_qkv: float | None = None
    mask_token_id: int | None = None

    fused_qkv: ClassVar[bool] = False
    causal: ClassVar[bool] = False
    mask_token_required: ClassVar[bool] = False  # Hub configs leave it out: the model card's id

    def __post_init__(self):
        super().__post_init__()
        for name in ("num_experts", "num_experts_per_tok", "moe_intermediate_size", "n_group", "topk_group"):
            _positive_int(getattr(self, name), name)
        if self.shared_expert_intermediate_size:
            _positive_int(self.shared_expert_intermediate_size, "shared_expert_intermediate_size")
        if self.num_experts_per_tok > self.num_experts:
            raise ConfigError(f"num_experts_per_tok {self.num_experts_per_tok} is more than num_experts {self.num_experts}")
        if self.router not in ROUTERS:
            raise ConfigError(f"router must be one of {ROUTERS}, found {self.router!r}")
        if self.num_experts % self.n_group or self.topk_group > self.n_group:
            raise ConfigError(f"{self.num_experts} experts cannot form n_group={self.n_group} groups of which "
                              f"topk_group={self.topk_group} are kept")
        if self.router == "sigmoid_group" and self.num_experts // self.n_group < 2:
            raise ConfigError("group-limited routing scores a group by its two best experts: each group needs >= 2")
        if self.router == "sigmoid_group" and self.num_experts_per_tok > self.topk_group * (self.num_experts // self.n_group):
            raise ConfigError(f"num_experts_per_tok {self.num_experts_per_tok} is more than the experts of "
                              f"topk_group={self.topk_group} groups")
        if not isinstance(self.moe_layer_freq, list) or len(self.moe_layer_freq) != self.num_layers \
                or any(v not in (0, 1) or isinstance(v, bool) for v in self.moe_layer_freq):
            raise ConfigError(f"moe_layer_freq must list 0 (dense) or 1 (MoE) for each of the {self.num_layers} layers, "
                              f"found {self.moe_layer_freq!r}")
        self.routed_scaling_factor = _number(self.routed_scaling_factor, "routed_scaling_factor", positive=True)
        factor = _number(self.partial_rotary_factor, "partial_rotary_factor", positive=True)
        if factor > 1 or int(self.head_dim * factor) < 2 or int(self.head_dim * factor) % 2:
            raise ConfigError(f"partial_rotary_factor {factor} gives {int(self.head_dim * factor)} rotary dims of "
                              f"head_dim {self.head_dim}; it needs an even number in [2, head_dim]")
        if self.clip_qkv is not None:
            self.clip_qkv = _number(self.clip_qkv, "clip_qkv", positive=True)

    @property
    def rotary_dim(self) -> int:
        """The first R dims of each head are rotated (int(head_dim * partial_rotary_factor), as both
        references compute it); the rest pass through."""
        return int(self.head_dim * self.partial_rotary_factor)

    def is_moe_layer(self, layer: int) -> bool:
        return self.moe_layer_freq[layer] == 1

    # --- sizes: every parameter, and the active ones per token -----------------------------------------
    def _layer_params(self, layer: int, active: bool) -> int:
        h, d = self.hidden_size, self.head_dim
        q, kv = self.num_heads * d, self.num_kv_heads * d
        n = h * q + 2 * h * kv + q * h + (q + 2 * kv) * self.qkv_bias + h * self.out_bias + 2 * h
        n += 2 * d * self.qk_norm
        if not self.is_moe_layer(layer):
            return n + 3 * h * self.intermediate_size
        experts = self.num_experts_per_tok if active else self.num_experts
        n += h * self.num_experts + experts * 3 * h * self.moe_intermediate_size
        return n + 3 * h * self.shared_expert_intermediate_size

    def num_params(self, include_embedding: bool = True, active: bool = False) -> int:
        """Parameter count; `active=True`: those one token uses (K experts of each MoE layer)."""
        v, h = self.vocab_size, self.hidden_size
        n = sum(self._layer_params(i, active) for i in range(self.num_layers)) + h
        head = 0 if self.tie_word_embeddings else v * h
        return n + head + (v * h if include_embedding else 0)

    def flops_per_token(self, seq_len: int, training: bool = True) -> float:
        """Matmul FLOPs per token over the active weights (2 per multiply-accumulate; the K routed
        experts, the shared expert and the router of each MoE layer), plus attention; training = 3x."""
        weights = self.num_params(include_embedding=False, active=True) - self.hidden_size
        weights -= self.num_layers * 2 * self.hidden_size + self.num_layers * 2 * self.head_dim * self.qk_norm
        forward = 2 * weights + 4 * self.num_layers * seq_len * self.num_heads * self.head_dim
        return float(3 * forward if training else forward)


class Routing(NamedTuple):
    """A router's decision for N tokens: logits (N, E) float32 (before the softmax/sigmoid), idx (N, K)
    the chosen experts in torch.topk's order, weight (N, K) their weights."""

    logits: Tensor
    idx: Tensor
    weight: Tensor


def route_softmax(logits: Tensor, k: int, bias: Tensor | None) -> tuple[Tensor, Tensor]:
    """LLaDA-MoE (modeling_lladamoe.py, LLaDAMoESparseMoeBlock): p = softmax(logits) in float32, plus
    the expert bias when present (used both to choose and as the weight); top-k of that, NOT
    renormalised (the reference hard-codes norm_topk_prob = False whatever config.json says)."""
    p = F.softmax(logits, dim=-1, dtype=torch.float32)
    if bias is not None:
        p = p + bias
    weight, idx = torch.topk(p, k, dim=-1)
    return idx, weight


def route_sigmoid_group(logits: Tensor, k: int, bias: Tensor | None, n_group: int, topk_group: int,
                        scale: float) -> tuple[Tensor, Tensor]:
    """LLaDA2 (modeling_llada2_moe.py, LLaDA2MoeGate; DeepSeek-V3's router): s = sigmoid(logits);
    experts are chosen on s + bias inside the `topk_group` best of `n_group` contiguous groups (a
    group scores the sum of its two best); the weights are the chosen experts' unbiased s,
    renormalised (when k > 1) and times `scale`."""
    s = torch.sigmoid(logits.float())
    choose = s if bias is None else s + bias
    N, E = choose.shape
    group_scores = choose.view(N, n_group, -1).topk(2, dim=-1)[0].sum(dim=-1)
    group_idx = torch.topk(group_scores, k=topk_group, dim=-1, sorted=False)[1]
    keep = torch.zeros_like(group_scores, dtype=torch.bool).scatter_(1, group_idx, True)
    keep = keep.unsqueeze(-1).expand(N, n_group, E // n_group).reshape(N, E)
    idx = torch.topk(choose.masked_fill(~keep, float("-inf")), k=k, dim=-1)[1]
    weight = s.gather(1, idx)
    if k > 1:
        weight = weight / (weight.sum(dim=-1, keepdim=True) + 1e-20)
    return idx, weight * scale


class SwiGLU(nn.Module):
    """down(silu(gate(x)) * up(x)), LLaDA's names: ff_proj (gate), up_proj, ff_out (down)."""

    def __init__(self, hidden: int, intermediate: int):
        super().__init__()
        self.ff_proj = nn.Linear(hidden, intermediate, bias=False)
        self.up_proj = nn.Linear(hidden, intermediate, bias=False)
        self.ff_out = nn.Linear(intermediate, hidden, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.ff_out(F.silu(self.ff_proj(x)) * self.up_proj(x))


def _plain(experts: nn.ModuleList) -> bool:
    e = experts[0]
    return all(type(m) is nn.Linear for m in (e.ff_proj, e.up_proj, e.ff_out))


def use_grouped_mm(experts: nn.ModuleList, x: Tensor, grouped_mm: bool | None) -> bool:
    """Whether `experts_forward` runs torch._grouped_mm (see the module docstring for `grouped_mm`)."""
    if grouped_mm is False or not hasattr(torch, "_grouped_mm") or not _plain(experts):
        return False
    if grouped_mm is None:  # torch's grouped GEMM kernels: Hopper and later, bf16
        return x.is_cuda and x.dtype == torch.bfloat16 and torch.cuda.get_device_capability(x.device) >= (9, 0)
    return x.dtype in (torch.float32, torch.bfloat16)


def experts_forward(experts: nn.ModuleList, x: Tensor, idx: Tensor, weight: Tensor,
                    grouped_mm: bool | None = None) -> Tensor:
    """sum_k weight[n, k] * experts[idx[n, k]](x[n]) for every token n. x (N, C), idx/weight (N, K) -> (N, C).

    The N*K (token, slot) pairs are sorted by expert (stable), so each expert's tokens are one
    contiguous segment; each expert runs once on its segment (or all of them at once through
    torch._grouped_mm); the outputs go back to (N, K) order, are weighted in the weights' dtype and
    summed over k (LLaDA2's order; LLaDA-MoE's weights are in x's dtype already), then cast to x's dtype.
    """
    N, K = idx.shape
    flat = idx.reshape(-1)
    order = flat.argsort(stable=True)
    xs = x[order // K]  # (N*K, C), grouped by expert
    counts = torch.bincount(flat, minlength=len(experts))
    if use_grouped_mm(experts, x, grouped_mm):
        ends = counts.cumsum(0).to(torch.int32)
        gate = torch.stack([e.ff_proj.weight for e in experts]).transpose(1, 2)  # (E, C, I)
        up = torch.stack([e.up_proj.weight for e in experts]).transpose(1, 2)
        down = torch.stack([e.ff_out.weight for e in experts]).transpose(1, 2)  # (E, I, C)
        h = F.silu(torch._grouped_mm(xs, gate, offs=ends)) * torch._grouped_mm(xs, up, offs=ends)
        ys = torch._grouped_mm(h, down, offs=ends)
    else:
        outs, start = [], 0
        for e, n in enumerate(counts.tolist()):
            if n:
                outs.append(experts[e](xs[start:start + n]))
                start += n
        ys = torch.cat(outs)
    y = torch.empty_like(ys).index_copy_(0, order, ys).view(N, K, -1)
    return (y.to(weight.dtype) * weight.unsqueeze(-1)).sum(dim=1).to(x.dtype)


class SparseMoE(nn.Module):
    """Router + experts (+ a shared expert added unweighted). Native names: `router` (E, C), the
    `expert_bias` buffer (E,), `experts.{e}.{ff_proj,up_proj,ff_out}`, `shared.*`.

    Set `keep_routing = True` to keep the last forward's `Routing` in `self.routing` (tests, analysis).
    """

    def __init__(self, cfg: MoEConfig):
        super().__init__()
        self.cfg = cfg
        c = cfg.hidden_size
        self.router = nn.Linear(c, cfg.num_experts, bias=False)
        if cfg.expert_bias:
            self.register_buffer("expert_bias", torch.zeros(cfg.num_experts))
        else:
            self.expert_bias = None
        self.experts = nn.ModuleList(SwiGLU(c, cfg.moe_intermediate_size) for _ in range(cfg.num_experts))
        self.shared = SwiGLU(c, cfg.shared_expert_intermediate_size) if cfg.shared_expert_intermediate_size else None
        self.grouped_mm: bool | None = None  # None: grouped matmuls on CUDA in bf16 only (experts_forward)
        self.keep_routing = False
        self.routing: Routing | None = None

    def route(self, x: Tensor) -> Routing:
        """x (N, C) -> Routing."""
        cfg = self.cfg
        if cfg.router == "softmax":
            logits = self.router(x)  # in x's dtype, as LLaDA-MoE's gate
            idx, weight = route_softmax(logits, cfg.num_experts_per_tok, self.expert_bias)
            weight = weight.to(x.dtype)
        else:  # LLaDA2 routes in float32 whatever the model's dtype
            logits = F.linear(x.float(), self.router.weight.float())
            idx, weight = route_sigmoid_group(logits, cfg.num_experts_per_tok, self.expert_bias, cfg.n_group,
                                              cfg.topk_group, cfg.routed_scaling_factor)
        return Routing(logits.float(), idx, weight)

    def forward(self, x: Tensor) -> Tensor:
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        r = self.route(x)
        if self.keep_routing:
            self.routing = r
        y = experts_forward(self.experts, x, r.idx, r.weight, self.grouped_mm)
        if self.shared is not None:
            y = y + self.shared(x)
        return y.view(shape)


class MoEBlock(nn.Module):
    """One decoder layer of a MoE family. Attention: separate `q_proj`/`k_proj`/`v_proj` (LLaDA-MoE) or
    one fused `qkv_proj` whose rows are all query heads, then key heads, then value heads (LLaDA2's
    `query_key_value`); `q_norm`/`k_norm` (RMSNorm over head_dim, one weight for all heads) before
    RoPE; `clip_qkv` clamps q, k, v after the norms (LLaDA-MoE). MLP: `moe` (SparseMoE) or the
    dense `ff_proj`/`up_proj`/`ff_out` on layers whose moe_layer_freq is 0."""

    def __init__(self, cfg: MoEConfig, layer: int):
        super().__init__()
        c, d = cfg.hidden_size, cfg.head_dim
        self.num_heads, self.num_kv_heads, self.head_dim, self.clip = cfg.num_heads, cfg.num_kv_heads, d, cfg.clip_qkv
        self.attn_norm = RMSNorm(c, cfg.rms_norm_eps)
        if cfg.fused_qkv:
            self.qkv_proj = nn.Linear(c, (cfg.num_heads + 2 * cfg.num_kv_heads) * d, bias=cfg.qkv_bias)
        else:
            self.q_proj = nn.Linear(c, cfg.num_heads * d, bias=cfg.qkv_bias)
            self.k_proj = nn.Linear(c, cfg.num_kv_heads * d, bias=cfg.qkv_bias)
            self.v_proj = nn.Linear(c, cfg.num_kv_heads * d, bias=cfg.qkv_bias)
        if cfg.qk_norm:
            self.q_norm = RMSNorm(d, cfg.rms_norm_eps)
            self.k_norm = RMSNorm(d, cfg.rms_norm_eps)
        self.attn_out = nn.Linear(cfg.num_heads * d, c, bias=cfg.out_bias)
        self.ff_norm = RMSNorm(c, cfg.rms_norm_eps)
        if cfg.is_moe_layer(layer):
            self.moe = SparseMoE(cfg)
        else:
            self.ff_proj = nn.Linear(c, cfg.intermediate_size, bias=cfg.mlp_bias)
            self.up_proj = nn.Linear(c, cfg.intermediate_size, bias=cfg.mlp_bias)
            self.ff_out = nn.Linear(cfg.intermediate_size, c, bias=cfg.mlp_bias)

    def qkv(self, h: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """q (B, L, H, D), k and v (B, L, Hkv, D) of normed input h (B, L, C), q/k-normed and clipped."""
        B, L, _ = h.shape
        H, Hkv, D = self.num_heads, self.num_kv_heads, self.head_dim
        if hasattr(self, "qkv_proj"):
            q, k, v = self.qkv_proj(h).view(B, L, H + 2 * Hkv, D).split([H, Hkv, Hkv], dim=2)
        else:
            q, k, v = (self.q_proj(h).view(B, L, H, D), self.k_proj(h).view(B, L, Hkv, D),
                       self.v_proj(h).view(B, L, Hkv, D))
        if hasattr(self, "q_norm"):
            q, k = self.q_norm(q), self.k_norm(k)
        if self.clip is not None:
            q, k, v = (t.clamp(-self.clip, self.clip) for t in (q, k, v))
        return q, k, v

    def forward(self, x: Tensor, rope: Rope, mask: AttentionMask | None, backend: str, *,
                past_kv: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """x (B, L, C) -> (x', (k, v)) as `dlmarch.layers.Block`: k, v (B, Hkv, past + L, D) post-RoPE."""
        B, L, _ = x.shape
        q, k, v = self.qkv(self.attn_norm(x))
        q = apply_rope(q.transpose(1, 2), rope)
        k = apply_rope(k.transpose(1, 2), rope)
        v = v.transpose(1, 2)
        if past_kv is not None:
            k, v = torch.cat([past_kv[0], k], dim=2), torch.cat([past_kv[1], v], dim=2)
        a = attend(q, k, v, mask, backend)
        x = x + self.attn_out(a.transpose(1, 2).reshape(B, L, self.num_heads * self.head_dim))
        h = self.ff_norm(x)
        if hasattr(self, "moe"):
            m = self.moe(h)
        else:
            m = self.ff_out(F.silu(self.ff_proj(h)) * self.up_proj(h))
        return x + m, (k, v)


class MoETransformerLM(TransformerLM):
    """A masked-diffusion transformer whose blocks are `MoEBlock`s (bidirectional unless a mask says
    otherwise; `logits[:, i]` scores token i)."""

    config_class = MoEConfig
    kind = "masked-diffusion"
    shifted_logits = False

    def make_block(self, layer: int) -> nn.Module:
        return MoEBlock(self.config, layer)

    @property
    def rope_freq_dtype(self) -> torch.dtype | None:
        """Both references keep RoPE's inverse frequencies in a buffer that `model.to(torch.bfloat16)`
        casts with the weights, so their bf16 models rotate with bf16-rounded frequencies (cos/sin
        still computed in fp32); so do we, which makes our bf16 runs the reference's (LLaDA2's bf16
        fixture: logits to 2.4e-4, every bf16 generate call token for token). fp32: unchanged."""
        return self.dtype if self.dtype in (torch.bfloat16, torch.float16) else None

    def moe_layers(self) -> list[SparseMoE]:
        return [b.moe for b in self.blocks if hasattr(b, "moe")]


__all__ = ["MoEConfig", "MoEBlock", "MoETransformerLM", "SparseMoE", "SwiGLU", "Routing", "experts_forward",
           "route_softmax", "route_sigmoid_group"]
