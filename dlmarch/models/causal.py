"""Causal decoders (Llama 2/3.x, Qwen2/2.5): the main path of L2D, and plain autoregressive LMs."""

from __future__ import annotations

from ..config import LlamaConfig
from .base import TransformerLM


class CausalLM(TransformerLM):
    """Llama/Qwen2 decoder with a causal mask; tied or untied head as the config says.
    (`Qwen2Config` derives from `LlamaConfig`, so this class serves both.)"""

    config_class = LlamaConfig
