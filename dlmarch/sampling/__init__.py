from .llada import generate

__all__ = ["generate"]
