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

from ..config import _eos_out, _expect, _extra, _first, _flag, _hf_rope, _need, _number, _positive_int
from ..errors import ConfigError
from ..family import Family
from ..keymaps import KeyTable
from .moe import MoEConfig, MoETransformerLM

ARCHITECTURE = "LLaDAMoEModelLM"
# LLaDA-MoE's tokenizer: <|mask|> (the model card passes mask_id=156895 to generate).
LLADAMOE_MASK_TOKEN_ID = 156895


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
        heads = _positive_int(_need(hf, "num_attention_heads", f), "num_attention_heads")
        hidden = _positive_int(_need(hf, "hidden_size", f), "hidden_size")
        layers = _positive_int(_need(hf, "num_hidden_layers", f), "num_hidden_layers")
        freq = _need(hf, "moe_layer_freq", f)
        if not isinstance(freq, list) or len(freq) != layers:
            raise ConfigError(f"{f} config.json: moe_layer_freq must list 0 or 1 for each of the {layers} layers, found {freq!r}")
        freq = [0 if v == 0 else 1 for v in freq]  # the reference: 0 -> dense, anything else -> MoE
        dense = hf.get("dense_intermediate_size")
        moe_size = _positive_int(_need(hf, "expert_intermediate_size", f), "expert_intermediate_size")
        if 0 in freq:
            dense = _positive_int(dense, "dense_intermediate_size")
        elif not isinstance(dense, int) or isinstance(dense, bool) or dense < 1:
            dense = moe_size  # unused: every layer is MoE
        shared = hf.get("shared_expert_intermediate_size")
        bias = _flag(hf.get("attention_bias", False), "attention_bias")
        known = {
            "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "dense_intermediate_size",
            "expert_intermediate_size", "shared_expert_intermediate_size", "rope_theta", "rope_scaling",
            "rope_parameters", "rms_norm_eps", "attention_bias", "tie_word_embeddings", "max_position_embeddings",
            "bos_token_id", "eos_token_id", "pad_token_id", "vocab_size", "num_experts", "num_experts_per_tok",
            "moe_layer_freq", "moe_router_enable_expert_bias", "qk_layernorm", "partial_rotary_factor", "clip_qkv",
            "mask_token_id",
        }
        vocab = _positive_int(_need(hf, "vocab_size", f), "vocab_size")
        mask = hf.get("mask_token_id", LLADAMOE_MASK_TOKEN_ID if vocab > LLADAMOE_MASK_TOKEN_ID else None)
        return cls(
            vocab_size=vocab,
            hidden_size=hidden,
            num_layers=layers,
            num_heads=heads,
            num_kv_heads=_positive_int(hf.get("num_key_value_heads") or heads, "num_key_value_heads"),
            intermediate_size=dense,
            rope_theta=theta,
            rope_scaling=scaling,
            rms_norm_eps=_number(hf.get("rms_norm_eps", 1e-5), "rms_norm_eps", positive=True),
            qkv_bias=bias,
            out_bias=bias,
            tie_word_embeddings=_flag(hf.get("tie_word_embeddings", False), "tie_word_embeddings"),
            max_position_embeddings=_positive_int(hf.get("max_position_embeddings", 4096), "max_position_embeddings"),
            bos_token_id=_first(hf.get("bos_token_id")),
            eos_token_id=_first(hf.get("eos_token_id")),
            pad_token_id=_first(hf.get("pad_token_id")),
            num_experts=_positive_int(_need(hf, "num_experts", f), "num_experts"),
            num_experts_per_tok=_positive_int(_need(hf, "num_experts_per_tok", f), "num_experts_per_tok"),
            moe_intermediate_size=moe_size,
            shared_expert_intermediate_size=0 if shared is None else _positive_int(shared, "shared_expert_intermediate_size"),
            moe_layer_freq=freq,
            router="softmax",
            expert_bias=bool(hf.get("moe_router_enable_expert_bias")),
            qk_norm=bool(hf.get("qk_layernorm")),
            partial_rotary_factor=_number(hf["partial_rotary_factor"], "partial_rotary_factor", positive=True),
            clip_qkv=hf.get("clip_qkv"),
            mask_token_id=mask,
            hf_extra=_extra(hf, known),
        )

    def to_hf(self) -> dict:
        if self.router != "softmax" or self.mlp_bias or self.qkv_bias != self.out_bias:
            raise ConfigError("LLaDA-MoE's config.json expresses the softmax router, no MLP bias and one attention_bias")
        if self.head_dim != self.hidden_size // self.num_heads:
            raise ConfigError(f"LLaDA-MoE derives head_dim = hidden_size / heads; {self.head_dim} cannot be expressed")
        out = {"architectures": [ARCHITECTURE], "model_type": "lladamoe", "hidden_act": "silu",
               "auto_map": {"AutoConfig": "configuration_lladamoe.LLaDAMoEConfig",
                            "AutoModel": "modeling_lladamoe.LLaDAMoEModelLM",
                            "AutoModelForCausalLM": "modeling_lladamoe.LLaDAMoEModelLM"}}
        out.update(self.hf_extra)
        out.pop("eos_token_ids", None)
        out.update(
            vocab_size=self.vocab_size,
            hidden_size=self.hidden_size,
            num_hidden_layers=self.num_layers,
            num_attention_heads=self.num_heads,
            num_key_value_heads=self.num_kv_heads,
            dense_intermediate_size=self.intermediate_size,
            expert_intermediate_size=self.moe_intermediate_size,
            shared_expert_intermediate_size=self.shared_expert_intermediate_size or None,
            num_experts=self.num_experts,
            num_experts_per_tok=self.num_experts_per_tok,
            moe_layer_freq=list(self.moe_layer_freq),
            moe_router_enable_expert_bias=self.expert_bias or out.get("moe_router_enable_expert_bias"),
            qk_layernorm=self.qk_norm,
            partial_rotary_factor=self.partial_rotary_factor,
            clip_qkv=self.clip_qkv,
            rope_theta=self.rope_theta,
            rope_scaling=dict(self.rope_scaling) if self.rope_scaling else None,
            rms_norm_eps=self.rms_norm_eps,
            attention_bias=self.qkv_bias,
            tie_word_embeddings=self.tie_word_embeddings,
            max_position_embeddings=self.max_position_embeddings,
            eos_token_id=_eos_out(self),
            pad_token_id=self.pad_token_id,
        )
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
