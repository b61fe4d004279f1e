from .base import ModelOutput, TransformerLM, positions_from_docs
from .causal import CausalLM
from .llada import LLaDAModel

MODEL_CLASSES = {"llada": LLaDAModel, "llama": CausalLM, "qwen2": CausalLM}

__all__ = ["ModelOutput", "TransformerLM", "CausalLM", "LLaDAModel", "MODEL_CLASSES", "positions_from_docs"]
