from .dream import generate_dream
from .l2d import generate_l2d
from .llada import generate
from .llada2 import generate_llada2


def sampler_for(model):
    """The sampler a model declares (`model.sampler`, the model protocol), or None for a causal model."""
    return None if model.sampler is None else globals()[model.sampler]


__all__ = ["generate", "generate_dream", "generate_l2d", "generate_llada2", "sampler_for"]
