"""dlmarch: diffusion language model architectures and the fine-tuning methods made for them."""

from .config import LLaDAConfig, LlamaConfig, Qwen2Config, TransformerConfig
from .masks import AttentionMask
from .models import CausalLM, LLaDAModel, ModelOutput, TransformerLM
from .models.l2d import L2DConfig, L2DModel
from .models.dream import DreamConfig, DreamModel
from .sampling import generate, generate_dream, generate_l2d


class AutoModel:
    """`AutoModel.from_pretrained(path)` picks the class from the checkpoint's family (HF or native)."""

    @staticmethod
    def from_pretrained(path, dtype=None, device=None, **config_overrides):
        from .checkpoint import load_pretrained

        return load_pretrained(path, dtype=dtype, device=device, **config_overrides)


__version__ = "0.1.0"

__all__ = [
    "AutoModel",
    "AttentionMask",
    "CausalLM",
    "DreamConfig",
    "DreamModel",
    "LLaDAConfig",
    "LLaDAModel",
    "LlamaConfig",
    "ModelOutput",
    "Qwen2Config",
    "TransformerConfig",
    "TransformerLM",
    "L2DConfig",
    "L2DModel",
    "generate",
    "generate_dream",
    "generate_l2d",
]
