"""LLaDA-MoE (inclusionAI/LLaDA-MoE-7B-A1B-Base/Instruct; Zhu et al., 2025, "LLaDA-MoE: A Sparse MoE
Diffusion Language Model"): LLaDA's masked-diffusion objective on an OLMoE-shaped mixture of experts.
Reference: the Hub's remote code as copied in ZHZisZZ/dllm, `dllm/pipelines/llada/models/
{configuration,modeling}_lladamoe.py`. This module is the family: config (those config.json names),
key table, model class, `Family` record.

What the reference does that is easy to miss (and this family reproduces):
- the router: softmax in float32, plus `expert_bias` when `moe_router_enable_expert_bias`, top-k of
  that, weights NOT renormalised: `norm_topk_prob` in config.json is ignored (hard-coded False);
  `moe_router_score_function`, `routed_scaling_factor`, `router_num_group`/`router_topk_group` are
  not read by the forward;
- per-head q/k RMSNorm (`qk_layernorm`), then `clip_qkv`, then RoPE on the first
  int(head_dim * partial_rotary_factor) dims (the key must be present: its class default -1 means
  no rotary at all, which we refuse);
- head_dim = hidden / heads (no head_dim key); one `attention_bias` for q, k, v and o;
- a shared expert on the layer (`model.layers.N.shared_expert.*`), fed the same normed input, added
  unweighted; dense layers (moe_layer_freq 0) have an MLP of `dense_intermediate_size`;
- the Hub's 7B configs say `model_type` "llada" (dllm tells users to edit it to "lladamoe"): such a
  config is recognised by its `architectures` or MoE keys (`dlmarch.registry`).
The attention mask is key padding only (bidirectional), positions 0..L-1 even with left padding: our
LLaDA forward already does exactly this.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..config import (HF_SHAPE_FIELDS, HFField, _eos_out, _expect, _extra, _first, _flag, _hf_rope, _need,
                      _positive_int, hf_known, hf_read, hf_rope_scaling, hf_write)
from ..errors import ConfigError
from ..family import Family
from ..keymaps import KeyTable
from .moe import MoEConfig, MoETransformerLM

ARCHITECTURE = "LLaDAMoEModelLM"
# LLaDA-MoE's tokenizer: <|mask|> (the model card passes mask_id=156895 to generate).
LLADAMOE_MASK_TOKEN_ID = 156895


# LLaDA-MoE's config.json fields, in the order to_hf writes them; from_hf reads those without a `read`
# (and bos_token_id, mask_token_id, the rotary fields) itself.
FIELDS = HF_SHAPE_FIELDS + (
    HFField("dense_intermediate_size", "intermediate_size"),
    HFField("expert_intermediate_size", "moe_intermediate_size", "count"),
    HFField("shared_expert_intermediate_size", "shared_expert_intermediate_size",
            out=lambda c: c.shared_expert_intermediate_size or None),
    HFField("num_experts", "num_experts", "count"),
    HFField("num_experts_per_tok", "num_experts_per_tok", "count"),
    HFField("moe_layer_freq", "moe_layer_freq", out=lambda c: list(c.moe_layer_freq)),
    # an imported `true` stays true when the model has no bias buffer
    HFField("moe_router_enable_expert_bias", "expert_bias",
            out=lambda c: c.expert_bias or c.hf_extra.get("moe_router_enable_expert_bias")),
    HFField("qk_layernorm", "qk_norm"),
    HFField("partial_rotary_factor", "partial_rotary_factor", "number"),
    HFField("clip_qkv", "clip_qkv"),
    HFField("rope_theta", "rope_theta"),
    HFField("rope_scaling", "rope_scaling", out=hf_rope_scaling),
    HFField("rms_norm_eps", "rms_norm_eps", "number", 1e-5),
    HFField("attention_bias", "qkv_bias"),
    HFField("tie_word_embeddings", "tie_word_embeddings", "flag", False),
    HFField("max_position_embeddings", "max_position_embeddings", "count", 4096),
    HFField("eos_token_id", "eos_token_id", "token", None, out=_eos_out),
    HFField("pad_token_id", "pad_token_id", "token", None),
)


def looks_like_lladamoe(hf: dict) -> bool:
    """An HF config.json of LLaDA-MoE whatever its model_type says (the Hub's say "llada")."""
    return ARCHITECTURE in (hf.get("architectures") or []) or (
        "num_experts" in hf and "expert_intermediate_size" in hf and "moe_layer_freq" in hf)


@dataclass
class LLaDAMoEConfig(MoEConfig):
    """LLaDA-MoE's config.json (`model_type` "lladamoe", `architectures` ["LLaDAMoEModelLM"])."""

    max_position_embeddings: int = 8192

    family: ClassVar[str] = "lladamoe"
    _model_type: ClassVar[str] = "lladamoe"

    @classmethod
    def from_hf(cls, hf: dict) -> "LLaDAMoEConfig":
        f = "LLaDA-MoE"
        _expect(hf, "hidden_act", ("silu",), f)
        if hf.get("partial_rotary_factor", -1) in (None, -1):
            raise ConfigError(f"{f} config.json: partial_rotary_factor is missing (the reference's default -1 means "
                              "no rotary embedding at all, which no published checkpoint uses)")
        theta, scaling = _hf_rope(hf)
        kw = hf_read(hf, FIELDS, f)
        layers = kw["num_layers"]
        freq = _need(hf, "moe_layer_freq", f)
        if not isinstance(freq, list) or len(freq) != layers:
            raise ConfigError(f"{f} config.json: moe_layer_freq must list 0 or 1 for each of the {layers} layers, found {freq!r}")
        freq = [0 if v == 0 else 1 for v in freq]  # the reference: 0 -> dense, anything else -> MoE
        dense = hf.get("dense_intermediate_size")
        if 0 in freq:
            dense = _positive_int(dense, "dense_intermediate_size")
        elif not isinstance(dense, int) or isinstance(dense, bool) or dense < 1:
            dense = kw["moe_intermediate_size"]  # unused: every layer is MoE
        shared = hf.get("shared_expert_intermediate_size")
        bias = _flag(hf.get("attention_bias", False), "attention_bias")
        mask = hf.get("mask_token_id", LLADAMOE_MASK_TOKEN_ID if kw["vocab_size"] > LLADAMOE_MASK_TOKEN_ID else None)
        return cls(
            num_kv_heads=_positive_int(hf.get("num_key_value_heads") or kw["num_heads"], "num_key_value_heads"),
            intermediate_size=dense,
            rope_theta=theta,
            rope_scaling=scaling,
            qkv_bias=bias,
            out_bias=bias,
            bos_token_id=_first(hf.get("bos_token_id")),
            shared_expert_intermediate_size=0 if shared is None else _positive_int(shared, "shared_expert_intermediate_size"),
            moe_layer_freq=freq,
            router="softmax",
            expert_bias=bool(hf.get("moe_router_enable_expert_bias")),
            qk_norm=bool(hf.get("qk_layernorm")),
            clip_qkv=hf.get("clip_qkv"),
            mask_token_id=mask,
            hf_extra=_extra(hf, hf_known(FIELDS, "rope_parameters", "bos_token_id", "mask_token_id")),
            **kw,
        )

    def to_hf(self) -> dict:
        if self.router != "softmax" or self.mlp_bias or self.qkv_bias != self.out_bias:
            raise ConfigError("LLaDA-MoE's config.json expresses the softmax router, no MLP bias and one attention_bias")
        if self.head_dim != self.hidden_size // self.num_heads:
            raise ConfigError(f"LLaDA-MoE derives head_dim = hidden_size / heads; {self.head_dim} cannot be expressed")
        out = hf_write(self, {"architectures": [ARCHITECTURE], "model_type": "lladamoe", "hidden_act": "silu",
                              "auto_map": {"AutoConfig": "configuration_lladamoe.LLaDAMoEConfig",
                                           "AutoModel": "modeling_lladamoe.LLaDAMoEModelLM",
                                           "AutoModelForCausalLM": "modeling_lladamoe.LLaDAMoEModelLM"}}, FIELDS)
        if self.bos_token_id is not None:
            out["bos_token_id"] = self.bos_token_id
        if self.mask_token_id is not None and self.mask_token_id != LLADAMOE_MASK_TOKEN_ID:
            out["mask_token_id"] = self.mask_token_id
        return out


_ATTN = {"attn_norm": "input_layernorm", "q_proj": "self_attn.q_proj", "k_proj": "self_attn.k_proj",
         "v_proj": "self_attn.v_proj", "attn_out": "self_attn.o_proj", "q_norm": "self_attn.q_norm",
         "k_norm": "self_attn.k_norm", "ff_norm": "post_attention_layernorm",
         # dense layers (moe_layer_freq 0)
         "ff_proj": "mlp.gate_proj", "up_proj": "mlp.up_proj", "ff_out": "mlp.down_proj"}
_SWIGLU = {"ff_proj": "gate_proj", "up_proj": "up_proj", "ff_out": "down_proj"}

KEYS = KeyTable(
    family="lladamoe",
    pairs=[("wte.weight", "model.embed_tokens.weight"), ("ln_f.weight", "model.norm.weight"),
           ("lm_head.weight", "lm_head.weight")]
    + [(f"blocks.{{i}}.{ours}.{p}", f"model.layers.{{i}}.{theirs}.{p}") for ours, theirs in _ATTN.items()
       for p in ("weight", "bias")]
    + [("blocks.{i}.moe.router.weight", "model.layers.{i}.mlp.gate.weight"),
       ("blocks.{i}.moe.expert_bias", "model.layers.{i}.mlp.expert_bias")]
    + [(f"blocks.{{i}}.moe.experts.{{e}}.{ours}.weight", f"model.layers.{{i}}.mlp.experts.{{e}}.{theirs}.weight")
       for ours, theirs in _SWIGLU.items()]
    # the shared expert hangs on the layer, not on its mlp
    + [(f"blocks.{{i}}.moe.shared.{ours}.weight", f"model.layers.{{i}}.shared_expert.{theirs}.weight")
       for ours, theirs in _SWIGLU.items()],
    tied_head="lm_head.weight",
)


class LLaDAMoEModel(MoETransformerLM):
    """LLaDA-MoE: a bidirectional mask predictor (`logits[:, i]` scores token i), sampled with LLaDA's
    `dlmarch.generate` (pass `mask_id` when the config has none: the model card's is 156895)."""

    config_class = LLaDAMoEConfig
    sampler = "generate"
    likelihood = "llada"  # LLaDA's Monte Carlo estimate (a bidirectional mask predictor)


FAMILY = Family(name="lladamoe", model_class=LLaDAMoEModel, config_class=LLaDAMoEConfig, key_table=KEYS,
                hf_model_type="lladamoe", claims=looks_like_lladamoe)
LLaDAMoEModel.families = (FAMILY,)

__all__ = ["LLaDAMoEConfig", "LLaDAMoEModel", "KEYS", "FAMILY", "looks_like_lladamoe"]
