"""The `rl` experiment: GIFT's cold-start claim (arXiv 2509.20863, Figure 3): a model cold-started with
GIFT reaches higher rewards than one cold-started with SFT in the reinforcement learning that follows.

From the methods experiment's SFT and GIFT fine-tunes (same base, same budget, per seed), the same
diffu-GRPO run (d1, arXiv 2504.12216; `trainers.grpo --task sudoku` with d1's Sudoku rewards) on the
training puzzles: d1's rollouts scaled to the toy (4 prompts x a group of 8 per step, temperature 0.9,
GEN_LENGTH tokens in blocks of BLOCK_LENGTH, steps = GEN_LENGTH / 2, mu = 2, beta 0.04, epsilon 0.2),
plan.rl_steps steps at plan.rl_lr, constant. Results: each start's reward curve per seed (the mean
reward of each step's rollouts, from the run's metrics.jsonl) and its held-out score before and after.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from ..toy import Plan, grpo_stage
from .methods import method_run, run_name
from .setting import BLOCK_LENGTH, GEN_LENGTH, mdm_score, prepare
from .stats import t_interval

STARTS = ("sft", "gift")


def rewards(run: Path) -> list[float]:
    """The mean reward of each step's rollouts, in step order."""
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
    return [r["reward"] for r in rows if "reward" in r]


def run(out: Path, plan: Plan) -> dict:
    root = out / "sudoku"
    task, test, _ = prepare(root, "sudoku", plan)
    result = {"steps": plan.rl_steps, "lr": plan.rl_lr, "seeds": list(plan.seeds), "starts": {}}
    for start in STARTS:
        before, after, curves = [], [], []
        for s in plan.seeds:
            sft_run, _ = method_run(out, plan, "sudoku", start, s)
            rl_run = out / "rl" / f"{start}-s{s}"
            (out / "rl").mkdir(exist_ok=True)
            grpo_stage(sft_run / "model", rl_run, root / "data" / "rows.jsonl", plan.rl_steps, s, True,
                       ["--gen-length", str(GEN_LENGTH), "--block-length", str(BLOCK_LENGTH), "--steps",
                        str(GEN_LENGTH // 2), "--lr", str(plan.rl_lr)])
            before.append(mdm_score(f"{run_name(start, s)}-b{plan.budgets[-1]}", sft_run / "model", task, test, root, s))
            after.append(mdm_score(f"rl-{start}-s{s}", rl_run / "model", task, test, out / "rl", s))
            curves.append(rewards(rl_run))
        mean_after, ci_after = t_interval(after)
        final = [statistics.fmean(c[-max(1, len(c) // 5):]) for c in curves]  # the last fifth of each curve
        result["starts"][start] = {"before": before, "after": after, "mean_after": mean_after, "ci95_after": ci_after,
                                   "reward": curves, "final_reward": final, "mean_final_reward": t_interval(final)[0],
                                   "ci95_final_reward": t_interval(final)[1]}
    return {"rl": result}
