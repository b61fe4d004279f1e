"""A run's checkpoints: save, verify, load, and fall back to the newest intact one.

OUTPUT/checkpoints/step-NNNNNNNN holds the trainable weights (weights.safetensors), optimizer.pt,
scheduler.pt, rng.pt, the objective's state (objective.safetensors, when it has one), state.json
(its step) and manifest.json (every file's size and sha256). Each is written to a temporary
directory renamed at the end (dlmarch/atomic.py), so a kill or a full disk leaves the previous
checkpoints intact. A resume takes the newest checkpoint that verifies *and* loads; each newer one is
named with the reason it was skipped.
"""

from __future__ import annotations

import json
import random
import re
import shutil
import sys
import time
from pathlib import Path

import torch

from dlmarch import safetensors_io as st
from dlmarch.atomic import DiskFullError, atomic_directory
from dlmarch.errors import DlmarchError
from dlmarch.manifests import verify_manifest, write_manifest


class TrainingError(DlmarchError):
    """The run stopped (non-finite loss or weights): exit status 1, the last good checkpoint named."""


CHECKPOINT_NAME = re.compile(r"step-(\d{8})")


def checkpoints(out: Path) -> list[Path]:
    """The checkpoint directories a run wrote (`step-NNNNNNNN`), oldest first; copies under other
    names (`step-3-backup`) are not ours and are left alone."""
    d = out / "checkpoints"
    if not d.is_dir():
        return []
    return sorted((p for p in d.iterdir() if CHECKPOINT_NAME.fullmatch(p.name) and p.is_dir() and not p.is_symlink()),
                  key=lambda p: int(p.name[5:]))


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def verify_checkpoint(path: Path) -> str | None:
    """None for an intact checkpoint: its manifest's files with their sizes and hashes, a
    state.json naming its own step, and readable, finite weights. Else the reason it is not."""
    why = verify_manifest(path)
    if why is not None:
        return why
    try:
        step = json.loads((path / "state.json").read_text())["step"]
    except (OSError, ValueError, KeyError, TypeError):
        return "unreadable state.json"
    if step != int(path.name[5:]):
        return f"state.json names step {step}"
    try:
        weights = st.load_file(path / "weights.safetensors")
    except Exception as e:  # noqa: BLE001 - a truncated or forged file whose manifest was re-hashed
        return f"weights.safetensors is unreadable ({_first_line(e)})"
    bad = next((k for k, v in weights.items() if v.is_floating_point() and not torch.isfinite(v).all()), None)
    return None if bad is None else f"non-finite weights in {bad}"


def newest_intact_checkpoint(out: Path, say: bool = False) -> Path | None:
    """The newest checkpoint that verify_checkpoint accepts; with say=True, name each newer one
    skipped (and why) on stderr."""
    for p in reversed(checkpoints(out)):
        why = verify_checkpoint(p)
        if why is None:
            return p
        if say:
            print(f"skipped checkpoint {p}: {why}", file=sys.stderr)
    return None


def last_good(out: Path) -> str:
    good = newest_intact_checkpoint(out)
    return f"the last intact checkpoint is {good}" if good else "no intact checkpoint was written yet"


def _state_dicts(model, optimizer):
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_optimizer_state_dict

    opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    msd = get_model_state_dict(model, options=opts)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    msd = {k: v for k, v in msd.items() if k in trainable}
    return msd, get_optimizer_state_dict(model, optimizer, options=opts)


