"""Every model family, in one list, and the loaders that choose among them.

Adding a family: write its module under `dlmarch/models/` (config, key table, model class, `Family`
record; see docs/architecture.md) and add its record to `FAMILIES` below.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .checkpoint import NATIVE_FORMAT
from .config import TransformerConfig, read_json
from .errors import ConfigError
from .family import Family, config_from_hf, config_from_native
from .hub import local_model_dir
from .models import causal, dream, l2d, llada, llada2, lladamoe

FAMILIES: dict[str, Family] = {f.name: f for f in (llada.FAMILY, causal.LLAMA, causal.QWEN2, dream.FAMILY, l2d.FAMILY,
                                                  lladamoe.FAMILY, llada2.FAMILY)}

# The families with an HF layout of their own: what `python -m conversions import|export` and
# model-hf/ exports handle, and what a Transformer config.json may name.
HF_FAMILIES: dict[str, Family] = {name: f for name, f in FAMILIES.items() if f.hf_model_type}
KEY_TABLES = {name: f.key_table for name, f in HF_FAMILIES.items()}


def model_class_of(raw: dict, where) -> type[nn.Module]:
    """The model class a config.json (native or HF) describes."""
    if raw.get("format") == NATIVE_FORMAT and not isinstance(raw.get("config"), dict):
        # A family without a Transformer config of its own (L2D, a wrapper) is named by its class.
        wrappers = {f.model_class.__name__: f.model_class for f in FAMILIES.values() if not f.hf_model_type}
        if raw.get("model") in wrappers:
            return wrappers[raw["model"]]
    return HF_FAMILIES[config_of(raw, where).family].model_class


def config_of(raw: dict, where) -> TransformerConfig:
    """The config of a config.json of a Transformer family, native or HF; errors name `where`."""
    if raw.get("format") == NATIVE_FORMAT:
        return config_from_native(raw, HF_FAMILIES.values(), where)
    return config_from_hf(raw, HF_FAMILIES.values(), str(where))


def config_from_pretrained(path: str | Path) -> TransformerConfig:
    """The config of a checkpoint directory of any Transformer family, native or HF."""
    return config_of(read_json(Path(path) / "config.json"), Path(path) / "config.json")


def load_pretrained(path: str | Path, dtype: torch.dtype | None = None, device=None, **config_overrides) -> nn.Module:
    """A model of any family from its directory (native, or HF converted on the fly). Its config.json
    is read once: the class's loader takes it as read."""
    path = local_model_dir(path)
    if not path.is_dir():
        raise ConfigError(f"{path}: not a directory")
    raw = read_json(path / "config.json")
    cls = model_class_of(raw, path / "config.json")
    return cls.from_pretrained(path, dtype=dtype, device=device, config_json=raw, **config_overrides)


class AutoModel:
    """`AutoModel.from_pretrained(path)` picks the class from the checkpoint's family (HF or native)."""

    @staticmethod
    def from_pretrained(path, dtype=None, device=None, **config_overrides):
        return load_pretrained(path, dtype=dtype, device=device, **config_overrides)


__all__ = ["FAMILIES", "HF_FAMILIES", "KEY_TABLES", "AutoModel", "config_from_pretrained", "load_pretrained",
           "model_class_of"]
