"""The `cost` experiment: wall time per training step and per evaluated item, as ratios to SFT, read
from the stages' and evaluations' summaries the other experiments wrote (the methods: mean over tasks
and seeds; ar and l2d: their fine-tunes, whose backbone is a Llama of the same size; l2d evaluated with
Euler at 8 evaluations per token)."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from dlmarch.errors import DlmarchError

from ..toy import Plan
from .methods import run_name, tasks_of
from .setting import METHODS


def _read(p: Path) -> dict:
    if not p.exists():
        raise DlmarchError(f"cost: {p} is missing; run the methods and l2d_steps experiments first")
    return json.loads(p.read_text())


def per_step(summary: dict) -> float:
    """Wall seconds per optimizer step of a stage (the steps this process ran, if it resumed)."""
    return summary["seconds"] / max(1, summary["steps"] - summary.get("resumed_from", 0))


def per_item(summary: dict) -> float:
    return summary["seconds"] / max(1, summary["n"])


def run(out: Path, plan: Plan) -> dict:
    b = plan.budgets[-1]
    steps, items = {}, {}
    for m in METHODS:
        runs = [(out / t / run_name(m, s) / "summary.json", out / t / f"eval-{run_name(m, s)}-b{b}.summary.json")
                for t in tasks_of(plan) for s in plan.seeds]
        steps[m] = statistics.fmean(per_step(_read(a)) for a, _ in runs)
        items[m] = statistics.fmean(per_item(_read(e)) for _, e in runs)
    root, s = out / "l2d", plan.seeds[0]
    steps["ar"] = per_step(_read(root / f"ar-finetune-s{s}" / "summary.json"))
    items["ar"] = per_item(_read(root / f"eval-ar-finetune-s{s}.summary.json"))
    steps["l2d"] = per_step(_read(root / f"l2d-s{s}" / "summary.json"))
    items["l2d"] = per_item(_read(root / f"eval-l2d-s{s}-euler-8.summary.json"))
    return {"cost": {m: steps[m] / steps["sft"] for m in steps}, "cost_per_item": {m: items[m] / items["sft"] for m in items}}
