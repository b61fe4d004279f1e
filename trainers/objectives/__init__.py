"""Objectives: small functions of (model, batch, generator) returning an ObjectiveOutput.

One module per method (sft, gift, blockwise, lift, l2d); import the function from its module.
"""

from .common import ObjectiveOutput

__all__ = ["ObjectiveOutput"]
