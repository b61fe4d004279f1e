"""Dream (Dream-v0-7B Base/Instruct, Dream-Coder): Qwen2 run bidirectionally, with the shifted head.

Dream (Ye et al., 2025, "Dream 7B: Diffusion Large Language Models"; HKUNLP's remote code
`modeling_dream.py`, vendored in ZHZisZZ/dllm under dllm/pipelines/dream/models/) keeps Qwen2's
blocks (q/k/v bias, no o bias, grouped KV heads, SwiGLU, RMSNorm, rotate-half RoPE computed in
float32) and drops the causal mask. Its head stays autoregressive: `logits[:, i]` predicts token i+1,
which is what lets it start from a Qwen2.5 checkpoint. The sampler (dlmarch.sampling.dream) shifts
the logits right by one before scoring masked positions; this module returns them raw, as the
reference's forward does.

Padding, as the reference's `diffusion_generate` does it: a 2-D mask m (1 = token) hides padded keys
from every query and the positions are cumsum(m) - 1 (counting from 0 at the first real token;
padded slots get 1). `build_mask` below derives those positions when none are given, so that
`model(x, attention_mask)` returns the reference's logits on real tokens.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor

from ..config import _first
from ..errors import ConfigError
from ..family import Family
from ..keymaps import KeyTable
from .base import TransformerLM
from .causal import LLAMA_KEYS, Qwen2Config

# Dream's configuration_dream.py defaults (the Qwen2.5 tokenizer's <|mask|> and <|endoftext|>).
DREAM_MASK_TOKEN_ID = 151666
DREAM_PAD_TOKEN_ID = 151643


@dataclass
class DreamConfig(Qwen2Config):
    """Dream's config.json (`model_type` "Dream", `architectures` ["DreamModel"]): Qwen2's fields
    plus `mask_token_id`."""

    mask_token_id: int = DREAM_MASK_TOKEN_ID
    max_position_embeddings: int = 32768

    family: ClassVar[str] = "dream"
    causal: ClassVar[bool] = False
    _model_type: ClassVar[str] = "Dream"
    _architecture: ClassVar[str] = "DreamModel"

    @classmethod
    def from_hf(cls, hf: dict) -> "DreamConfig":
        f = "Dream"
        if hf.get("use_sliding_window"):
            raise ConfigError("Dream config.json: use_sliding_window=true is not supported")
        kw = cls._common_hf(hf, f)
        # Where config.json is silent, DreamConfig's own defaults apply (not _common_hf's).
        if "max_position_embeddings" not in hf:
            kw["max_position_embeddings"] = 32768
        if hf.get("pad_token_id") is None:
            kw["pad_token_id"] = DREAM_PAD_TOKEN_ID
        mask = hf.get("mask_token_id", DREAM_MASK_TOKEN_ID)
        if mask is None or mask == []:
            raise ConfigError(f"Dream config.json: mask_token_id is {json.dumps(mask)} (the sampler needs one)")
        kw["hf_extra"].pop("mask_token_id", None)
        # A list keeps its first id, as for eos_token_id; the value is checked (an integer in the
        # vocabulary) with every other token id, never cast.
        return cls(qkv_bias=True, out_bias=False, mlp_bias=False, mask_token_id=_first(mask), **kw)

    def to_hf(self) -> dict:
        """The 7B's layout: Qwen2's fields, `mask_token_id`, the remote-code `auto_map`; no
        `head_dim` (Dream derives it) and no transformers-5 `rope_parameters` (DreamConfig's
        rope_config_validation reads rope_scaling)."""
        if not self.qkv_bias or self.out_bias or self.mlp_bias:
            raise ConfigError("Dream's layout has q/k/v bias and no other bias")
        if self.head_dim != self.hidden_size // self.num_heads:
            raise ConfigError(f"Dream derives head_dim = hidden_size / heads; {self.head_dim} cannot be expressed")
        out = self._common_to_hf()
        out.pop("rope_parameters")
        out.pop("head_dim")
        out.setdefault("auto_map", {"AutoConfig": "configuration_dream.DreamConfig",
                                    "AutoModel": "modeling_dream.DreamModel"})
        out.setdefault("use_sliding_window", False)
        out["mask_token_id"] = self.mask_token_id
        return out


class DreamModel(TransformerLM):
    """Bidirectional Qwen2 with an autoregressive head: `model(x, attention_mask).logits[:, i]` is the
    distribution of token i+1 of a partially masked canvas. The mask id is `config.mask_token_id`.
    Sample with `dlmarch.generate_dream`."""

    config_class = DreamConfig
    kind = "masked-diffusion"
    shifted_logits = True  # the autoregressive head Dream keeps from Qwen2.5
    sampler = "generate_dream"
    likelihood = "dream"

    def build_mask(self, input_ids: Tensor, attention_mask: Tensor | None = None, *, position_ids: Tensor | None = None,
                   doc_ids: Tensor | None = None, past_len: int = 0):
        """As the base, but a padded batch without explicit positions gets Dream's positions
        cumsum(mask) - 1 (1 on padded slots), so that every row's first real token is at position 0."""
        if (position_ids is None and doc_ids is None and past_len == 0 and attention_mask is not None
                and not bool(attention_mask.all())):
            m = attention_mask.long()
            position_ids = (m.cumsum(-1) - 1).masked_fill(m == 0, 1)
        return super().build_mask(input_ids, attention_mask, position_ids=position_ids, doc_ids=doc_ids,
                                  past_len=past_len)


# Dream stores Qwen2's names (model.*, lm_head.weight) under model_type "Dream".
KEYS = KeyTable(family="dream", pairs=LLAMA_KEYS.pairs, ignorable=LLAMA_KEYS.ignorable, tied_head="lm_head.weight")

FAMILY = Family(name="dream", model_class=DreamModel, config_class=DreamConfig, key_table=KEYS, hf_model_type="Dream")
DreamModel.families = (FAMILY,)

__all__ = ["DreamConfig", "DreamModel", "KEYS", "FAMILY"]
