"""What a finished run leaves: model/ (native weights, LoRA merged, with the tokenizer and the
training record), adapter/ for a LoRA run, and with --export-hf model-hf/ and adapter-hf/.

Each is written through the output guard (dlmarch/outputs.py), so a kill or a full disk leaves
the run's checkpoints as they were; a full disk ends the run with one line naming the last
intact checkpoint.
"""

from __future__ import annotations

from pathlib import Path

import torch

from dlmarch.atomic import DiskFullError, atomic_directory, disk_full, write_json
from dlmarch.registry import load_pretrained

from .checkpoints import last_good
from .distributed import is_sharded
from .lora import wrap_lora
from .record import TRAINING_RECORD, TrainingRecord


def finish(out: Path, model, base, tokenizer, args, rank: int, model_loader=None,
           info: TrainingRecord | None = None) -> dict:
    """Final artefacts: model/ (native, merged for LoRA, with the tokenizer, the training record
    training.json, and its decoding hints in config.json, which the sampler reads to warn about a
    mismatched block length), adapter/ for LoRA runs, model-hf/ with --export-hf."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))  # collective
    if rank != 0:
        return {}
    if is_sharded(model):  # FSDP: rebuild a plain copy on rank 0 from the gathered weights
        cpu = torch.device("cpu")
        base = model_loader(args, cpu, torch.float32) if model_loader else load_pretrained(args.model, dtype=torch.float32, device=cpu)
        model = wrap_lora(base, args) if args.lora_rank else base
        model.load_state_dict(full)
    try:
        return _write_final(out, model, base, tokenizer, args, info)
    except Exception as e:
        if not (isinstance(e, DiskFullError) or disk_full(e)):
            raise
        why = str(e) if isinstance(e, DiskFullError) else f"no space left on the device writing the final model in {out}"
        raise DiskFullError(f"{why}; {last_good(out)}") from None


def _write_final(out: Path, model, base, tokenizer, args, info: TrainingRecord | None) -> dict:
    from .adapters import export_run_adapter

    summary = {}
    if args.lora_rank:
        adapter_dir = out / "adapter"
        with atomic_directory(adapter_dir, overwrite=True) as tmp:
            model.save_pretrained(tmp, save_embedding_layers=False)
        summary["adapter"] = str(adapter_dir)
        merged = model.merge_and_unload()
    else:
        merged = base
    model_dir = out / "model"
    info = info or TrainingRecord(method="unknown")
    merged.save_pretrained(model_dir, decoding=info.decoding())
    tokenizer.save_pretrained(model_dir)
    write_json(model_dir / TRAINING_RECORD, info.to_dict())
    summary["model"] = str(model_dir)
    if args.export_hf and hasattr(merged.config, "to_hf"):
        from conversions.hf import export_hf

        export_hf(model_dir, out / "model-hf", overwrite=True)
        summary["model_hf"] = str(out / "model-hf")
    summary.update(export_run_adapter(out, merged.config, args))  # adapter-hf/: the adapter under HF names
    return summary


__all__ = ["finish"]
