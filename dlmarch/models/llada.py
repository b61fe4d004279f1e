"""LLaDA: the masked-diffusion transformer (arXiv 2502.09992; ML-GSAI/LLaDA). A Llama-shaped decoder run
bidirectionally. This module is the family: its config (LLaDA's config.json names), its key table,
its model class and its `Family` record."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..config import (TransformerConfig, _eos_out, _expect, _extra, _first, _flag, _need, _number,
                      _positive_int)
from ..errors import ConfigError
from ..family import Family
from ..keymaps import KeyTable
from .base import TransformerLM


@dataclass
class LLaDAConfig(TransformerConfig):
    """LLaDA: a Llama-shaped decoder run without a causal mask (arXiv 2502.09992; ML-GSAI/LLaDA)."""

    mask_token_id: int = 126336
    # <|eot_id|> of the LLaDA tokenizer; not in LLaDA's config.json, so the sampler's CLI reads it
    # from the tokenizer when present.
    eot_token_id: int | None = None
    rope_in_fp32: bool = True
    max_position_embeddings: int = 4096

    family: ClassVar[str] = "llada"
    _model_type: ClassVar[str] = "llada"
    causal: ClassVar[bool] = False

    @classmethod
    def from_hf(cls, hf: dict) -> "LLaDAConfig":
        f = "LLaDA"
        if "num_experts" in hf:  # the Hub's LLaDA-MoE configs say model_type "llada" too
            raise ConfigError("an LLaDA-MoE config.json (num_experts); load it with dlmarch.AutoModel or LLaDAMoEModel")
        _expect(hf, "block_type", ("llama",), f)
        _expect(hf, "activation_type", ("silu", "swiglu"), f)
        _expect(hf, "layer_norm_type", ("rms",), f)
        _expect(hf, "rope", (True,), f)
        _expect(hf, "alibi", (False,), f)
        _expect(hf, "scale_logits", (False,), f)
        _expect(hf, "input_emb_norm", (False,), f)
        _expect(hf, "attention_layer_norm", (False,), f)
        _expect(hf, "block_group_size", (1,), f)
        _expect(hf, "layer_norm_with_affine", (True,), f)
        n_heads = _positive_int(_need(hf, "n_heads", f), "n_heads")
        n_kv = hf.get("n_kv_heads")
        if n_kv is None:
            n_kv = 1 if hf.get("multi_query_attention") else n_heads
        include_bias = _flag(hf.get("include_bias", False), "include_bias")
        vocab_key = "embedding_size" if hf.get("embedding_size") is not None else "vocab_size"
        vocab = _positive_int(_need(hf, vocab_key, f), vocab_key)
        known = {
            "d_model", "n_layers", "n_heads", "n_kv_heads", "mlp_hidden_size", "embedding_size",
            "rope_theta", "rms_norm_eps", "include_bias", "include_qkv_bias", "weight_tying",
            "max_sequence_length", "eos_token_id", "pad_token_id", "mask_token_id", "bos_token_id",
        }
        return cls(
            vocab_size=vocab,
            hidden_size=_positive_int(_need(hf, "d_model", f), "d_model"),
            num_layers=_positive_int(_need(hf, "n_layers", f), "n_layers"),
            num_heads=n_heads,
            num_kv_heads=_positive_int(n_kv, "n_kv_heads"),
            intermediate_size=_positive_int(_need(hf, "mlp_hidden_size", f), "mlp_hidden_size"),
            rope_theta=_number(hf.get("rope_theta", 10000.0), "rope_theta", positive=True),
            rms_norm_eps=_number(hf.get("rms_norm_eps", 1e-5), "rms_norm_eps", positive=True),
            qkv_bias=include_bias or _flag(hf.get("include_qkv_bias", False), "include_qkv_bias"),
            out_bias=include_bias,
            mlp_bias=include_bias,
            tie_word_embeddings=_flag(hf.get("weight_tying", False), "weight_tying"),
            max_position_embeddings=_positive_int(hf.get("max_sequence_length", 4096), "max_sequence_length"),
            bos_token_id=_first(hf.get("bos_token_id")),
            eos_token_id=_first(hf.get("eos_token_id")),
            pad_token_id=_first(hf.get("pad_token_id")),
            mask_token_id=hf.get("mask_token_id", 126336),
            hf_extra=_extra(hf, known),
        )

    def to_hf(self) -> dict:
        if self.qkv_bias != self.out_bias or self.out_bias != self.mlp_bias:
            if self.out_bias or self.mlp_bias:
                raise ConfigError("LLaDA's config can express q/k/v bias alone or bias everywhere")
        out = {
            "architectures": ["LLaDAModelLM"],
            "model_type": "llada",
            "block_type": "llama",
            "activation_type": "silu",
            "layer_norm_type": "rms",
            "rope": True,
            "alibi": False,
            "rope_full_precision": True,
            "auto_map": {
                "AutoConfig": "configuration_llada.LLaDAConfig",
                "AutoModel": "modeling_llada.LLaDAModelLM",
                "AutoModelForCausalLM": "modeling_llada.LLaDAModelLM",
            },
        }
        out.update(self.hf_extra)
        out.pop("eos_token_ids", None)
        out.update(
            d_model=self.hidden_size,
            n_layers=self.num_layers,
            n_heads=self.num_heads,
            n_kv_heads=self.num_kv_heads,
            mlp_hidden_size=self.intermediate_size,
            mlp_ratio=out.get("mlp_ratio", max(1, round(self.intermediate_size / self.hidden_size))),
            embedding_size=self.vocab_size,
            vocab_size=out.get("vocab_size", self.vocab_size),
            rope_theta=self.rope_theta,
            rms_norm_eps=self.rms_norm_eps,
            include_bias=self.out_bias,
            include_qkv_bias=self.qkv_bias and not self.out_bias,
            weight_tying=self.tie_word_embeddings,
            max_sequence_length=self.max_position_embeddings,
            eos_token_id=_eos_out(self),
            pad_token_id=self.pad_token_id,
            mask_token_id=self.mask_token_id,
        )
        if self.bos_token_id is not None:
            out["bos_token_id"] = self.bos_token_id
        return out


_LLADA_LAYER = ["attn_norm", "q_proj", "k_proj", "v_proj", "attn_out", "ff_norm", "ff_proj", "up_proj", "ff_out"]

KEYS = KeyTable(
    family="llada",
    pairs=[
        ("wte.weight", "model.transformer.wte.weight"),
        ("ln_f.weight", "model.transformer.ln_f.weight"),
        ("lm_head.weight", "model.transformer.ff_out.weight"),
    ]
    + [
        (f"blocks.{{i}}.{m}.{p}", f"model.transformer.blocks.{{i}}.{m}.{p}")
        for m in _LLADA_LAYER
        for p in ("weight", "bias")
    ],
    tied_head="model.transformer.ff_out.weight",
)


class LLaDAModel(TransformerLM):
    """Bidirectional mask predictor: `model(x, attention_mask).logits` scores every position of a
    partially masked canvas. The mask token id lives in `config.mask_token_id`."""

    config_class = LLaDAConfig
    kind = "masked-diffusion"
    shifted_logits = False  # logits[:, i] scores token i itself
    sampler = "generate"
    likelihood = "llada"


FAMILY = Family(name="llada", model_class=LLaDAModel, config_class=LLaDAConfig, key_table=KEYS, hf_model_type="llada")
LLaDAModel.families = (FAMILY,)

__all__ = ["LLaDAConfig", "LLaDAModel", "KEYS", "FAMILY"]
