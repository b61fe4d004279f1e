"""The run directory's policy: what a trainer's --output may be, who owns it, and run.json.

A run directory holds only what a run writes (RUN_ARTEFACTS); --overwrite replaces nothing else,
--resume continues a run with the options it started with. One process owns it for the whole run
(OutputLock, dlmarch/locks.py), and nothing in it is written through a
symbolic link.

What a run directory holds: run.json (the options, written once they are validated), .lock (the
pid of the run that owns it), metrics.jsonl, loss.png, checkpoints/step-N (weights or adapter,
optimizer, scheduler, RNG states, position, and manifest.json: every file's size and sha256), and at
the end model/ (native, with the tokenizer), adapter/ (peft format, LoRA runs) and model-hf/
(--export-hf).
"""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path

from dlmarch.atomic import TEMP_MARKER, write_json
from dlmarch.config import read_json
from dlmarch.errors import DlmarchError
from dlmarch.locks import LOCK_NAME, OutputLock
from dlmarch.outputs import aux_files, check_disjoint, foreign_entries, refuse_symlinks

# What a run writes into its output directory; --overwrite replaces a directory holding only these.
RUN_ARTEFACTS = {"run.json", "metrics.jsonl", "metrics.tmp", "loss.png", "summary.json", "checkpoints", "model",
                 "adapter", "adapter-hf", "model-hf", "tensorboard", "wandb", LOCK_NAME}
# Options a resumed run may change: where and how often it reports and saves, not what it trains.
RESUME_MAY_CHANGE = {"resume", "overwrite", "config", "no_progress", "log_every", "save_every", "keep", "device",
                     "report_to", "eval_data", "eval_every", "print_every"}


def _is_temp(path: Path) -> bool:
    """A temporary entry of one of our writes: a directory holding the guard's marker, or the
    temporary file of an artefact (`.run.json.tmp-PID-HEX`). A user's `.notes.old-2024` is neither."""
    m = re.fullmatch(r"\.(.+)\.(tmp|old)-\d+(-[0-9a-f]+)?", path.name)
    if m is None or path.is_symlink():
        return False
    if path.is_dir():
        return (path / TEMP_MARKER).is_file()
    return m.group(1) in RUN_ARTEFACTS


def _is_artefact(path: Path) -> bool:
    return path.name in RUN_ARTEFACTS or _is_temp(path)


def check_output(out: Path, args) -> None:
    """Refuse, before anything is read or written, an --output that would destroy an input or
    files this tool did not write: one that is, contains or lies inside --model, --data, --init,
    --l2d-options or --config; with --overwrite, one that holds anything but a run's artefacts; an
    artefact that is a symbolic link (we would write into what it links to). Also refused here, not
    at the final save: a --model directory holding a link to a file outside it (the saved model
    would publish that file)."""
    inputs = {f"--{k.replace('_', '-')}": getattr(args, k, None) for k in ("model", "data", "init", "l2d_options", "config")}
    check_disjoint(out, inputs, "--output")
    model = getattr(args, "model", None)
    if model is not None and Path(model).is_dir():
        aux_files(model)
    if out.exists() and not out.is_dir():
        raise DlmarchError(f"--output {out} exists and is not a directory")
    if out.is_dir():
        refuse_symlinks(out, sorted(p.name for p in out.iterdir() if p.name in RUN_ARTEFACTS), "a run")
        ck = out / "checkpoints"
        if ck.is_dir() and not ck.is_symlink():
            refuse_symlinks(ck, sorted(p.name for p in ck.iterdir() if p.name.startswith("step-")), "a run")
    entries = [p for p in out.iterdir() if p.name != LOCK_NAME and not _is_temp(p)] if out.exists() else []
    run_json = out / "run.json"
    if not entries:
        return
    if args.resume:
        if not run_json.exists():
            raise DlmarchError(f"{out}: --resume found no run here (no run.json)")
    elif args.overwrite:
        if not run_json.exists():
            raise DlmarchError(f"{out} holds files but no run (run.json); --overwrite replaces only a run directory")
        foreign = foreign_entries(out, _is_artefact)
        if foreign:
            raise DlmarchError(f"{out} holds {foreign[0]!r}, which a run does not write; not replaced by --overwrite "
                               f"(move it or choose another --output)")
    else:
        what = "another run (run.json)" if run_json.exists() else "files"
        raise DlmarchError(f"{out} already holds {what}; pass --resume to continue it or --overwrite to replace it")


def _run_options(args) -> dict:
    return json.loads(json.dumps({k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(args).items()}))


def record_run(out: Path, args, rank: int) -> None:
    """After the inputs are validated: a new run (or --overwrite) clears the old run's artefacts and
    writes run.json; a resumed run must train with the options in run.json (those in
    RESUME_MAY_CHANGE excepted; their changes are recorded under "resumed"). Rank 0 only; the
    caller holds the other ranks at a barrier."""
    if rank != 0:
        return
    run_json = out / "run.json"
    now = _run_options(args)
    if args.resume and run_json.exists():
        recorded = read_json(run_json)  # one line naming it when it is not a JSON object of options
        changed = {}
        for k, v in now.items():
            if k not in recorded or recorded[k] == v:
                continue
            if k not in RESUME_MAY_CHANGE:
                raise DlmarchError(f"--resume: --{k.replace('_', '-')} is {v!r} here but {recorded[k]!r} in {run_json}; "
                                   f"a resumed run trains with the options it started with")
            changed[k] = [recorded[k], v]
        if changed:
            recorded.setdefault("resumed", []).append({"time": time.time(), "changed": changed})
            write_json(run_json, recorded)
    else:
        if args.overwrite:
            for p in out.iterdir():
                if p.name != LOCK_NAME and _is_artefact(p):
                    shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
        write_json(run_json, now)


__all__ = ["RUN_ARTEFACTS", "RESUME_MAY_CHANGE", "LOCK_NAME", "OutputLock", "check_output", "record_run"]
