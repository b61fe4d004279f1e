"""`python -m trainers.experiments`: the papers' claims at small scale, from scratch on CPU.

Experiments (each also alone with --only NAME; results accumulate in OUTPUT/results.json):
  methods     sft, gift, blockwise, lift3, lift2 fine-tuned from one masked-diffusion base under the
              same token budget, on Sudoku 4x4 and Countdown (3 numbers), several seeds: mean and
              95% t-interval of the task's metric. GIFT and LIFT claim to beat masked-diffusion SFT on
              d1's tasks; Blockwise SFT claims to beat it under an equal budget.
  block_size  Blockwise SFT trained with block sizes {8, 16, 32}, each decoded with block lengths
              {8, 16, 32} (Sudoku): Blockwise SFT claims the diagonal is best.
  l2d_steps   a small Llama taught the task by autoregressive SFT (`trainers.ar`), then L2D trained
              on it (`trainers.l2d`); accuracy against ODE evaluations per token (Euler, midpoint),
              beside the main model alone and an AR fine-tune under the same budget. L2D claims
              accuracy rises with evaluations while one evaluation keeps the main model's behaviour.
  cost        wall time per training step and per evaluated item, as ratios to SFT.

Responses carry a short worked trace before the answer (Sudoku: the grid with only the cells it
fills; Countdown: the intermediate results of the expression), so that a response spans two 32-token
blocks and Blockwise SFT differs from SFT.
Every method shares one hyper-parameter setting (`Plan`); seeds are fixed. A killed run re-run with the same command keeps finished stages and evaluations
and resumes an interrupted stage from its last checkpoint. Writes results.json, report.md and
*.png under --output. --quick: tiny budgets (about a minute), used by the test suite.
"""

from __future__ import annotations

import argparse
import ast
import json
import math
import os
import statistics
import string
import sys
import time
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path

import torch

from dlmarch.config import read_json
from dlmarch.errors import DlmarchError, os_error_line
from dlmarch.atomic import atomic_file

from .demo import TAGS, new_llada, new_llama, prepare_output, prompt_length, run_eval, train_stage, write_data

EXPERIMENTS = ("methods", "block_size", "l2d_steps", "cost")
TASKS = ("sudoku", "countdown")
GEN_LENGTH, BLOCK_LENGTH = 64, 32  # two d1 blocks: the trace, then the answer
# name -> (trainer module, its options)
METHODS = {"sft": ("sft", []), "gift": ("gift", []), "blockwise": ("blockwise", ["--block-size", str(BLOCK_LENGTH)]),
           "lift3": ("lift", ["--lift-variant", "lift3"]), "lift2": ("lift", ["--lift-variant", "lift2"])}
BLOCKS = (8, 16, 32)  # trained block sizes = decoded block lengths
ODE_EVALS = {"euler": (1, 2, 4, 8, 16), "midpoint": (2, 4, 8, 16)}  # midpoint spends 2 per interval
CHARS = string.digits + string.ascii_lowercase + "SNT :,.=+-*/()[]\n"  # every character of the rows (no <|unk|>)


@dataclass
class Plan:
    """The one hyper-parameter setting every method shares."""

    hidden: int
    layers: int
    train_rows: int
    test_rows: int
    base_steps: int  # teaching the task from scratch (masked-diffusion SFT, or AR SFT for L2D's main model)
    method_steps: int  # every fine-tune: the methods, each block size, L2D and the AR fine-tune
    batch: int
    base_lr: float
    method_lr: float
    seeds: tuple[int, ...]
    l2d_flow_dim: int
    l2d_lora_rank: int


# About an hour on 2 quiet CPU cores (measured: 0.33 s per Sudoku SFT step, 14 s per 128 evaluated items).
FULL = Plan(hidden=128, layers=4, train_rows=4000, test_rows=128, base_steps=1800, method_steps=150, batch=32,
            base_lr=2e-3, method_lr=3e-4, seeds=(0, 1, 2), l2d_flow_dim=32, l2d_lora_rank=16)
QUICK = Plan(hidden=32, layers=1, train_rows=200, test_rows=8, base_steps=20, method_steps=4, batch=8,
             base_lr=3e-3, method_lr=5e-4, seeds=(0, 1), l2d_flow_dim=16, l2d_lora_rank=4)


