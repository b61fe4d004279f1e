"""Learning curves from one run per (method, seed): fine-tunes run at a constant lr after a 5% warmup
and save a checkpoint at every budget, so the model at budget b is the run's checkpoint at step b (not
a shorter run with its own decay, which would cost a run per budget). `model_at` turns a checkpoint
into a model directory the samplers load."""

from __future__ import annotations

import shutil
from pathlib import Path

from dlmarch.errors import DlmarchError

from ..toy import Plan, stage


def curve_options(budgets: tuple[int, ...]) -> list[str]:
    """The loop options that make every budget a checkpoint: constant lr after the warmup, a checkpoint
    every smallest budget, none deleted (each budget a multiple of the first; the run is the last)."""
    every = budgets[0]
    if any(b % every for b in budgets):
        raise DlmarchError(f"budgets {budgets}: each must be a multiple of the first")
    return ["--schedule", "constant", "--save-every", str(every), "--keep", str(budgets[-1] // every + 1)]


def curve_stage(trainer: str, start: Path, out: Path, data: Path, plan: Plan, length: int, seed: int,
                extra: list[str] = (), budgets: tuple[int, ...] | None = None, lr: float | None = None) -> dict:
    """A fine-tune of budgets[-1] steps (default: plan.budgets, ending at plan.method_steps) at
    plan.method_lr (or `lr`), readable at every budget with `model_at`."""
    budgets = budgets or plan.budgets
    return stage(trainer, start, out, data, budgets[-1], lr or plan.method_lr, plan.batch, length, seed, True,
                 ["--no-progress", *curve_options(budgets), *extra])


def model_at(run: Path, start: Path, step: int) -> Path:
    """The model directory of `run` (a full fine-tune of `start`) after `step` optimizer steps: run/model
    at its last step, else run/at-STEP built once from checkpoints/step-STEP (every weight trained, so
    every weight is in the checkpoint; a missing one is an error, not the start's value)."""
    import json

    from dlmarch import safetensors_io as st
    from dlmarch.registry import load_pretrained

    summary = json.loads((run / "summary.json").read_text())
    if step == summary["steps"]:
        return run / "model"
    dst = run / f"at-{step}"
    if (dst / "config.json").exists():
        return dst
    ckpt = run / "checkpoints" / f"step-{step:08d}"
    if not ckpt.is_dir():
        raise DlmarchError(f"{ckpt} is missing: the learning curve needs a checkpoint at every budget")
    model = load_pretrained(start)
    weights = st.load_file(ckpt / "weights.safetensors")
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if missing or unexpected:
        raise DlmarchError(f"{ckpt}: not a full fine-tune of {start} (missing {missing[:3]}, unexpected {unexpected[:3]})")
    tmp = run / f".at-{step}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja"):
        if (run / "model" / name).exists():
            shutil.copy2(run / "model" / name, tmp / name)
    tmp.rename(dst)
    return dst
