"""LLaDA2.0 (inclusionAI/LLaDA2.0-mini and -flash; "LLaDA2.0: Scaling Up Diffusion Language Models to
100B", 2025): a block-diffusion mixture of experts (Ling-2.0's architecture). Reference: the Hub's remote
code as copied in ZHZisZZ/dllm, `dllm/pipelines/llada2/models/{configuration,modeling}_llada2_moe.py`.
This module is the family: config (those config.json names), key table, model class, `Family` record,
and the block-diffusion mask its sampler uses (`block_diffusion_mask`).

What the reference does (and this family reproduces):
- one fused `query_key_value` projection (rows: all query heads, then key heads, then value heads),
  bias with `use_qkv_bias`; the output projection `dense`, bias with `use_bias`; MLPs have no bias;
- q/k RMSNorm over head_dim (`use_qk_norm`) before RoPE; RoPE on the first
  int(head_dim * partial_rotary_factor) dims (class default 0.5), frequencies counted over those dims;
- `head_dim` from config.json when given (else hidden / heads);
- layers below `first_k_dense_replace` have a dense SwiGLU of `intermediate_size`; the others a MoE:
  sigmoid router in float32, `expert_bias` used only to choose, group-limited top-k (`n_group`,
  `topk_group`), the chosen unbiased scores renormalised and times `routed_scaling_factor`, plus
  `num_shared_experts` shared experts as one MLP of moe_intermediate_size * num_shared_experts;
- `score_function`, `norm_topk_prob`, `moe_router_enable_expert_bias`, `norm_head` and the sliding
  window are in LLaDA2.0-mini's config.json but read by nothing (kept for export).
- attention: no mask = full bidirectional attention; generate's block mask lets a query see the keys
  of its own block and of every earlier block (blocks of `block_length` from position 0). That rule
  is `dlmarch.masks`' block_causal rule with every token "clean" (`block_diffusion_mask`).
Where we differ: a 2-D padding mask hides padded keys (bidirectional), as LLaDA's does; the reference
turns a 2-D mask with a zero into a causal + padding mask (a transformers default its sampler never uses).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ..config import (HF_SHAPE_FIELDS, HFField, _eos_out, _expect, _extra, _first, _hf_rope, _positive_int,
                      hf_known, hf_read, hf_rope_scaling, hf_write)
from ..errors import ConfigError
from ..family import Family
from ..keymaps import KeyTable
from ..masks import AttentionMask
from .moe import MoEConfig, MoETransformerLM

ARCHITECTURE = "LLaDA2MoeModelLM"
# LLaDA2.0's tokenizer: <|mask|> and <|endoftext|> (generate's defaults in the reference).
LLADA2_MASK_TOKEN_ID = 156895
LLADA2_EOS_TOKEN_ID = 156892


def _first_dense(cfg: "LLaDA2Config") -> int:
    """first_k_dense_replace: how many layers come before the first MoE layer."""
    freq = cfg.moe_layer_freq
    return freq.index(1) if 1 in freq else len(freq)


# LLaDA2.0's config.json fields, in the order to_hf writes them; from_hf reads those without a `read`
# (and bos_token_id, mask_token_id, the rotary fields) itself.
FIELDS = HF_SHAPE_FIELDS + (
    HFField("head_dim", "head_dim"),
    HFField("intermediate_size", "intermediate_size"),
    HFField("moe_intermediate_size", "moe_intermediate_size", "count"),
    HFField("num_experts", "num_experts", "count"),
    HFField("num_shared_experts", "shared_expert_intermediate_size",
            out=lambda c: c.shared_expert_intermediate_size // c.moe_intermediate_size or None),
    HFField("num_experts_per_tok", "num_experts_per_tok", "count", 2),
    HFField("n_group", "n_group", "count", 8),
    HFField("topk_group", "topk_group", "count", 4),
    HFField("routed_scaling_factor", "routed_scaling_factor", "number", 2.5),
    HFField("first_k_dense_replace", "moe_layer_freq", out=_first_dense),
    HFField("use_qkv_bias", "qkv_bias", "flag", False),
    HFField("use_bias", "out_bias", "flag", True),
    HFField("use_qk_norm", "qk_norm", "flag", True),
    HFField("partial_rotary_factor", "partial_rotary_factor", "number", 0.5),
    HFField("rope_theta", "rope_theta"),
    HFField("rope_scaling", "rope_scaling", out=hf_rope_scaling),
    HFField("rms_norm_eps", "rms_norm_eps", "number", 1e-5),
    HFField("tie_word_embeddings", "tie_word_embeddings", "flag", False),
    HFField("max_position_embeddings", "max_position_embeddings", "count", 16384),
    HFField("eos_token_id", "eos_token_id", "token", None, out=_eos_out),
    HFField("pad_token_id", "pad_token_id", "token", None),
)


@dataclass
class LLaDA2Config(MoEConfig):
    """LLaDA2.0's config.json (`model_type` "llada2_moe", `architectures` ["LLaDA2MoeModelLM"])."""

    router: str = "sigmoid_group"
    expert_bias: bool = True
    partial_rotary_factor: float = 0.5
    max_position_embeddings: int = 16384

    family: ClassVar[str] = "llada2_moe"
    _model_type: ClassVar[str] = "llada2_moe"
    fused_qkv: ClassVar[bool] = True

    @classmethod
    def from_hf(cls, hf: dict) -> "LLaDA2Config":
        f = "LLaDA2"
        _expect(hf, "hidden_act", ("silu",), f)
        if hf.get("num_experts") is None:
            raise ConfigError(f"{f} config.json: num_experts is null (a dense LLaDA2 model is not supported)")
        theta, scaling = _hf_rope(hf)
        kw = hf_read(hf, FIELDS, f)
        layers, moe_size = kw["num_layers"], kw["moe_intermediate_size"]
        first_dense = hf.get("first_k_dense_replace", 0)
        if isinstance(first_dense, bool) or not isinstance(first_dense, int) or not 0 <= first_dense <= layers:
            raise ConfigError(f"first_k_dense_replace must be an integer in [0, {layers}], found {first_dense!r}")
        dense = hf.get("intermediate_size")
        dense = _positive_int(dense, "intermediate_size") if first_dense else (dense or moe_size)
        shared = hf.get("num_shared_experts")
        shared = 0 if not shared else _positive_int(shared, "num_shared_experts")
        heads = kw["num_heads"]
        return cls(
            num_kv_heads=_positive_int(hf.get("num_key_value_heads") or heads, "num_key_value_heads"),
            head_dim=_positive_int(hf.get("head_dim") or kw["hidden_size"] // heads, "head_dim"),
            intermediate_size=dense,
            rope_theta=theta,
            rope_scaling=scaling,
            bos_token_id=_first(hf.get("bos_token_id")),
            shared_expert_intermediate_size=moe_size * shared,
            moe_layer_freq=[0] * first_dense + [1] * (layers - first_dense),
            router="sigmoid_group",
            expert_bias=True,  # a buffer of every MoE layer, saved in the checkpoint
            mask_token_id=hf.get("mask_token_id",
                                 LLADA2_MASK_TOKEN_ID if kw["vocab_size"] > LLADA2_MASK_TOKEN_ID else None),
            hf_extra=_extra(hf, hf_known(FIELDS, "rope_parameters", "bos_token_id", "mask_token_id")),
            **kw,
        )

    def to_hf(self) -> dict:
        freq = self.moe_layer_freq
        first_dense = _first_dense(self)
        if any(v == 0 for v in freq[first_dense:]) or self.router != "sigmoid_group" or not self.expert_bias:
            raise ConfigError("LLaDA2's config.json expresses dense layers first, then MoE layers with the "
                              "sigmoid group router and an expert bias")
        if self.mlp_bias or self.shared_expert_intermediate_size % self.moe_intermediate_size:
            raise ConfigError("LLaDA2's MLPs have no bias and its shared experts are moe_intermediate_size wide each")
        out = hf_write(self, {"architectures": [ARCHITECTURE], "model_type": "llada2_moe", "hidden_act": "silu",
                              "auto_map": {"AutoConfig": "configuration_llada2_moe.LLaDA2MoeConfig",
                                           "AutoModel": "modeling_llada2_moe.LLaDA2MoeModel",
                                           "AutoModelForCausalLM": "modeling_llada2_moe.LLaDA2MoeModelLM"}}, FIELDS)
        if self.bos_token_id is not None:
            out["bos_token_id"] = self.bos_token_id
        if self.mask_token_id is not None and self.mask_token_id != LLADA2_MASK_TOKEN_ID:
            out["mask_token_id"] = self.mask_token_id
        return out


_LAYER = {"attn_norm": "input_layernorm", "qkv_proj": "attention.query_key_value", "attn_out": "attention.dense",
          "q_norm": "attention.query_layernorm", "k_norm": "attention.key_layernorm",
          "ff_norm": "post_attention_layernorm",
          # dense layers (below first_k_dense_replace)
          "ff_proj": "mlp.gate_proj", "up_proj": "mlp.up_proj", "ff_out": "mlp.down_proj"}
_SWIGLU = {"ff_proj": "gate_proj", "up_proj": "up_proj", "ff_out": "down_proj"}

KEYS = KeyTable(
    family="llada2_moe",
    pairs=[("wte.weight", "model.word_embeddings.weight"), ("ln_f.weight", "model.norm.weight"),
           ("lm_head.weight", "lm_head.weight")]
    + [(f"blocks.{{i}}.{ours}.{p}", f"model.layers.{{i}}.{theirs}.{p}") for ours, theirs in _LAYER.items()
       for p in ("weight", "bias")]
    + [("blocks.{i}.moe.router.weight", "model.layers.{i}.mlp.gate.weight"),
       ("blocks.{i}.moe.expert_bias", "model.layers.{i}.mlp.gate.expert_bias")]
    + [(f"blocks.{{i}}.moe.experts.{{e}}.{ours}.weight", f"model.layers.{{i}}.mlp.experts.{{e}}.{theirs}.weight")
       for ours, theirs in _SWIGLU.items()]
    + [(f"blocks.{{i}}.moe.shared.{ours}.weight", f"model.layers.{{i}}.mlp.shared_experts.{theirs}.weight")
       for ours, theirs in _SWIGLU.items()],
    tied_head="lm_head.weight",
)


def block_diffusion_mask(length: int, block_length: int, rows: int = 1, device=None) -> AttentionMask:
    """LLaDA2's block-diffusion attention over positions 0..length-1: a query sees every key of its own
    block and of earlier blocks (blocks of `block_length` counted from position 0). It is
    `dlmarch.masks`' block_causal rule with every token clean."""
    pos = torch.arange(length, device=device).expand(rows, length)
    return AttentionMask.self_attention("block_causal", pos, block_ids=pos // block_length,
                                        clean=torch.ones_like(pos, dtype=torch.bool))


class LLaDA2Model(MoETransformerLM):
    """LLaDA2.0: a mask predictor (`logits[:, i]` scores token i) trained and sampled block by block.
    `model(x)` attends bidirectionally (as the reference without a mask); pass
    `mask=block_diffusion_mask(L, block_length)` for the block-diffusion attention its sampler,
    `dlmarch.generate_llada2`, uses."""

    config_class = LLaDA2Config
    sampler = "generate_llada2"
    # LLaDA's Monte Carlo estimate, run bidirectionally (the model without a block mask, as the
    # reference's forward without one); block-diffusion likelihoods are not provided.
    likelihood = "llada"

    def forward(self, *args, **kwargs):
        out = super().forward(*args, **kwargs)
        if out.logits is not None:  # the reference's LM head returns float32 logits
            out.logits = out.logits.float()
        return out


FAMILY = Family(name="llada2_moe", model_class=LLaDA2Model, config_class=LLaDA2Config, key_table=KEYS,
                hf_model_type="llada2_moe")
LLaDA2Model.families = (FAMILY,)

__all__ = ["LLaDA2Config", "LLaDA2Model", "KEYS", "FAMILY", "block_diffusion_mask"]
