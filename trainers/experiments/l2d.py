"""The `l2d_steps` experiment: L2D (Cetin et al., *Large Language Models to Diffusion Finetuning*, arXiv
2501.15781; SakanaAI/L2D) on a main model that is good but not perfect.

A small Llama is taught the Sudoku rows by next-token SFT for a short budget (plan.extra
["l2d_main_steps"]), so it leaves room to improve; from it, under the methods' budget and schedule,
L2D trains its diffusion path (`trainers.l2d`, the main path frozen) and, as the control of equal
budget, next-token SFT continues (`trainers.ar`). Every seed. L2D's claim: accuracy rises with the ODE
evaluations per token, while one evaluation keeps the main model's behaviour.
"""

from __future__ import annotations

import statistics
from pathlib import Path

from ..toy import Plan, evaluate_model, score, stage
from .budgets import curve_stage
from .setting import GEN_LENGTH, prepare
from .stats import t_interval

ODE_EVALS = {"euler": (1, 2, 4, 8, 16), "midpoint": (2, 4, 8, 16)}  # midpoint spends 2 per interval


def grid_points(solver: str, evaluations: int) -> int:
    """A uniform grid of k points spends k - 1 evaluations (Euler) or 2 (k - 1) (midpoint) in the ODE."""
    return evaluations + 1 if solver == "euler" else evaluations // 2 + 1


def run(out: Path, plan: Plan) -> dict:
    root = out / "l2d"
    task, test, length = prepare(root, "sudoku", plan, causal=True)
    data = root / "data" / "train.jsonl"
    stage("ar", root / "init", root / "main", data, plan.extra["l2d_main_steps"], plan.base_lr, plan.batch, length, 0,
          True, ["--no-progress"])
    main = root / "main" / "model"

    def greedy(name: str, model: Path, seed: int, **kw) -> float:
        return score(evaluate_model(name, model, task, test, root, seed, gen_length=GEN_LENGTH, **kw))

    per_seed = {"ar_finetune": [], **{s: {str(n): [] for n in counts} for s, counts in ODE_EVALS.items()}}
    for seed in plan.seeds:
        curve_stage("ar", main, root / f"ar-finetune-s{seed}", data, plan, length, seed)
        curve_stage("l2d", main, root / f"l2d-s{seed}", data, plan, length, seed,
                    ["--flow-dim", str(plan.l2d_flow_dim), "--l2d-lora-rank", str(plan.l2d_lora_rank)])
        per_seed["ar_finetune"].append(greedy(f"ar-finetune-s{seed}", root / f"ar-finetune-s{seed}" / "model", seed))
        for solver, counts in ODE_EVALS.items():
            for n in counts:
                per_seed[solver][str(n)].append(greedy(f"l2d-s{seed}-{solver}-{n}", root / f"l2d-s{seed}" / "model", seed,
                                                       solver=solver, ode_steps=grid_points(solver, n)))
    result = {"main_only": greedy("main", main, 0), "main_steps": plan.extra["l2d_main_steps"], "seeds": list(plan.seeds),
              "per_seed": per_seed, "ar_finetune": statistics.fmean(per_seed["ar_finetune"]),
              "ci95": {"ar_finetune": t_interval(per_seed["ar_finetune"])[1]}}
    for solver in ODE_EVALS:
        result[solver] = {n: statistics.fmean(v) for n, v in per_seed[solver].items()}
        result["ci95"][solver] = {n: t_interval(v)[1] for n, v in per_seed[solver].items()}
    return {"l2d_steps": result}
