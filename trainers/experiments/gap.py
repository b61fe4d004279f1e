"""The `gap` experiment: why a causal model decodes the experiments' Sudoku rows better than a masked-
diffusion model of the same size, on the same rows (docs/experiments/report.md: 89.2% against 26.8% at
600 steps).

Both are trained from scratch on the same rows with the same steps, lr and batch (next-token SFT,
`trainers.ar`, and masked-diffusion SFT, `trainers.sft`) and read at three budgets (training length
to convergence); the masked-diffusion model is then decoded with one token per step instead of two
(steps = GEN_LENGTH), with random instead of low-confidence remasking, with the whole canvas as one
block, and the pretrained-and-fine-tuned SFT model (the methods experiment's, seed 0) with one token
per step too. Each factor's share of the gap is what comes out; seed 0 only (the gap is tens of points;
the methods experiment measures seed-to-seed spread). Last, `clue_copy` reads every model's answers:
how many of the puzzle's given digits each reproduces in place, the skill the task rests on.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from ..toy import Plan, evaluate_model, score
from .budgets import curve_stage, model_at
from .methods import method_run, run_name
from .setting import GEN_LENGTH, mdm_score, prepare

# name -> decoding options changed from d1's protocol (steps = GEN_LENGTH / 2, block 32, low confidence)
DECODINGS = {"d1 protocol (2 tokens per step, blocks of 32)": {},
             "1 token per step": {"steps": GEN_LENGTH},
             "4 tokens per step": {"steps": GEN_LENGTH // 4},
             "1 token per step, random remasking": {"steps": GEN_LENGTH, "remasking": "random"},
             "1 token per step, one block": {"steps": GEN_LENGTH, "block_length": GEN_LENGTH}}


def clue_copy(generations: Path) -> dict:
    """How a Sudoku model's answers treat the puzzle's given digits (from an evaluation's generations):
    `copied`, the share of given cells whose digit the answer reproduces at the same position, and
    `collapsed`, the share of answers in which one digit (1-4) fills at least 10 of the 16 cells (the
    '0's d1's extraction pads a short answer with, and any other character, never count). A model
    that has not learned to copy cell i of the prompt into cell i of the answer (tens of positions
    away) cannot use the clues, whatever the decoding."""
    rows = [json.loads(line) for line in generations.read_text().splitlines() if line.strip()]
    given = copied = collapsed = 0
    for r in rows:
        answer, puzzle = r.get("answer") or "", r["reference"]["puzzle"]
        for i, c in enumerate(puzzle):
            if c != "0":
                given += 1
                copied += i < len(answer) and answer[i] == c
        digits = Counter(c for c in answer if c in "1234")
        collapsed += bool(digits) and digits.most_common(1)[0][1] >= 10
    return {"copied": copied / max(given, 1), "collapsed": collapsed / max(len(rows), 1)}


def budgets(plan: Plan) -> tuple[int, ...]:
    return (plan.base_steps // 4, plan.base_steps // 2, plan.base_steps)


def run(out: Path, plan: Plan) -> dict:
    result = {"budgets": list(budgets(plan)), "causal": [], "mdm": []}
    for kind, trainer in (("causal", "ar"), ("mdm", "sft")):
        root = out / "gap" / kind
        task, test, length = prepare(root, "sudoku", plan, causal=kind == "causal")
        run_dir = root / trainer
        curve_stage(trainer, root / "init", run_dir, root / "data" / "train.jsonl", plan, length, 0,
                    budgets=budgets(plan), lr=plan.base_lr)
        for b in budgets(plan):
            model = model_at(run_dir, root / "init", b)
            result[kind].append(score(evaluate_model(f"{kind}-b{b}", model, task, test, root, 0, gen_length=GEN_LENGTH))
                                if kind == "causal" else mdm_score(f"{kind}-b{b}", model, task, test, root, 0))
    root = out / "gap" / "mdm"
    task, test, _ = prepare(root, "sudoku", plan)
    final = root / "sft" / "model"
    result["mdm_decoding"] = {name: mdm_score(f"mdm-b{plan.base_steps}" + "".join(f"-{k}{v}" for k, v in opts.items()),
                                              final, task, test, root, 0, **opts)
                              for name, opts in DECODINGS.items()}
    sft_run, _ = method_run(out, plan, "sudoku", "sft", 0)
    sroot = out / "sudoku"
    stask, stest, _ = prepare(sroot, "sudoku", plan)
    result["pretrained_sft"] = {name: mdm_score(f"{run_name('sft', 0)}-b{plan.budgets[-1]}" +
                                                "".join(f"-{k}{v}" for k, v in opts.items()),
                                                sft_run / "model", stask, stest, sroot, 0, **opts)
                                for name, opts in list(DECODINGS.items())[:2]}
    last = plan.budgets[-1]
    result["copy"] = {kind: [clue_copy(out / "gap" / kind / f"eval-{kind}-b{b}.jsonl") for b in budgets(plan)]
                      for kind in ("causal", "mdm")}
    result["copy"]["pretrained_sft"] = []
    for s in plan.seeds:  # the methods experiment's SFT runs, each read at the largest budget
        run_dir, base = method_run(out, plan, "sudoku", "sft", s)
        name = f"{run_name('sft', s)}-b{last}"
        accuracy = mdm_score(name, model_at(run_dir, base, last), stask, stest, sroot, s)  # writes the generations
        result["copy"]["pretrained_sft"].append({"seed": s, "score": accuracy, **clue_copy(sroot / f"eval-{name}.jsonl")})
    return {"gap": result}
