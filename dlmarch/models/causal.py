"""Causal decoders (Llama 2/3.x, Qwen2/2.5): the main path of L2D, and plain autoregressive LMs.
Two families share this module and its model class: their configs (transformers' config.json
names), their key tables (transformers' tensor names) and their `Family` records."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..config import (HF_SHAPE_FIELDS, HFField, TransformerConfig, _eos_out, _expect, _extra, _flag, _hf_rope,
                      _positive_int, hf_known, hf_read, hf_rope_scaling, hf_write)
from ..errors import ConfigError
from ..family import Family
from ..keymaps import KeyTable
from .base import TransformerLM


def _rope_parameters(cfg: "LlamaConfig") -> dict:
    """transformers 5.x's spelling of the rotary settings (rope_theta and rope_type in one object)."""
    params = {"rope_theta": cfg.rope_theta, "rope_type": "default"}
    if cfg.rope_scaling:
        params.update(cfg.rope_scaling)
        params.setdefault("rope_type", params.pop("type", "default"))
    return params


# Llama's config.json fields (Qwen2's and Dream's too), in the order to_hf writes them; from_hf reads
# num_key_value_heads and head_dim (defaults derived from the others) and the rotary fields itself.
LLAMA_FIELDS = HF_SHAPE_FIELDS + (
    HFField("intermediate_size", "intermediate_size", "count"),
    HFField("head_dim", "head_dim"),
    HFField("rms_norm_eps", "rms_norm_eps", "number", 1e-6),
    HFField("tie_word_embeddings", "tie_word_embeddings", "flag", False),
    HFField("max_position_embeddings", "max_position_embeddings", "count", 2048),
    HFField("bos_token_id", "bos_token_id", "token", None),
    HFField("eos_token_id", "eos_token_id", "token", None, out=_eos_out),
    HFField("pad_token_id", "pad_token_id", "token", None),
    # Both spellings, so that transformers 4.x and 5.x read the same rotary settings.
    HFField("rope_theta", "rope_theta"),
    HFField("rope_scaling", "rope_scaling", out=hf_rope_scaling),
    HFField("rope_parameters", None, out=_rope_parameters),
)


@dataclass
class LlamaConfig(TransformerConfig):
    """Llama 2/3.x causal decoders (transformers' LlamaForCausalLM)."""

    family: ClassVar[str] = "llama"
    causal: ClassVar[bool] = True
    _model_type: ClassVar[str] = "llama"
    _architecture: ClassVar[str] = "LlamaForCausalLM"

    @classmethod
    def _common_hf(cls, hf: dict, f: str) -> dict:
        _expect(hf, "hidden_act", ("silu",), f)
        theta, scaling = _hf_rope(hf)
        kw = hf_read(hf, LLAMA_FIELDS, f)
        heads = kw["num_heads"]
        kw.update(
            num_kv_heads=_positive_int(hf.get("num_key_value_heads") or heads, "num_key_value_heads"),
            head_dim=_positive_int(hf.get("head_dim") or kw["hidden_size"] // heads, "head_dim"),
            rope_theta=theta,
            rope_scaling=scaling,
            hf_extra=_extra(hf, hf_known(LLAMA_FIELDS, "attention_bias", "mlp_bias")),
        )
        return kw

    @classmethod
    def from_hf(cls, hf: dict) -> "LlamaConfig":
        kw = cls._common_hf(hf, "Llama")
        bias = _flag(hf.get("attention_bias", False), "attention_bias")
        return cls(qkv_bias=bias, out_bias=bias, mlp_bias=_flag(hf.get("mlp_bias", False), "mlp_bias"), **kw)

    def _common_to_hf(self) -> dict:
        head = {"architectures": [self._architecture], "model_type": self._model_type, "hidden_act": "silu"}
        return hf_write(self, head, LLAMA_FIELDS)

    def to_hf(self) -> dict:
        if self.qkv_bias != self.out_bias:
            raise ConfigError("Llama's config has one attention_bias for q, k, v and o")
        out = self._common_to_hf()
        out.update(attention_bias=self.qkv_bias, mlp_bias=self.mlp_bias)
        return out


@dataclass
class Qwen2Config(LlamaConfig):
    """Qwen2 / Qwen2.5: Llama with a bias on q, k and v (not on o)."""

    qkv_bias: bool = True

    family: ClassVar[str] = "qwen2"
    _model_type: ClassVar[str] = "qwen2"
    _architecture: ClassVar[str] = "Qwen2ForCausalLM"

    @classmethod
    def from_hf(cls, hf: dict) -> "Qwen2Config":
        if hf.get("use_sliding_window"):
            raise ConfigError("Qwen2 config.json: use_sliding_window=true is not supported")
        kw = cls._common_hf(hf, "Qwen2")
        return cls(qkv_bias=True, out_bias=False, mlp_bias=False, **kw)

    def to_hf(self) -> dict:
        if not self.qkv_bias or self.out_bias or self.mlp_bias:
            raise ConfigError("Qwen2's layout has q/k/v bias and no other bias")
        out = self._common_to_hf()
        out.setdefault("use_sliding_window", False)
        return out


_LLAMA_LAYER = {
    "attn_norm": "input_layernorm",
    "q_proj": "self_attn.q_proj",
    "k_proj": "self_attn.k_proj",
    "v_proj": "self_attn.v_proj",
    "attn_out": "self_attn.o_proj",
    "ff_norm": "post_attention_layernorm",
    "ff_proj": "mlp.gate_proj",
    "up_proj": "mlp.up_proj",
    "ff_out": "mlp.down_proj",
}

LLAMA_KEYS = KeyTable(
    family="llama",
    pairs=[
        ("wte.weight", "model.embed_tokens.weight"),
        ("ln_f.weight", "model.norm.weight"),
        ("lm_head.weight", "lm_head.weight"),
    ]
    + [
        (f"blocks.{{i}}.{ours}.{p}", f"model.layers.{{i}}.{theirs}.{p}")
        for ours, theirs in _LLAMA_LAYER.items()
        for p in ("weight", "bias")
    ],
    ignorable=("model.layers.{i}.self_attn.rotary_emb.inv_freq",),
    tied_head="lm_head.weight",
)

# Qwen2 uses Llama's names (its q/k/v biases are the `.bias` entries above).
QWEN2_KEYS = KeyTable(family="qwen2", pairs=LLAMA_KEYS.pairs, ignorable=LLAMA_KEYS.ignorable, tied_head="lm_head.weight")


class CausalLM(TransformerLM):
    """Llama/Qwen2 decoder with a causal mask; tied or untied head as the config says.
    (`Qwen2Config` derives from `LlamaConfig`, so this class serves both.)"""

    config_class = LlamaConfig


LLAMA = Family(name="llama", model_class=CausalLM, config_class=LlamaConfig, key_table=LLAMA_KEYS, hf_model_type="llama")
QWEN2 = Family(name="qwen2", model_class=CausalLM, config_class=Qwen2Config, key_table=QWEN2_KEYS, hf_model_type="qwen2")
CausalLM.families = (LLAMA, QWEN2)

__all__ = ["LlamaConfig", "Qwen2Config", "CausalLM", "LLAMA_KEYS", "QWEN2_KEYS", "LLAMA", "QWEN2"]
