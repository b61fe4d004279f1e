"""The `methods` experiment: sft, gift, blockwise, lift3 and lift2 fine-tuned from one pretrained base
under one budget, several seeds each, read at every budget (the learning curves).

GIFT (arXiv 2509.20863) and LIFT claim to beat masked-diffusion SFT on d1's tasks; Blockwise SFT
(arXiv 2508.19529) claims to beat it under an equal budget. Results: `methods` (the largest budget:
scores per seed, mean, 95% t-interval), `base` (the pretrained base before fine-tuning), `curves`
(every budget) and `detectable` (the smallest difference between two methods this design detects,
from the seeds' pooled standard deviation at the largest budget).
"""

from __future__ import annotations

from pathlib import Path

from ..toy import Plan
from .budgets import curve_stage, model_at
from .setting import METHODS, mdm_score, prepare, pretrained_base
from .stats import detectable_difference, pooled_sd, t_interval


def tasks_of(plan: Plan) -> list[str]:
    return list(plan.extra.get("tasks", ["sudoku"]))


def run_name(method: str, seed: int) -> str:
    return f"{method}-s{seed}"


def method_run(out: Path, plan: Plan, task_name: str, method: str, seed: int) -> tuple[Path, Path]:
    """(run directory, pretrained base) of one method and seed on one task, trained if not yet."""
    base = pretrained_base(out, plan)
    root = out / task_name
    task, test, length = prepare(root, task_name, plan)
    trainer, extra = METHODS[method]
    run = root / run_name(method, seed)
    curve_stage(trainer, base, run, root / "data" / "train.jsonl", plan, length, seed, extra)
    return run, base


def run(out: Path, plan: Plan) -> dict:
    base = pretrained_base(out, plan)
    methods, bases, curves, detectable = {}, {}, {}, {}
    for name in tasks_of(plan):
        root = out / name
        task, test, _ = prepare(root, name, plan)
        bases[name] = mdm_score("base", base, task, test, root, 0)
        methods[name], curves[name] = {}, {}
        for m in METHODS:
            per_budget = [[] for _ in plan.budgets]
            for s in plan.seeds:
                run_dir, _ = method_run(out, plan, name, m, s)
                for i, b in enumerate(plan.budgets):
                    per_budget[i].append(mdm_score(f"{run_name(m, s)}-b{b}", model_at(run_dir, base, b), task, test, root, s))
            stats = [t_interval(x) for x in per_budget]
            curves[name][m] = {"budgets": list(plan.budgets), "scores": per_budget, "mean": [x[0] for x in stats],
                               "ci95": [x[1] for x in stats]}
            methods[name][m] = {"seeds": list(plan.seeds), "scores": per_budget[-1], "mean": stats[-1][0],
                                "ci95": stats[-1][1]}
        sd = pooled_sd([x["scores"] for x in methods[name].values()])
        detectable[name] = {"pooled_sd": sd, "seeds": len(plan.seeds),
                            "difference": detectable_difference(sd, len(plan.seeds))}
    return {"methods": methods, "base": bases, "curves": curves, "detectable": detectable}