# --- the tasks: the one place that knows their rows ------------------------------------------------------


def task_setup(name: str):
    """(task, response): the Task (used through its public interface only: generate, messages, score,
    summarize, primary) and the training target of a generated row, a worked trace then the answer in
    d1's format. The prompt carries no system instruction (it would cost ~400 characters per row)."""
    from trainers.tasks import get_task

    if name == "sudoku":
        task = get_task("sudoku", with_system_prompt=False)
        trace = lambda r: sudoku_trace(r["puzzle"], r["solution"])  # noqa: E731
    elif name == "countdown":
        task = get_task("countdown", sizes=(3,), with_system_prompt=False)
        trace = lambda r: countdown_trace(r["solution"])  # noqa: E731
    else:
        raise DlmarchError(f"unknown task {name!r}; expected one of {TASKS}")
    return task, lambda r: f"<reasoning>{trace(r)}</reasoning><answer>{r['solution']}</answer>"


def sudoku_trace(puzzle: str, solution: str) -> str:
    """The grid with only the cells it fills: each empty cell's digit in its place, "." for a given
    one ("4..2.1....2.1...").

    Its digits sit at one offset from the puzzle in the prompt and the answer's at one offset from
    them, so copying is position to position, as in the demo. A trace of variable length before the
    answer (the empty cells by name, "a4 c2 ...", in reading order or in the order a solver fills
    forced cells first) kept the full plan's from-scratch base at chance: 26-27% of the cells after
    1200 steps, its answers not even copying the given cells."""
    return "".join(s if p == "0" else "." for p, s in zip(puzzle, solution))


def countdown_trace(expression: str) -> str:
    """The expression's operations innermost first with their results: "12+5=17 17*3=51"."""
    ops = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/"}
    steps = []

    def fmt(v: Fraction) -> str:
        return str(v.numerator) if v.denominator == 1 else f"{v.numerator}/{v.denominator}"

    def ev(node) -> Fraction:
        if isinstance(node, ast.Constant):
            return Fraction(node.value)
        a, b = ev(node.left), ev(node.right)
        op = ops[type(node.op)]
        v = {"+": a + b, "-": a - b, "*": a * b, "/": a / b if b else Fraction(0)}[op]
        steps.append(f"{fmt(a)}{op}{fmt(b)}={fmt(v)}")
        return v

    ev(ast.parse(expression, mode="eval").body)
    return " ".join(steps)


# --- statistics -------------------------------------------------------------------------------------------------

# Two-sided 95% quantiles of Student's t, t_{0.975, df} for df = 1..30 (standard tables).
T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
        2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def t_interval(scores: list[float]) -> tuple[float, list[float]]:
    """(mean, [lo, hi]): the 95% t-interval of the mean of independent runs (one run: [mean, mean])."""
    m = statistics.fmean(scores)
    if len(scores) < 2:
        return m, [m, m]
    df = len(scores) - 1
    half = (T975[df - 1] if df <= len(T975) else 1.960) * statistics.stdev(scores) / math.sqrt(len(scores))
    return m, [m - half, m + half]


# --- building blocks ------------------------------------------------------------------------------------------------


def prepare(root: Path, name: str, plan: Plan, causal: bool = False):
    """Data and an untrained model (LLaDA, or a Llama with causal=True) under root. Rows whose response
    does not fit the GEN_LENGTH canvas (with its EOS) are dropped, train and test alike; test prompts
    never occur in training. Returns (task, test rows, max_length = longest prompt + 1 + GEN_LENGTH)."""
    from trainers.tokenizer import build_char_tokenizer

    task, response = task_setup(name)
    tok = build_char_tokenizer(CHARS, words=TAGS, pad_to=8)

    def fits(r):  # the response and its EOS fit the canvas
        return len(tok(response(r), add_special_tokens=False)["input_ids"]) < GEN_LENGTH

    key = lambda r: json.dumps(task.messages(r))  # noqa: E731
    test = [r for r in task.generate(plan.test_rows * 2, 999) if fits(r)][: plan.test_rows]
    held_out = {key(r) for r in test}
    train = [r for r in task.generate(plan.train_rows * 2, 1) if key(r) not in held_out and fits(r)][: plan.train_rows]
    write_data(root / "data", task, train, test, response)
    init = root / "init"
    if not (init / "config.json").exists():
        if causal:
            new_llama(init, tok, plan.hidden, plan.layers, 0)
        else:
            new_llada(init, tok, plan.hidden, plan.layers, 0)
    # + 1: "<reasoning>" opens the response in training and closes the prompt at evaluation
    return task, test, prompt_length(task, init, train + test) + 1 + GEN_LENGTH


