from .dream import generate_dream
from .l2d import generate_l2d
from .llada import generate

__all__ = ["generate", "generate_dream", "generate_l2d"]
