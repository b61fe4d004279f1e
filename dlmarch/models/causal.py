"""Causal decoders (Llama 2/3.x, Qwen2/2.5): the main path of L2D, and plain autoregressive LMs.
Two families share this module and its model class: their configs (transformers' config.json
names), their key tables (transformers' tensor names) and their `Family` records."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..config import (TransformerConfig, _eos_out, _expect, _extra, _first, _flag, _hf_rope, _need, _number,
                      _positive_int)
from ..errors import ConfigError
from ..family import Family
from ..keymaps import KeyTable
from .base import TransformerLM


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
        n_heads = _positive_int(_need(hf, "num_attention_heads", f), "num_attention_heads")
        hidden = _positive_int(_need(hf, "hidden_size", f), "hidden_size")
        known = {
            "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
            "intermediate_size", "head_dim", "rope_theta", "rope_scaling", "rope_parameters",
            "rms_norm_eps", "attention_bias", "mlp_bias", "tie_word_embeddings",
            "max_position_embeddings", "bos_token_id", "eos_token_id", "pad_token_id", "vocab_size",
        }
        return dict(
            vocab_size=_positive_int(_need(hf, "vocab_size", f), "vocab_size"),
            hidden_size=hidden,
            num_layers=_positive_int(_need(hf, "num_hidden_layers", f), "num_hidden_layers"),
            num_heads=n_heads,
            num_kv_heads=_positive_int(hf.get("num_key_value_heads") or n_heads, "num_key_value_heads"),
            intermediate_size=_positive_int(_need(hf, "intermediate_size", f), "intermediate_size"),
            head_dim=_positive_int(hf.get("head_dim") or hidden // n_heads, "head_dim"),
            rope_theta=theta,
            rope_scaling=scaling,
            rms_norm_eps=_number(hf.get("rms_norm_eps", 1e-6), "rms_norm_eps", positive=True),
            tie_word_embeddings=_flag(hf.get("tie_word_embeddings", False), "tie_word_embeddings"),
            max_position_embeddings=_positive_int(hf.get("max_position_embeddings", 2048), "max_position_embeddings"),
            bos_token_id=_first(hf.get("bos_token_id")),
            eos_token_id=_first(hf.get("eos_token_id")),
            pad_token_id=_first(hf.get("pad_token_id")),
            hf_extra=_extra(hf, known),
        )

    @classmethod
    def from_hf(cls, hf: dict) -> "LlamaConfig":
        kw = cls._common_hf(hf, "Llama")
        bias = _flag(hf.get("attention_bias", False), "attention_bias")
        return cls(qkv_bias=bias, out_bias=bias, mlp_bias=_flag(hf.get("mlp_bias", False), "mlp_bias"), **kw)

    def _common_to_hf(self) -> dict:
        out = {"architectures": [self._architecture], "model_type": self._model_type, "hidden_act": "silu"}
        out.update(self.hf_extra)
        out.pop("eos_token_ids", None)
        out.update(
            vocab_size=self.vocab_size,
            hidden_size=self.hidden_size,
            num_hidden_layers=self.num_layers,
            num_attention_heads=self.num_heads,
            num_key_value_heads=self.num_kv_heads,
            intermediate_size=self.intermediate_size,
            head_dim=self.head_dim,
            rms_norm_eps=self.rms_norm_eps,
            tie_word_embeddings=self.tie_word_embeddings,
            max_position_embeddings=self.max_position_embeddings,
            bos_token_id=self.bos_token_id,
            eos_token_id=_eos_out(self),
            pad_token_id=self.pad_token_id,
        )
        # Both spellings, so that transformers 4.x and 5.x read the same rotary settings.
        out["rope_theta"] = self.rope_theta
        out["rope_scaling"] = dict(self.rope_scaling) if self.rope_scaling else None
        params = {"rope_theta": self.rope_theta, "rope_type": "default"}
        if self.rope_scaling:
            params.update(self.rope_scaling)
            params.setdefault("rope_type", params.pop("type", "default"))
        out["rope_parameters"] = params
        return out

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
