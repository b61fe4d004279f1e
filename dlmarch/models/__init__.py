from .base import ModelOutput, TransformerLM, positions_from_docs
from .causal import CausalLM
from .dream import DreamModel
from .llada import LLaDAModel

__all__ = ["ModelOutput", "TransformerLM", "CausalLM", "LLaDAModel", "DreamModel", "positions_from_docs"]