def save_checkpoint(out: Path, step: int, model, optimizer, scheduler, rank: int, keep: int, objective=None) -> None:
    """checkpoints/step-N (see the module docstring), then the oldest beyond --keep removed. Every
    rank calls it (gathering the state is collective under FSDP); rank 0 writes. A full disk ends
    the run with one line naming the last intact checkpoint, which stays loadable."""
    msd, osd = _state_dicts(model, optimizer)  # collective under FSDP: every rank takes part
    bad = next((k for k, v in msd.items() if v.is_floating_point() and not torch.isfinite(v).all()), None)
    if bad is not None:  # a checkpoint is a point to resume from: never one with non-finite weights
        raise TrainingError(f"non-finite weights ({bad}) after step {step}; not saved; {last_good(out)}")
    if rank != 0:
        return
    target = out / "checkpoints" / f"step-{step:08d}"
    needed = sum(v.numel() * v.element_size() for v in msd.values())
    try:
        with atomic_directory(target, overwrite=True, needed=3 * needed) as tmp:  # weights + Adam's two moments
            st.save_file({k: v.contiguous() for k, v in msd.items()}, tmp / "weights.safetensors")
            torch.save(osd, tmp / "optimizer.pt")
            torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
            torch.save({"torch": torch.get_rng_state(), "python": random.getstate()}, tmp / "rng.pt")
            state = objective.state_dict() if objective is not None else {}
            if state:
                st.save_file(state, tmp / "objective.safetensors")
            (tmp / "state.json").write_text(json.dumps({"step": step, "time": time.time()}, indent=2) + "\n")
            write_manifest(tmp)  # sizes and hashes, checked before a resume trusts this checkpoint
    except DiskFullError as e:
        raise DiskFullError(f"{e}; {last_good(out)}") from None
    for old in checkpoints(out)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)


def read_checkpoint(path: Path) -> dict:
    """Every part of a checkpoint, read (weights-only) and type-checked before any is applied, so a
    damaged part leaves the model and optimizer as they were."""
    parts = {"weights": st.load_file(path / "weights.safetensors")}
    for name in ("optimizer", "scheduler", "rng"):
        try:
            parts[name] = torch.load(path / f"{name}.pt", map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - garbage with a re-hashed manifest
            raise DlmarchError(f"{name}.pt is unreadable ({_first_line(e)})") from None
        if not isinstance(parts[name], dict):
            raise DlmarchError(f"{name}.pt holds a {type(parts[name]).__name__}, not a state dict")
    rng = parts["rng"]
    if not isinstance(rng.get("torch"), torch.Tensor) or not isinstance(rng.get("python"), tuple):
        raise DlmarchError("rng.pt does not hold the torch and python RNG states")
    if (path / "objective.safetensors").exists():
        parts["objective"] = st.load_file(path / "objective.safetensors")
    parts["step"] = int(json.loads((path / "state.json").read_text())["step"])
    return parts


def load_checkpoint(path: Path, model, optimizer, scheduler, device, objective=None) -> int:
    """Restore weights, optimizer, schedule, RNG and objective state; returns the checkpoint's step."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict, set_optimizer_state_dict

    parts = read_checkpoint(path)
    set_model_state_dict(model, parts["weights"], options=StateDictOptions(full_state_dict=True, strict=False))
    set_optimizer_state_dict(model, optimizer, parts["optimizer"], options=StateDictOptions(full_state_dict=True))
    scheduler.load_state_dict(parts["scheduler"])
    torch.set_rng_state(parts["rng"]["torch"])
    random.setstate(parts["rng"]["python"])
    if objective is not None and "objective" in parts:
        objective.load_state_dict(parts["objective"])
    return parts["step"]


def restore_newest(out: Path, model, optimizer, scheduler, device, objective=None, say: bool = True) -> tuple[Path, int]:
    """Load the newest checkpoint that verifies and loads, naming each newer one skipped and why:
    (its path, its step). None intact: one line."""
    for p in reversed(checkpoints(out)):
        why = verify_checkpoint(p)
        if why is None:
            try:
                return p, load_checkpoint(p, model, optimizer, scheduler, device, objective)
            except Exception as e:  # noqa: BLE001 - any damage the manifest did not catch: try the previous one
                why = _first_line(e)
        if say:
            print(f"skipped checkpoint {p}: {why}", file=sys.stderr)
    raise DlmarchError(f"--resume: no intact checkpoint in {out / 'checkpoints'} (each was skipped, see above)")


__all__ = ["TrainingError", "checkpoints", "verify_checkpoint", "newest_intact_checkpoint", "save_checkpoint",
           "load_checkpoint", "read_checkpoint", "restore_newest", "last_good"]
