"""A LoRA run's adapter under the family's Hugging Face module names, for the HF model.

A LoRA run saves `adapter/` with peft, around our native modules (`blocks.0.q_proj`). Loaded with
peft onto the Hugging Face model (what d1's `eval/eval.py`, lm-evaluation-harness's `hf` model with
`peft=` and LoRA serving do), none of those names exist there: peft warns and the base model runs
unchanged. `export_hf_adapter` writes the same weights under the HF names the family's key table
gives (`model.transformer.blocks.0.q_proj` for LLaDA, `model.layers.0.self_attn.q_proj` for
Llama/Qwen2), with `target_modules` the exact HF module paths (a suffix such as LLaDA's "ff_out"
would also catch its LM head) and `base_model_name_or_path` the HF source.
"""

from __future__ import annotations

import json
from pathlib import Path

from dlmarch import safetensors_io as st
from dlmarch.atomic import atomic_directory, write_json
from dlmarch.errors import CheckpointError
from dlmarch.registry import KEY_TABLES

PEFT_PREFIX = "base_model.model."
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"


def hf_module_path(table, native_module: str) -> str:
    """The HF path of a native module (`blocks.0.q_proj` -> `model.transformer.blocks.0.q_proj`),
    through the key table's name of its weight."""
    return table.hf_name(native_module + ".weight")[: -len(".weight")]


def _split(key: str) -> tuple[str, str]:
    """`base_model.model.blocks.0.q_proj.lora_A.weight` -> (`blocks.0.q_proj`, `lora_A.weight`)."""
    if not key.startswith(PEFT_PREFIX):
        raise CheckpointError(f"adapter key {key!r} does not start with {PEFT_PREFIX!r}")
    parts = key[len(PEFT_PREFIX):].split(".")
    for i, p in enumerate(parts):
        if p.startswith("lora_"):
            return ".".join(parts[:i]), ".".join(parts[i:])
    raise CheckpointError(f"adapter key {key!r} holds no lora_ tensor (modules_to_save is not exported)")


def export_hf_adapter(adapter_dir: str | Path, dst: str | Path, family: str, base_model_name_or_path: str,
                      overwrite: bool = True) -> Path:
    """Native peft adapter directory -> the same adapter under the family's HF module names."""
    adapter_dir, dst = Path(adapter_dir), Path(dst)
    if family not in KEY_TABLES:
        raise CheckpointError(f"{adapter_dir}: no HF module names for family {family!r}")
    table = KEY_TABLES[family]
    config = json.loads((adapter_dir / ADAPTER_CONFIG).read_text())
    tensors = st.load_file(adapter_dir / ADAPTER_WEIGHTS)
    renamed, modules = {}, set()
    for key, value in tensors.items():
        module, leaf = _split(key)
        hf = hf_module_path(table, module)
        modules.add(hf)
        renamed[f"{PEFT_PREFIX}{hf}.{leaf}"] = value
    config.update(target_modules=sorted(modules), base_model_name_or_path=str(base_model_name_or_path))
    with atomic_directory(dst, overwrite=overwrite) as tmp:
        st.save_file(renamed, tmp / ADAPTER_WEIGHTS, metadata={"format": "pt"})
        write_json(tmp / ADAPTER_CONFIG, config)
    return dst


def hf_source(model_arg: str | Path) -> str:
    """The HF model a run started from: its --model when that is an HF directory or a hub id, else
    the source a native directory records (its config.json `source`), else --model itself."""
    path = Path(model_arg)
    cfg = path / "config.json"
    if cfg.is_file():
        try:
            raw = json.loads(cfg.read_text())
        except (OSError, json.JSONDecodeError):
            return str(model_arg)
        if isinstance(raw, dict) and isinstance(raw.get("source"), str):
            return raw["source"]
    return str(model_arg)


def export_run_adapter(out: Path, merged_config, args) -> dict:
    """`finish()`'s one call (trainers/export.py): with --export-hf, a LoRA run's `adapter/` also as `adapter-hf/`."""
    if not (getattr(args, "export_hf", False) and getattr(args, "lora_rank", 0)):
        return {}
    family = getattr(merged_config, "family", None)
    if family not in KEY_TABLES:  # as for model-hf/: only the families with an HF layout
        return {}
    dst = export_hf_adapter(out / "adapter", out / "adapter-hf", family, hf_source(args.model))
    return {"adapter_hf": str(dst)}
