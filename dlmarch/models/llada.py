"""LLaDA: the masked-diffusion transformer (arXiv 2502.09992; ML-GSAI/LLaDA). A Llama-shaped decoder run
bidirectionally. This module is the family: its config (LLaDA's config.json names), its key table,
its model class and its `Family` record."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..config import (HFField, TransformerConfig, _eos_out, _expect, _extra, _first, _flag, _need, _positive_int,
                      hf_known, hf_read, hf_write)
from ..errors import ConfigError
from ..family import Family
from ..keymaps import KeyTable
from .base import TransformerLM


# LLaDA's config.json fields, in the order to_hf writes them; from_hf reads those without a `read`
# (and the vocabulary, bos_token_id, the biases) itself.
FIELDS = (
    HFField("d_model", "hidden_size", "count"),
    HFField("n_layers", "num_layers", "count"),
    HFField("n_heads", "num_heads", "count"),
    HFField("n_kv_heads", "num_kv_heads"),
    HFField("mlp_hidden_size", "intermediate_size", "count"),
    HFField("mlp_ratio", None,
            out=lambda c: c.hf_extra.get("mlp_ratio", max(1, round(c.intermediate_size / c.hidden_size)))),
    HFField("embedding_size", "vocab_size"),
    HFField("vocab_size", None, out=lambda c: c.hf_extra.get("vocab_size", c.vocab_size)),
    HFField("rope_theta", "rope_theta", "number", 10000.0),
    HFField("rms_norm_eps", "rms_norm_eps", "number", 1e-5),
    HFField("include_bias", "out_bias"),
    HFField("include_qkv_bias", "qkv_bias", out=lambda c: c.qkv_bias and not c.out_bias),
    HFField("weight_tying", "tie_word_embeddings", "flag", False),
    HFField("max_sequence_length", "max_position_embeddings", "count", 4096),
    HFField("eos_token_id", "eos_token_id", "token", None, out=_eos_out),
    HFField("pad_token_id", "pad_token_id", "token", None),
    HFField("mask_token_id", "mask_token_id", "value", 126336),
)


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
        kw = hf_read(hf, FIELDS, f)
        return cls(
            vocab_size=_positive_int(_need(hf, vocab_key, f), vocab_key),
            num_kv_heads=_positive_int(n_kv, "n_kv_heads"),
            qkv_bias=include_bias or _flag(hf.get("include_qkv_bias", False), "include_qkv_bias"),
            out_bias=include_bias,
            mlp_bias=include_bias,
            bos_token_id=_first(hf.get("bos_token_id")),
            # mlp_ratio and vocab_size stay as imported (hf_extra); to_hf derives them where absent
            hf_extra=_extra(hf, hf_known(FIELDS, "bos_token_id") - {"mlp_ratio", "vocab_size"}),
            **kw,
        )

    def to_hf(self) -> dict:
        if self.qkv_bias != self.out_bias or self.out_bias != self.mlp_bias:
            if self.out_bias or self.mlp_bias:
                raise ConfigError("LLaDA's config can express q/k/v bias alone or bias everywhere")
        head = {
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
        out = hf_write(self, head, FIELDS)
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