def stage(method: str, model: Path, out: Path, data: Path, steps: int, lr: float, plan: Plan, length: int, seed: int,
          extra: list[str] = ()) -> dict:
    print(f"experiments: {method} -> {out} ({steps} steps, seed {seed})", file=sys.stderr)
    return train_stage(method, model, out, data, steps, lr, plan.batch, length, seed, True, ["--no-progress", *extra])


def eval_causal(name: str, model_dir: Path, task, test: list[dict], out: Path, seed: int, **l2d_kw) -> dict:
    """Greedy decoding of a causal LM or, with l2d_kw (solver, ode_steps), L2D's sampler, both through
    the model's sampler (`dlmarch.sampling.sampler_for`), with the d1 prompt ("<reasoning>" after the
    generation prompt); scored by the task. Cached like demo.run_eval. The summary adds
    evaluations_per_token (L2D: the diffusion path's evaluations per generated token, the final
    read-out included)."""
    from dlmarch.prompts import decode, encode_prompts, left_pad
    from dlmarch.registry import load_pretrained
    from dlmarch.sampling import DecodingOptions, sampler_for
    from dlmarch.tokenizers import load_tokenizer
    from trainers.tasks import REASONING_PREFIX

    cached = out / f"eval-{name}.summary.json"
    if cached.exists():
        return json.loads(cached.read_text())
    model = load_pretrained(model_dir).eval()
    tok = load_tokenizer(model_dir)
    eos = tok.eos_token_id
    sampler = sampler_for(model)
    options = sampler.resolve(model, DecodingOptions(gen_length=GEN_LENGTH, **l2d_kw))
    prompts = [task.messages(r) for r in test]
    encoded = encode_prompts(tok, prompts, True, REASONING_PREFIX)
    gen = torch.Generator().manual_seed(seed)
    records, t0, evals, tokens = [], time.time(), 0, 0
    for start in range(0, len(test), 64):
        ids, am = left_pad(encoded[start:start + 64], tok.pad_token_id)
        stats: dict = {}
        x = sampler(model, ids, am, options, generator=gen, stats=stats)
        evals, tokens = evals + stats.get("diffusion_evaluations", 0), tokens + stats.get("tokens", 0)
        for j, row_ids in enumerate(x[:, ids.shape[1]:]):
            i = start + j
            text = decode(tok, row_ids, [eos])
            records.append({"index": i, "generation": text, **task.score(REASONING_PREFIX + text, test[i])})
    summary = {"task": task.name, **task.summarize(records), "primary": task.primary, "seconds": round(time.time() - t0, 3),
               "evaluations_per_token": evals / tokens if tokens else None, **l2d_kw}
    with open(out / f"eval-{name}.jsonl", "w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    cached.write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def score(summary: dict) -> float:
    return float(summary[summary["primary"]])


def per_step(summary: dict) -> float:
    """Wall seconds per optimizer step of a stage (the steps this process ran, if it resumed)."""
    return summary["seconds"] / max(1, summary["steps"] - summary.get("resumed_from", 0))


def per_item(summary: dict) -> float:
    return summary["seconds"] / max(1, summary["n"])


# --- the experiments ----------------------------------------------------------------------------------------------


def run_methods(out: Path, plan: Plan) -> tuple[dict, dict]:
    """(methods, base): per task, each method's scores over the seeds; per task, the base's score."""
    result, bases = {}, {}
    for name in TASKS:
        root = out / name
        task, test, length = prepare(root, name, plan)
        data = root / "data" / "train.jsonl"
        stage("sft", root / "init", root / "base", data, plan.base_steps, plan.base_lr, plan, length, 0)
        base = score(run_eval("base", root / "base" / "model", task, test, root, 0, GEN_LENGTH, BLOCK_LENGTH))
        result[name], bases[name] = {}, base
        for m, (trainer, extra) in METHODS.items():
            scores = []
            for s in plan.seeds:
                run = root / f"{m}-s{s}"
                stage(trainer, root / "base" / "model", run, data, plan.method_steps, plan.method_lr, plan, length, s, extra)
                scores.append(score(run_eval(f"{m}-s{s}", run / "model", task, test, root, s, GEN_LENGTH, BLOCK_LENGTH)))
            mean, ci = t_interval(scores)
            result[name][m] = {"seeds": list(plan.seeds), "scores": scores, "mean": mean, "ci95": ci}
    return result, bases


def run_block_size(out: Path, plan: Plan) -> dict:
    root = out / "sudoku"
    task, test, length = prepare(root, "sudoku", plan)
    data, seed = root / "data" / "train.jsonl", plan.seeds[0]
    stage("sft", root / "init", root / "base", data, plan.base_steps, plan.base_lr, plan, length, 0)
    accuracy = []
    for b in BLOCKS:
        # block size BLOCK_LENGTH, seed 0 is the methods experiment's Blockwise run: shared, not repeated
        run = root / (f"blockwise-s{seed}" if b == BLOCK_LENGTH else f"blockwise-b{b}-s{seed}")
        stage("blockwise", root / "base" / "model", run, data, plan.method_steps, plan.method_lr, plan, length, seed,
              ["--block-size", str(b)])
        row = []
        for d in BLOCKS:
            name = f"blockwise-s{seed}" if b == d == BLOCK_LENGTH else f"blockwise-b{b}-s{seed}-d{d}"
            row.append(score(run_eval(name, run / "model", task, test, root, seed, GEN_LENGTH, d)))
        accuracy.append(row)
    return {"train": list(BLOCKS), "decode": list(BLOCKS), "accuracy": accuracy}


def run_l2d_steps(out: Path, plan: Plan) -> dict:
    root = out / "l2d"
    task, test, length = prepare(root, "sudoku", plan, causal=True)
    data = root / "data" / "train.jsonl"
    stage("ar", root / "init", root / "main", data, plan.base_steps, plan.base_lr, plan, length, 0)
    main = root / "main" / "model"
    stage("ar", main, root / "ar-finetune", data, plan.method_steps, plan.method_lr, plan, length, 0)
    stage("l2d", main, root / "l2d", data, plan.method_steps, plan.method_lr, plan, length, 0,
          ["--flow-dim", str(plan.l2d_flow_dim), "--l2d-lora-rank", str(plan.l2d_lora_rank)])
    result = {"main_only": score(eval_causal("main", main, task, test, root, 0)),
              "ar_finetune": score(eval_causal("ar-finetune", root / "ar-finetune" / "model", task, test, root, 0))}
    for solver, counts in ODE_EVALS.items():
        per_solver = {}
        for n in counts:
            # a uniform grid of k points spends k - 1 evaluations (Euler) or 2 (k - 1) (midpoint) in the ODE
            k = n + 1 if solver == "euler" else n // 2 + 1
            s = eval_causal(f"l2d-{solver}-{n}", root / "l2d" / "model", task, test, root, 0, solver=solver, ode_steps=k)
            per_solver[str(n)] = score(s)
        result[solver] = per_solver
    return result


def run_cost(out: Path, plan: Plan) -> tuple[dict, dict]:
    """(per training step, per evaluated item): ratios to SFT of wall seconds, from the stages' and
    evaluations' summaries on disk (the methods: mean over tasks and seeds; ar and l2d: their fine-tunes, whose
    backbone is a Llama of the same size; l2d evaluated with Euler at 8 evaluations)."""
    def read(p: Path) -> dict:
        if not p.exists():
            raise DlmarchError(f"cost: {p} is missing; run the methods and l2d_steps experiments first")
        return json.loads(p.read_text())

    steps, items = {}, {}
    for m in METHODS:
        runs = [(out / t / f"{m}-s{s}" / "summary.json", out / t / f"eval-{m}-s{s}.summary.json")
                for t in TASKS for s in plan.seeds]
        steps[m] = statistics.fmean(per_step(read(a)) for a, _ in runs)
        items[m] = statistics.fmean(per_item(read(b)) for _, b in runs)
    root = out / "l2d"
    steps["ar"], items["ar"] = per_step(read(root / "ar-finetune" / "summary.json")), per_item(read(root / "eval-ar-finetune.summary.json"))
    steps["l2d"], items["l2d"] = per_step(read(root / "l2d" / "summary.json")), per_item(read(root / "eval-l2d-euler-8.summary.json"))
    return {m: steps[m] / steps["sft"] for m in steps}, {m: items[m] / items["sft"] for m in items}


# results.json keys beside the schema, written by the experiment named on the left
EXTRA = {"methods": "base", "cost": "cost_per_item"}
RUNNERS = {"methods": run_methods, "block_size": run_block_size, "l2d_steps": run_l2d_steps, "cost": run_cost}


# --- report ---------------------------------------------------------------------------------------------------------


def pct(x: float) -> str:
    return f"{100 * x:.1f}"


# What differs from each paper's setting, said where its effect does not appear here.
PAPER_SETTING = {  # the settings of configs/*.yaml, each sourced there
    "gift": "GIFT fine-tunes the pretrained LLaDA-8B-Instruct in d1's setting (LoRA r 128, lr 1e-5)",
    "lift": "LIFT fine-tunes the pretrained LLaDA-8B-Instruct (the LIFT repository's run script: lr 5e-6, 20 epochs)",
    "blockwise": "Blockwise SFT fine-tunes the pretrained LLaDA-8B-Instruct (LoRA r 256, 200 steps of 32 rows) on "
                 "reasoning responses that span many 32-token blocks; here a response spans two",
    "l2d": "L2D adds a LoRA diffusion path to a pretrained Llama-3.2-1B-Instruct; here the main model is a small "
           "Llama taught one task, and the diffusion path trains for the shared fine-tuning budget only",
}


def findings(r: dict, root: Path | None = None) -> list[str]:
    """What the numbers say about each claim, whichever way it points; where a claimed effect does
    not appear, what differs from the paper's setting. `root` (the output directory) adds what the
    runs' own logs say (the L2D stage's losses)."""
    out = []
    plan = r.get("config", {}).get("plan", {})
    for task, methods in r.get("methods", {}).items():
        sft = methods["sft"]
        base = r.get("base", {}).get(task)
        if base is not None:
            means = [x["mean"] for x in methods.values()]
            if base == 0 and not any(means):
                out.append(f"{task}: the base solves no held-out item and no fine-tune does either: the task is not "
                           f"learned at this scale, so this table compares nothing.")
            else:
                move = max(abs(m - base) for m in means)
                out.append(f"{task}: the base scores {pct(base)}; the fine-tunes' means lie within {pct(move)} points "
                           f"of it" + (f": {plan.get('method_steps', '?')} steps at lr {plan.get('method_lr', '?')} "
                                       f"barely move the base, so this table has little power to separate the methods"
                                       if move < 0.02 else "") + ".")
        for m in ("gift", "lift3", "lift2", "blockwise"):
            x = methods[m]
            if x["ci95"][0] > sft["ci95"][1]:
                verdict = "beats SFT (intervals disjoint): the claimed effect appears"
            elif x["ci95"][1] < sft["ci95"][0]:
                verdict = "falls below SFT (intervals disjoint): the claimed effect does not appear"
            else:
                verdict = "is not distinguishable from SFT (intervals overlap): the claimed effect does not appear"
            line = f"{task}: {m} {pct(x['mean'])} vs sft {pct(sft['mean'])}: {verdict}"
            if "does not" in verdict:
                line += f". {PAPER_SETTING[m.rstrip('23')]}"
            out.append(line + ".")
    if "block_size" in r:
        acc = r["block_size"]["accuracy"]
        best = [max(range(len(row)), key=row.__getitem__) for row in acc]
        diag = sum(b == i for i, b in enumerate(best))
        line = (f"block size: the decoding block length equal to the training block size is the best of its row in "
                f"{diag} of {len(acc)} rows (ties go to the smallest block length)")
        if len(set(best)) == 1:
            line += (f"; decoding block length {r['block_size']['decode'][best[0]]} is the best of every row, whatever "
                     f"the training block size")
        if diag < len(acc):
            line += f". {PAPER_SETTING['blockwise']}"
        out.append(line + ".")
    if "l2d_steps" in r:
        l2d = r["l2d_steps"]
        e = l2d["euler"]
        lo, hi = min(e, key=int), max(e, key=int)
        trend = "rises" if e[hi] > e[lo] else ("falls" if e[hi] < e[lo] else "does not change")
        line = (f"l2d: with Euler, accuracy {trend} from {pct(e[lo])} at {lo} evaluation(s) to {pct(e[hi])} at {hi}; "
                f"the main model alone scores {pct(l2d['main_only'])} (one evaluation "
                f"{'matches' if abs(e[lo] - l2d['main_only']) < 1e-9 else 'differs from'} it), the AR fine-tune "
                f"{pct(l2d['ar_finetune'])}")
        same = all(abs(x - l2d["main_only"]) < 1e-9 for sv in ODE_EVALS for x in l2d.get(sv, {}).values())
        if same:
            line += "; every L2D setting scores exactly what the main model alone scores"
            log = root / "l2d" / "l2d" / "metrics.jsonl" if root else None
            if log and log.exists():
                losses = [json.loads(x)["loss"] for x in log.read_text().splitlines()[:10]]
                line += (f" (the diffusion path's training loss starts at {statistics.fmean(losses):.4f} over its first "
                         f"{len(losses)} steps: the main model already fits the training rows, so there is little "
                         f"for the diffusion path to correct)")
        if trend != "rises":
            line += f". {PAPER_SETTING['l2d']}"
        out.append(line + ".")
    return out


DIFFERENCES = """Throughout, this setting differs from the papers' in: a model of
{hidden} hidden units and {layers} layers trained from scratch on one synthetic task (the papers
fine-tune 1B-8B pretrained models: LLaDA-8B-Instruct for GIFT, LIFT and Blockwise SFT, Llama 3 /
Qwen 2.5 for L2D); {method_steps} fine-tuning steps of batch {batch} after {base_steps} steps that
teach the task (the papers train for thousands of steps on d1's or their own mixtures); a
character-level vocabulary; {seeds} seeds over {test_rows} held-out items, so intervals are wide;
and one shared learning rate for every method, not each paper's tuned one."""


def report(r: dict, root: Path | None = None) -> str:
    cfg = r.get("config", {})
    plan = cfg.get("plan", {})
    lines = ["# Experiments: the papers' claims at small scale", "",
             f"Command: `{cfg.get('command', 'python -m trainers.experiments')}`; "
             f"{'quick' if cfg.get('quick') else 'full'} budget, {cfg.get('seconds', 0):.0f} s in all.", "",
             "## Shared hyper-parameters (every method alike)", "",
             "| " + " | ".join(plan) + " |", "|" + "---|" * len(plan), "| " + " | ".join(str(v) for v in plan.values()) + " |", "",
             f"Canvas {GEN_LENGTH} tokens; sampler: d1 protocol (greedy, low-confidence remasking, "
             f"steps = {GEN_LENGTH // 2}, block length {BLOCK_LENGTH} unless stated). AdamW, cosine decay, warmup "
             "5% of steps, clipping 1.0; fine-tunes are full (no LoRA). Metric: Sudoku cell accuracy over the empty "
             "cells; Countdown accuracy (a valid expression reaching the target). The base is trained once (seed 0); "
             "the seeds vary each fine-tune's noise and data order.", ""]
    if "methods" in r:
        lines += ["## Methods (same token budget)", ""]
        for task, methods in r["methods"].items():
            lines += [f"### {task}", "", "| method | scores per seed (%) | mean (%) | 95% t-interval (%) |", "|---|---|---|---|"]
            if task in r.get("base", {}):
                b = r["base"][task]
                lines.append(f"| base (before fine-tuning) | {pct(b)} | {pct(b)} | - |")
            for m, x in methods.items():
                scores = ", ".join(pct(s) for s in x["scores"])
                lines.append(f"| {m} | {scores} | {pct(x['mean'])} | [{pct(x['ci95'][0])}, {pct(x['ci95'][1])}] |")
            lines.append("")
        lines += ["![methods](methods.png)", ""]
    if "block_size" in r:
        b = r["block_size"]
        lines += ["## Blockwise SFT: training block size x decoding block length (Sudoku, seed 0)", "",
                  "| train \\ decode | " + " | ".join(map(str, b["decode"])) + " |", "|---" * (len(b["decode"]) + 1) + "|"]
        for t, row in zip(b["train"], b["accuracy"]):
            lines.append(f"| {t} | " + " | ".join(pct(x) for x in row) + " |")
        lines += ["", "![block size](block_size.png)", ""]
    if "l2d_steps" in r:
        l2d = r["l2d_steps"]
        counts = sorted({int(n) for s in ODE_EVALS for n in l2d.get(s, {})})
        lines += ["## L2D: accuracy against ODE evaluations per token (Sudoku)", "",
                  "| solver | " + " | ".join(map(str, counts)) + " |", "|---" * (len(counts) + 1) + "|"]
        for s in ODE_EVALS:
            lines.append(f"| {s} | " + " | ".join(pct(l2d[s][str(n)]) if str(n) in l2d[s] else "-" for n in counts) + " |")
        lines += ["", f"Main model alone (greedy AR): {pct(l2d['main_only'])}%; AR fine-tune with L2D's budget: "
                  f"{pct(l2d['ar_finetune'])}%. (Midpoint spends two evaluations per interval, so it has no 1.)", "",
                  "![l2d steps](l2d_steps.png)", ""]
    if "cost" in r:
        lines += ["## Cost (ratio to SFT)", "", "| method | train step | evaluated item |", "|---|---|---|"]
        per_item = r.get("cost_per_item", {})
        for m, c in r["cost"].items():
            lines.append(f"| {m} | {c:.2f} | {per_item[m]:.2f} |" if m in per_item else f"| {m} | {c:.2f} | - |")
        lines += ["", "ar and l2d train and decode a Llama of the same size; l2d decodes with Euler at 8 evaluations "
                  "per token. The masked-diffusion methods share the sampler, so their evaluation ratios differ by "
                  "timing noise and EOS-early stops only.", "", "![cost](cost.png)", ""]
    lines += ["## What comes out", ""] + [f"- {f}" for f in findings(r, root)] + [""]
    if plan:
        lines += [DIFFERENCES.format(**{**plan, "seeds": len(plan["seeds"])}).replace("\n", " "), ""]
    return "\n".join(lines)


def plots(out: Path, r: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if "methods" in r:
        fig, axes = plt.subplots(1, len(r["methods"]), figsize=(6 * len(r["methods"]), 4), squeeze=False)
        for ax, (task, methods) in zip(axes[0], r["methods"].items()):
            names = list(methods)
            means = [100 * methods[m]["mean"] for m in names]
            err = [[100 * (methods[m]["mean"] - methods[m]["ci95"][0]) for m in names],
                   [100 * (methods[m]["ci95"][1] - methods[m]["mean"]) for m in names]]
            ax.bar(names, means, yerr=err, capsize=4, color=[f"C{i}" for i in range(len(names))])
            if task in r.get("base", {}):
                ax.axhline(100 * r["base"][task], color="k", ls="--", label="base (before fine-tuning)")
                ax.legend(loc="lower right")
            ax.set_title(f"{task}: mean and 95% t-interval")
            ax.set_ylabel("%")
            ax.set_ylim(0, 100)
        save(fig, out / "methods.png")
    if "block_size" in r:
        b = r["block_size"]
        fig, ax = plt.subplots(figsize=(5, 4))
        im = ax.imshow([[100 * x for x in row] for row in b["accuracy"]], cmap="viridis")
        for i, row in enumerate(b["accuracy"]):
            for j, x in enumerate(row):
                ax.text(j, i, pct(x), ha="center", va="center", color="w")
        ax.set_xticks(range(len(b["decode"])), b["decode"])
        ax.set_yticks(range(len(b["train"])), b["train"])
        ax.set_xlabel("decoding block length")
        ax.set_ylabel("training block size")
        fig.colorbar(im, label="cell accuracy (%)")
        save(fig, out / "block_size.png")
    if "l2d_steps" in r:
        l2d = r["l2d_steps"]
        fig, ax = plt.subplots(figsize=(6, 4))
        for s in ODE_EVALS:
            ns = sorted(l2d[s], key=int)
            ax.plot([int(n) for n in ns], [100 * l2d[s][n] for n in ns], marker="o", label=f"L2D, {s}")
        ax.axhline(100 * l2d["main_only"], color="k", ls="--", label="main model alone")
        ax.axhline(100 * l2d["ar_finetune"], color="gray", ls=":", label="AR fine-tune")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("ODE evaluations per token")
        ax.set_ylabel("cell accuracy (%)")
        ax.set_ylim(0, 100)
        ax.legend()
        save(fig, out / "l2d_steps.png")
    if "cost" in r:
        names = list(r["cost"])
        fig, ax = plt.subplots(figsize=(7, 4))
        xs = range(len(names))
        ax.bar([x - 0.2 for x in xs], [r["cost"][m] for m in names], 0.4, label="per training step")
        ax.bar([x + 0.2 for x in xs], [r.get("cost_per_item", {}).get(m, 0.0) for m in names], 0.4, label="per evaluated item")
        ax.set_xticks(list(xs), names)
        ax.axhline(1.0, color="k", lw=0.8)
        ax.set_ylabel("ratio to SFT")
        ax.legend()
        save(fig, out / "cost.png")


def save(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)


def write_text(path: Path, text: str) -> None:
    with atomic_file(path) as f:  # a reader (or a resumed command) never sees half of it
        f.write(text)


# --- command ------------------------------------------------------------------------------------------------------------


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m trainers.experiments", description=__doc__.split("\n\n")[0])
    p.add_argument("--output", required=True, help="directory of every run, results.json, report.md and the plots")
    p.add_argument("--quick", action="store_true", help="tiny budgets (about a minute)")
    p.add_argument("--only", choices=EXPERIMENTS, action="append", help="run these experiments only (repeatable)")
    args = p.parse_args(argv)
    out = Path(args.output)
    plan = QUICK if args.quick else FULL
    results_path = out / "results.json"
    t0 = time.time()
    try:
        # a directory of the user's is refused before anything is written; ours (marked) is continued
        blocking = next((d for d in [out, *out.parents] if d.exists() and not d.is_dir()), None)
        if blocking is not None:
            raise DlmarchError(f"--output {out}: {blocking} is a file, not a directory")
        prepare_output(out, resume=True, overwrite=False, tool="trainers.experiments",
                       writes=(*TASKS, "l2d", "results.json", "report.md", "*.png"))
        try:
            results = read_json(results_path) if results_path.exists() else {}
            config = results.get("config", {})
            if not isinstance(config, dict) or isinstance(config.get("seconds", 0.0), bool) \
                    or not isinstance(config.get("seconds", 0.0), (int, float)):
                raise DlmarchError(f"{results_path}: 'config' is not the object this command writes")
        except DlmarchError as e:
            raise DlmarchError(f"{e}; move it away to start over") from None
        spent = results.get("config", {}).get("seconds", 0.0)  # earlier commands on this output (resumed, --only)
        if results and results.get("config", {}).get("quick") != args.quick:
            raise DlmarchError(f"{results_path} holds a {'quick' if results['config']['quick'] else 'full'} run; "
                               f"use another --output")
        for name in args.only or EXPERIMENTS:
            got = RUNNERS[name](out, plan)
            if name in EXTRA:  # a second table beside the schema's: the base's scores, the cost per item
                results[name], results[EXTRA[name]] = got
            else:
                results[name] = got
            results["config"] = {"quick": args.quick, "plan": asdict(plan), "gen_length": GEN_LENGTH,
                                 "block_length": BLOCK_LENGTH, "methods": {m: [t, *e] for m, (t, e) in METHODS.items()},
                                 "tasks": list(TASKS), "command": " ".join(["python -m trainers.experiments", *(argv or sys.argv[1:])]),
                                 "seconds": spent + time.time() - t0}
            write_text(results_path, json.dumps(results, indent=2) + "\n")
            print(f"experiments: {name} done ({time.time() - t0:.0f}s)", file=sys.stderr)
        plots(out, results)
        write_text(out / "report.md", report(results, out))
    except DlmarchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"error: {os_error_line(e)}", file=sys.stderr)
        return 2
    print(f"experiments finished in {time.time() - t0:.0f}s: {out / 'report.md'}, {results_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
