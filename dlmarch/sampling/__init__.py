from .causal import generate_causal
from .dispatch import SAMPLERS, Sampler, sampler_for
from .dream import generate_dream
from .l2d import generate_l2d
from .llada import generate
from .llada2 import generate_llada2
from .options import DecodingOptions, OptionError

__all__ = ["generate", "generate_causal", "generate_dream", "generate_l2d", "generate_llada2", "sampler_for", "Sampler", "SAMPLERS",
           "DecodingOptions", "OptionError"]
