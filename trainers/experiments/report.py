"""report.md from results.json: a section per experiment (its tables), then "What comes out": each
paper's claim read off the numbers, whichever way they point, with what differs from the paper's
setting where its effect does not appear. Nothing here trains or evaluates."""

from __future__ import annotations

from .l2d import ODE_EVALS
from .findings import findings
from .setting import BLOCK_LENGTH, GEN_LENGTH
from .wording import pct, span


def cell(v) -> str:
    """A plan value as the report prints it, the same whether read from results.json (lists) or from the
    plan the command ran (tuples)."""
    return ", ".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v)


def methods_section(r: dict) -> list[str]:
    lines = ["## Methods: learning curves from one pretrained base", ""]
    for task, curves in r.get("curves", {}).items():
        budgets = next(iter(curves.values()))["budgets"]
        lines += [f"### {task}", "", "| method | " + " | ".join(f"{b} steps: mean [95% CI]" for b in budgets) +
                  " | scores per seed at the largest budget |", "|---" * (len(budgets) + 2) + "|"]
        if task in r.get("base", {}):
            lines.append("| base (pretrained, before fine-tuning) | " + " | ".join(pct(r["base"][task]) for _ in budgets) +
                         f" | {pct(r['base'][task])} |")
        for m, c in curves.items():
            cells = " | ".join(f"{pct(mu)} {span(ci)}" for mu, ci in zip(c["mean"], c["ci95"]))
            lines.append(f"| {m} | {cells} | {', '.join(pct(s) for s in c['scores'][-1])} |")
        d = r.get("detectable", {}).get(task)
        if d:
            lines += ["", f"Seeds per point: {d['seeds']}; pooled seed standard deviation at the largest budget "
                      f"{pct(d['pooled_sd'])} points, so two methods whose true means differ by "
                      f"{pct(d['difference'])} points or more are told apart (t-test at 5%, power 80%); smaller "
                      f"differences may go unseen."]
        lines.append("")
    return lines + ["![methods](methods.png)", ""]


def block_section(r: dict) -> list[str]:
    b = r["block_size"]
    lines = ["## Blockwise SFT: training block size x decoding block length (Sudoku)", "",
             f"Mean over seeds {b.get('seeds', [0])} [95% CI]; each row's runs at the largest budget.", "",
             "| train \\ decode | " + " | ".join(map(str, b["decode"])) + " |", "|---" * (len(b["decode"]) + 1) + "|"]
    for i, (t, row) in enumerate(zip(b["train"], b["accuracy"])):
        ci = b.get("ci95", [[None] * len(row)] * len(b["train"]))[i]
        lines.append(f"| blockwise {t} | " + " | ".join(pct(x) + (f" {span(c)}" if c else "")
                                                        for x, c in zip(row, ci)) + " |")
    if "sft" in b:
        lines.append("| sft (no blocks) | " + " | ".join(f"{pct(x)} {span(c)}" for x, c in zip(b["sft"], b["sft_ci95"])) + " |")
    return lines + ["", "![block size](block_size.png)", ""]


def gap_section(r: dict) -> list[str]:
    g = r["gap"]
    lines = ["## Masked diffusion against causal on the same rows (Sudoku, from scratch, seed 0)", "",
             "| training steps | " + " | ".join(map(str, g["budgets"])) + " |", "|---" * (len(g["budgets"]) + 1) + "|",
             "| causal (next-token SFT, greedy) | " + " | ".join(pct(x) for x in g["causal"]) + " |",
             "| masked diffusion (SFT, d1 protocol) | " + " | ".join(pct(x) for x in g["mdm"]) + " |", "",
             f"The masked-diffusion model at {g['budgets'][-1]} steps, decoded otherwise:", "",
             "| decoding | from scratch | pretrained + SFT (seed 0) |", "|---|---|---|"]
    for name, x in g["mdm_decoding"].items():
        other = g.get("pretrained_sft", {}).get(name)
        lines.append(f"| {name} | {pct(x)} | {pct(other) if other is not None else '-'} |")
    if "copy" in g:
        lines += ["", "Copying the clues: the share of the puzzle's given digits each model reproduces in place in its "
                  "answer, and the share of answers in which one digit fills 10 or more of the 16 cells.", "",
                  "| model | given digits copied | collapsed answers | cell accuracy |", "|---|---|---|---|"]
        for kind, label in (("causal", "causal"), ("mdm", "masked diffusion")):
            for b, c, acc in zip(g["budgets"], g["copy"][kind], g[kind]):
                lines.append(f"| {label}, {b} steps | {pct(c['copied'])} | {pct(c['collapsed'])} | {pct(acc)} |")
        for x in g["copy"].get("pretrained_sft", []):
            lines.append(f"| pretrained + SFT, seed {x['seed']} | {pct(x['copied'])} | {pct(x['collapsed'])} | "
                         f"{pct(x['score'])} |")
    return lines + ["", "![gap](gap.png)", ""]


