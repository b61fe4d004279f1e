"""L2D checkpoints: the diffusion path's weights and options in a directory of their own, beside a
reference to the frozen main path (never copied: a hub id, or a path relative to the checkpoint) and
the main path's fingerprint, checked when the two are loaded together."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch
from torch import nn

from ..checkpoint import NATIVE_FORMAT, WeightFiles, copy_weights, is_weight_file, native_header, write_weights
from ..config import read_json
from ..errors import ConfigError
from ..family import config_from_dict, read_native_config
from ..hub import is_hub_id, local_model_dir, snapshot_repo_id
from ..atomic import atomic_update, write_json
from .causal import CausalLM
from .l2d_config import L2DConfig


def load_main(path_or_model, dtype=None, device=None, **config_overrides) -> CausalLM:
    """L2D's main path: a loaded CausalLM, or a Llama/Qwen2 checkpoint directory (HF or native)."""
    if isinstance(path_or_model, nn.Module):
        main = path_or_model
    else:
        path = local_model_dir(path_or_model, "L2D main path")
        raw = read_json(path / "config.json")  # read once: the loader takes it as read
        if raw.get("format") == NATIVE_FORMAT:
            found = raw["config"].get("family") if isinstance(raw.get("config"), dict) else raw.get("model")
        else:
            found = raw.get("model_type")
        if found not in {f.name for f in CausalLM.families} | {f.hf_model_type for f in CausalLM.families}:
            raise ConfigError(f"{path}: L2D's main path is Llama or Qwen2, not {found}")
        main = CausalLM.from_pretrained(path, dtype=dtype, device=device, config_json=raw, **config_overrides)
    if not isinstance(main, CausalLM):
        raise ConfigError(f"L2D wraps a Llama or Qwen2 model, not a {type(main).__name__}")
    return main


def main_fingerprint(main: nn.Module) -> str:
    """sha256 over the main path's parameter names, shapes and values rounded to bfloat16: the
    diffusion path is trained against these weights, so a checkpoint records it and loading checks
    it. Rounding to bfloat16 makes it the same whether the main path was loaded in fp32 or bf16."""
    h = hashlib.sha256()
    with torch.no_grad():
        for name, t in sorted(main.state_dict().items()):
            h.update(f"{name}:{tuple(t.shape)};".encode())
            if t.is_floating_point():
                t = t.to(torch.bfloat16)
            h.update(memoryview(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()))
    return h.hexdigest()


def main_reference(main_path: str | Path, checkpoint: str | Path) -> str:
    """How an L2D checkpoint at `checkpoint` names its main path: a hub id as is (or the id of a hub-cache
    snapshot), a local directory relative to the checkpoint (absolute only across filesystem roots)."""
    text = str(main_path)
    if is_hub_id(text):
        return text
    main = Path(main_path).resolve()
    repo_id = snapshot_repo_id(main)
    if repo_id is not None:
        return repo_id
    try:
        return os.path.relpath(main, Path(checkpoint).resolve())
    except ValueError:  # another drive (Windows)
        return str(main)




def save_l2d(model, path: str | Path, main_path: str | Path | None = None, decoding: dict | None = None) -> None:
    """`L2DModel.save_pretrained`: the diffusion path's weights and options, plus a reference to the main
    path (`main_reference`), written atomically."""
    main_path = main_path or getattr(model, "main_source", None)
    if main_path is None:
        raise ValueError("save_pretrained needs main_path: where the main path's checkpoint lives")
    path = Path(path)
    existing = path / "config.json"
    if existing.is_file():  # replacing another model's files (its main path's, say) would destroy them
        try:
            raw = read_json(existing)
        except ConfigError:
            raw = None
        if not (isinstance(raw, dict) and raw.get("format") == NATIVE_FORMAT and raw.get("model") == type(model).__name__):
            raise ConfigError(f"{path} holds a model that is not an {type(model).__name__} checkpoint ({existing}); "
                              f"save_pretrained does not replace it: choose another directory")
    state = [(k, v.detach()) for k, v in model.diffusion_state_dict().items()]
    with atomic_update(path, stale=is_weight_file) as tmp:
        write_weights(tmp, state, 5 * 2**30, metadata={"format": "pt"})
        write_json(tmp / "config.json", native_header(type(model).__name__, main=main_reference(main_path, path),
                                                      main_config=model.main.config.to_dict(),
                                                      main_fingerprint=main_fingerprint(model.main),
                                                      l2d=model.config.to_dict(),
                                                      **({"decoding": decoding} if decoding else {})))


def _main_dir(raw: dict, path: Path, main_path: str | Path | None) -> str | Path:
    """Where the main path of the L2D checkpoint at `path` (config.json `raw`) lives: `main_path` when
    given, else the hub id it records, else its recorded path, relative to the checkpoint."""
    if main_path is not None:
        return main_path
    if is_hub_id(raw["main"]) and not (path / raw["main"]).exists():
        return raw["main"]
    # recorded relative to this directory (older checkpoints: as given, relative to where they ran)
    main_dir = Path(raw["main"])
    if not main_dir.is_absolute() and (path / main_dir).exists():
        main_dir = path / main_dir
    return main_dir


def load_l2d(cls, path: str | Path, dtype=None, device=None, main_path: str | Path | None = None,
             config_json: dict | None = None, **main_overrides) -> nn.Module:
    """`cls.from_pretrained` (cls: L2DModel): the checkpoint at `path` on its main path, which must have
    the config and the weights it was trained on. `config_json`: its config.json when already read."""
    path = Path(path)
    raw = read_native_config(path) if config_json is None else config_json
    if raw.get("format") != NATIVE_FORMAT:
        raise ConfigError(f"{path / 'config.json'}: not a dlmarch checkpoint")
    if raw.get("model") != "L2DModel":
        raise ConfigError(f"{path}: not an L2D checkpoint")
    main_dir = _main_dir(raw, path, main_path)
    main = load_main(main_dir, dtype=dtype, device=device, **main_overrides)
    want = config_from_dict(raw["main_config"], CausalLM.families)
    if want.replace(attn_backend=main.config.attn_backend) != main.config:
        raise ConfigError(f"{path}: its main path config differs from the one at {main_dir}")
    recorded = raw.get("main_fingerprint")  # absent in checkpoints written before it was recorded
    if recorded is not None and recorded != main_fingerprint(main):
        raise ConfigError(f"{path}: the main path at {main_dir} has other weights than the one this L2D checkpoint "
                          f"was trained on (fingerprint {main_fingerprint(main)[:12]}, expected {recorded[:12]})")
    model = cls(main, L2DConfig.from_dict(raw["l2d"]))
    copy_weights(model.diffusion_state_dict(), WeightFiles(path), f"{path} (L2D)")
    model.main_source = str(main_dir)
    model.decoding = raw.get("decoding") if isinstance(raw.get("decoding"), dict) else None
    return model
