"""dlmarch: diffusion language model architectures and the fine-tuning methods made for them."""

from .config import TransformerConfig
from .masks import AttentionMask
from .models import CausalLM, LLaDAModel, ModelOutput, TransformerLM
from .models.causal import LlamaConfig, Qwen2Config
from .models.dream import DreamConfig, DreamModel
from .models.l2d import L2DModel
from .models.l2d_config import L2DConfig
from .models.llada import LLaDAConfig
from .models.llada2 import LLaDA2Config, LLaDA2Model
from .models.lladamoe import LLaDAMoEConfig, LLaDAMoEModel
from .registry import AutoModel
from .sampling import DecodingOptions, generate, generate_causal, generate_dream, generate_l2d, generate_llada2, sampler_for


__version__ = "0.1.0"

__all__ = [
    "AutoModel",
    "DecodingOptions",
    "generate_causal",
    "sampler_for",
    "AttentionMask",
    "CausalLM",
    "DreamConfig",
    "DreamModel",
    "LLaDAConfig",
    "LLaDAModel",
    "LLaDA2Config",
    "LLaDA2Model",
    "LLaDAMoEConfig",
    "LLaDAMoEModel",
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
    "generate_llada2",
]