def l2d_section(r: dict) -> list[str]:
    l2d = r["l2d_steps"]
    counts = sorted({int(n) for s in ODE_EVALS for n in l2d.get(s, {})})
    ci = l2d.get("ci95", {})
    lines = ["## L2D on an imperfect main model: accuracy against ODE evaluations per token (Sudoku)", "",
             "| solver | " + " | ".join(map(str, counts)) + " |", "|---" * (len(counts) + 1) + "|"]
    for s in ODE_EVALS:
        lines.append(f"| {s} | " + " | ".join(
            (pct(l2d[s][str(n)]) + (f" {span(ci[s][str(n)])}" if s in ci else "")) if str(n) in l2d[s] else "-"
            for n in counts) + " |")
    ar_ci = f" {span(ci['ar_finetune'])}" if "ar_finetune" in ci else ""
    lines += ["", f"Main model alone (greedy AR, {l2d.get('main_steps', '?')} steps of next-token SFT): "
              f"{pct(l2d['main_only'])}%; AR fine-tune with L2D's budget: {pct(l2d['ar_finetune'])}%{ar_ci}. "
              "(Midpoint spends two evaluations per interval, so it has no 1.)", "", "![l2d steps](l2d_steps.png)", ""]
    return lines


def rl_section(r: dict) -> list[str]:
    rl = r["rl"]
    lines = [f"## RL after SFT or GIFT: diffu-GRPO cold starts (Sudoku, {rl['steps']} steps, lr {rl['lr']})", "",
             "| cold start | held-out before RL | held-out after RL: mean [95% CI] | reward, last fifth of the run: "
             "mean [95% CI] |", "|---|---|---|---|"]
    for start, x in rl["starts"].items():
        lines.append(f"| {start} | {', '.join(pct(v) for v in x['before'])} | {pct(x['mean_after'])} "
                     f"{span(x['ci95_after'])} | {x['mean_final_reward']:.3f} [{x['ci95_final_reward'][0]:.3f}, "
                     f"{x['ci95_final_reward'][1]:.3f}] |")
    return lines + ["", "![rl](rl.png)", ""]


def cost_section(r: dict) -> list[str]:
    lines = ["## Cost (ratio to SFT)", "", "| method | train step | evaluated item |", "|---|---|---|"]
    per_item = r.get("cost_per_item", {})
    for m, c in r["cost"].items():
        lines.append(f"| {m} | {c:.2f} | {per_item[m]:.2f} |" if m in per_item else f"| {m} | {c:.2f} | - |")
    return lines + ["", "ar and l2d train and decode a Llama of the same size; l2d decodes with Euler at 8 evaluations "
                    "per token. The masked-diffusion methods share the sampler, so their evaluation ratios differ by "
                    "timing noise and EOS-early stops only.", "", "![cost](cost.png)", ""]


SECTIONS = {"methods": methods_section, "block_size": block_section, "gap": gap_section, "l2d_steps": l2d_section,
            "rl": rl_section, "cost": cost_section}


def report(r: dict) -> str:
    cfg = r.get("config", {})
    plan = {k: v for k, v in cfg.get("plan", {}).items() if k != "extra"}
    lines = ["# Experiments: the papers' claims at small scale", "",
             f"Command: `{cfg.get('command', 'python -m trainers.experiments')}`; "
             f"{'quick' if cfg.get('quick') else 'full'} budget, {cfg.get('seconds', 0):.0f} s in all.", "",
             "## Shared hyper-parameters (every method alike)", "",
             "| " + " | ".join(plan) + " |", "|" + "---|" * len(plan), "| " + " | ".join(cell(v) for v in plan.values()) + " |",
             "", SETTING.format(gen=GEN_LENGTH, steps=GEN_LENGTH // 2, block=BLOCK_LENGTH).replace("\n", " "), ""]
    for key, section in SECTIONS.items():
        if key in r:
            lines += section(r)
    lines += ["## What comes out", ""] + [f"- {f}" for f in findings(r)] + [""]
    if plan:
        lines += [DIFFERENCES.format(**{**plan, "seeds": len(plan["seeds"])}).replace("\n", " "), ""]
    return "\n".join(lines)


SETTING = """Base: a LLaDA pretrained from scratch with LLaDA's objective (`trainers.pt`) on a synthetic
mixture of short texts (arithmetic, copying, reversing, sorting, counting, the missing number of a
set) that never shows a task's format; every fine-tune starts from it. Canvas {gen} tokens; sampler:
d1 protocol (greedy, low-confidence remasking, steps = {steps}, block length {block} unless stated).
AdamW; fine-tunes at a constant lr after a 5% warmup (so the checkpoint at each budget is the curve's
point there), clipping 1.0, full fine-tuning (no LoRA). Metric: Sudoku cell accuracy over the empty
cells; Countdown accuracy (a valid expression reaching the target). The seeds vary each fine-tune's
noise and data order; intervals are 95% t-intervals over seeds."""

DIFFERENCES = """Throughout, this setting differs from the papers' in: a model of {hidden} hidden units
and {layers} layers pretrained for {pt_steps} steps on a synthetic mixture (the papers fine-tune
1B-8B models pretrained on trillions of tokens: LLaDA-8B-Instruct for GIFT, LIFT and Blockwise SFT,
Llama 3 / Qwen 2.5 for L2D); fine-tunes of at most {method_steps} steps of batch {batch}; a
character-level vocabulary; {seeds} seeds over {test_rows} held-out items; and one shared learning
rate for every method, not each paper's tuned one."""

