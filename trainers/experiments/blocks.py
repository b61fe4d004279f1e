"""The `block_size` experiment: Blockwise SFT (arXiv 2508.19529) trained with block sizes {8, 16, 32}
and decoded semi-autoregressively with block lengths {8, 16, 32} (Sudoku; the response spans 5, 3 and
2 blocks of those sizes), every seed, beside masked-diffusion SFT decoded the same ways.

Blockwise SFT's claim: training and decoding with the same blocks is best (the diagonal), and SFT,
trained on whole-response masks, loses most under small decoding blocks (its train/decode mismatch).
Every run is a methods-experiment run or one like it (same base, budget and options), at the largest
budget; block size 32 is the methods experiment's Blockwise run, shared.
"""

from __future__ import annotations

from pathlib import Path

from ..toy import Plan
from .budgets import curve_stage
from .methods import method_run, run_name
from .setting import BLOCK_LENGTH, mdm_score, prepare, pretrained_base
from .stats import t_interval

BLOCKS = (8, 16, 32)  # trained block sizes = decoded block lengths


def blockwise_run(out: Path, plan: Plan, size: int, seed: int) -> Path:
    if size == BLOCK_LENGTH:
        return method_run(out, plan, "sudoku", "blockwise", seed)[0]
    root = out / "sudoku"
    _, _, length = prepare(root, "sudoku", plan)
    run = root / f"blockwise-b{size}-s{seed}"
    curve_stage("blockwise", pretrained_base(out, plan), run, root / "data" / "train.jsonl", plan, length, seed,
                ["--block-size", str(size)])
    return run


def decoded(out: Path, plan: Plan, name: str, run: Path, seed: int) -> list[float]:
    """The run's final model decoded with every block length (steps = GEN_LENGTH / 2 each)."""
    root = out / "sudoku"
    task, test, _ = prepare(root, "sudoku", plan)
    return [mdm_score(f"{name}-b{plan.budgets[-1]}" if d == BLOCK_LENGTH else f"{name}-b{plan.budgets[-1]}-d{d}",
                      run / "model", task, test, root, seed, block_length=d) for d in BLOCKS]


def run(out: Path, plan: Plan) -> dict:
    per_seed = {}  # row name -> seed -> [score per decoding block length]
    for s in plan.seeds:
        per_seed.setdefault("sft", []).append(decoded(out, plan, run_name("sft", s), method_run(out, plan, "sudoku", "sft", s)[0], s))
        for b in BLOCKS:
            name = run_name("blockwise", s) if b == BLOCK_LENGTH else f"blockwise-b{b}-s{s}"
            per_seed.setdefault(b, []).append(decoded(out, plan, name, blockwise_run(out, plan, b, s), s))

    def summary(rows: list[list[float]]):
        cells = [t_interval([r[j] for r in rows]) for j in range(len(BLOCKS))]
        return [m for m, _ in cells], [ci for _, ci in cells]

    acc, ci = zip(*(summary(per_seed[b]) for b in BLOCKS))
    sft, sft_ci = summary(per_seed["sft"])
    return {"block_size": {"train": list(BLOCKS), "decode": list(BLOCKS), "accuracy": list(acc), "ci95": list(ci),
                           "seeds": list(plan.seeds), "per_seed": [per_seed[b] for b in BLOCKS], "sft": sft,
                           "sft_ci95": sft_ci, "sft_per_seed": per_seed["sft"]}}
