"""The one map from the dtype names our command lines take to torch dtypes, and back to the names HF
writes in config.json's `torch_dtype`. (safetensors' own codes, "F32", "BF16", ..., are the file
format's and live in dlmarch.safetensors_io.)"""

from __future__ import annotations

import torch

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
HF_DTYPE_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}


def parse_dtype(name: str | None) -> torch.dtype | None:
    """A dtype name, short (fp32, bf16, fp16) or HF's (float32, bfloat16, float16) -> torch dtype; None stays None."""
    if name is None:
        return None
    by_name = {**DTYPES, **{v: k for k, v in HF_DTYPE_NAMES.items()}}
    if name not in by_name:
        raise ValueError(f"unknown dtype {name!r} (choose from {', '.join(DTYPES)})")
    return by_name[name]


__all__ = ["DTYPES", "HF_DTYPE_NAMES", "parse_dtype"]
