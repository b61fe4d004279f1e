"""LLaDA: the masked-diffusion transformer (arXiv 2502.09992; ML-GSAI/LLaDA). A Llama-shaped decoder run bidirectionally."""

from __future__ import annotations

from ..config import LLaDAConfig
from .base import TransformerLM


class LLaDAModel(TransformerLM):
    """Bidirectional mask predictor: `model(x, attention_mask).logits` scores every position of a
    partially masked canvas. The mask token id lives in `config.mask_token_id`."""

    config_class = LLaDAConfig

    @property
    def mask_token_id(self) -> int:
        return self.config.mask_token_id
