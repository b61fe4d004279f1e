"""What a model family declares, and the readers that choose among families.

A family module (`dlmarch/models/llada.py`, `causal.py`, `dream.py`, `l2d.py`) owns its config class
(HF field names), its key table (native <-> HF tensor names), its model class and the HF
`model_type` it reads, and declares them as a `Family`. `dlmarch.registry` lists every family;
the functions here take the families to choose from, so that a model class can load its own
checkpoints without knowing the others (and this module never imports a model: no import circle).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from .checkpoint import NATIVE_FORMAT, WeightFiles, build_on_meta, check_tied_head, load_weights
from .config import TransformerConfig, located, read_json
from .errors import ConfigError
from .keymaps import KeyTable


@dataclass(frozen=True)
class Family:
    """One model family. `name` is `config.family` (the native config.json's `family`);
    `hf_model_type` the `model_type` of its HF config.json (None: no HF layout of its own, as L2D);
    `key_table` maps native tensor names to the HF layout's (None with no HF layout); `claims(hf)`,
    when given, recognises the family's HF config.json whatever its `model_type` says (LLaDA-MoE's
    Hub configs say "llada")."""

    name: str
    model_class: type
    config_class: type
    key_table: KeyTable | None = None
    hf_model_type: str | None = None
    claims: Callable[[dict], bool] | None = None


def family_of_hf(hf: dict, families, where: str = "config.json") -> Family:
    """The family whose HF `model_type` an HF config.json names (or that claims it by its other keys)."""
    for f in families:
        if f.claims is not None and f.claims(hf):
            return f
    by_type = {f.hf_model_type: f for f in families if f.hf_model_type}
    model_type = hf.get("model_type")
    if model_type not in by_type:
        raise ConfigError(f"{where}: model_type {model_type!r} is not supported (supported: {sorted(by_type)})")
    return by_type[model_type]


def config_from_hf(hf: dict, families, where: str = "config.json") -> TransformerConfig:
    """The config an HF config.json describes; every error names `where`."""
    try:
        return family_of_hf(hf, families, where).config_class.from_hf(hf)
    except ConfigError as e:
        raise located(e, where) from None


def config_from_dict(d, families) -> TransformerConfig:
    """The config of a native `config` object, the class picked by its `family`."""
    if not isinstance(d, dict):
        raise ConfigError(f"a native config must be an object of fields, found {type(d).__name__}")
    by_name = {f.name: f for f in families}
    family = d.get("family")
    if family not in by_name:
        raise ConfigError(f"unknown model family {family!r} (known: {sorted(by_name)})")
    return by_name[family].config_class.from_dict(d)


def config_from_native(raw: dict, families, where) -> TransformerConfig:
    """The config of a native config.json (`{"format": "dlmarch", "config": {...}}`); errors name `where`."""
    if not isinstance(raw.get("config"), dict):
        found = "none" if "config" not in raw else type(raw["config"]).__name__
        raise ConfigError(f"{where}: a dlmarch config.json needs a 'config' object, found {found}")
    try:
        config = config_from_dict(raw["config"], families)
    except ConfigError as e:
        raise located(e, where) from None
    # `model` names the class that wrote the checkpoint; one that is not this family's (a typo, a
    # "os.system") must not load as the family's model. A subclass of it wrote it just as well.
    cls = next(f.model_class for f in families if f.name == config.family)
    if "model" in raw and raw["model"] not in _class_names(cls):
        raise ConfigError(f"{where}: model {raw['model']!r} is not a {config.family} model class "
                          f"(expected {cls.__name__!r})")
    return config


def _class_names(cls: type) -> set[str]:
    """The names of a class and of every subclass of it."""
    names, todo = set(), [cls]
    while todo:
        c = todo.pop()
        names.add(c.__name__)
        todo += c.__subclasses__()
    return names


def read_native_config(directory: str | Path) -> dict:
    """A native directory's config.json, refused when it is not one."""
    data = read_json(Path(directory) / "config.json")
    if data.get("format") != NATIVE_FORMAT:
        raise ConfigError(f"{Path(directory) / 'config.json'}: not a dlmarch checkpoint")
    return data


def load_transformer(path: str | Path, families, dtype: torch.dtype | None = None, device=None, *,
                     config_json: dict | None = None, **config_overrides) -> torch.nn.Module:
    """A TransformerLM of one of `families` from a native directory or an HF directory: built on the
    meta device, every tensor assigned as it is read (no second copy in memory). `path` may be a hub
    id (dlmarch.hub); `config_json`, its config.json when the caller has read it (not read again)."""
    from .hub import local_model_dir

    path = local_model_dir(path)
    if not path.is_dir():
        raise ConfigError(f"{path}: not a directory")
    raw = read_json(path / "config.json") if config_json is None else config_json
    if raw.get("format") == NATIVE_FORMAT:
        config = config_from_native(raw, families, path / "config.json")
        rename, ignorable, where = (lambda n: n), (lambda n: False), f"{path} (native {config.family})"
    else:
        config = config_from_hf(raw, families, str(path / "config.json"))
        table = family_of_hf(raw, families).key_table
        tied = config.tie_word_embeddings
        rename, ignorable = table.native_name, (lambda n: table.is_ignorable(n, tied))
        where = f"{path} ({config.family} checkpoint)"
    files = WeightFiles(path)
    if raw.get("format") != NATIVE_FORMAT:
        check_tied_head(files, table, tied)
    if config_overrides:
        config = config.replace(**config_overrides)
    family = next(f for f in families if f.name == config.family)
    model = build_on_meta(family.model_class, config)
    load_weights(model, files, rename, where, ignorable, dtype=dtype, device=device)
    model.source_dir = str(path)
    # How our trainers say the model should be decoded (dlmarch.sampling.options reads it).
    model.decoding = raw.get("decoding") if isinstance(raw.get("decoding"), dict) else None
    return model


__all__ = ["Family", "family_of_hf", "config_from_hf", "config_from_dict", "config_from_native", "read_native_config",
           "load_transformer"]
