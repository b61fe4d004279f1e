from .base import ModelOutput, TransformerLM, positions_from_docs
from .causal import CausalLM
from .dream import DreamModel
from .llada import LLaDAModel

MODEL_CLASSES = {"llada": LLaDAModel, "llama": CausalLM, "qwen2": CausalLM, "dream": DreamModel}

__all__ = ["ModelOutput", "TransformerLM", "CausalLM", "LLaDAModel", "DreamModel", "MODEL_CLASSES", "positions_from_docs"]
