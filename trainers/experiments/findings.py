""""What comes out": each claim read off results.json, whichever way it points. Every sentence is
computed from the numbers (no sentence is written in advance of them); where a claimed effect does
not appear, the paper's setting is named beside it."""

from __future__ import annotations

from .l2d import ODE_EVALS
from .stats import difference_interval
from .wording import PAPER_SETTING, compare, pct, span


def methods_findings(r: dict) -> list[str]:
    out = []
    for task, methods in r.get("methods", {}).items():
        sft, base = methods["sft"], r.get("base", {}).get(task)
        if base is not None:
            moves = {m: x["mean"] - base for m, x in methods.items()}
            least = min(moves, key=moves.get)
            out.append(f"{task}: the pretrained base scores {pct(base)} before fine-tuning; at the largest budget every "
                       f"fine-tune moves it by {pct(moves[least])} points or more (least: {least}; most: "
                       f"{max(moves, key=moves.get)}, {pct(max(moves.values()))})"
                       + (": fine-tuning has a task to teach here" if moves[least] >= 0.10 else
                          ": some fine-tunes barely move the base") + ".")
        d = r.get("detectable", {}).get(task)
        for m in ("gift", "lift3", "lift2", "blockwise"):
            verdict = compare(methods[m], sft, m, "sft")
            line = f"{task}: {m} {pct(methods[m]['mean'])} {span(methods[m]['ci95'])} vs sft {pct(sft['mean'])} " \
                   f"{span(sft['ci95'])}: {verdict}"
            if "beats" not in verdict:
                line += "; the claimed gain does not appear"
                if len(methods[m].get("scores", ())) >= 2 and len(sft.get("scores", ())) >= 2:
                    hi = difference_interval(methods[m]["scores"], sft["scores"])[1][1]
                    line += (f" (gains above {pct(hi)} points are excluded at 95%" if hi > 0 else " (no gain is within the interval")
                    line += f"; the design detects {pct(d['difference'])} points with 80% power)" if d else ")"
                line += f". {PAPER_SETTING[m.rstrip('23')]}"
            else:
                line += ": the claimed gain appears"
            out.append(line + ".")
        curves = r.get("curves", {}).get(task)
        if curves:
            budgets = next(iter(curves.values()))["budgets"]
            leaders = [max(curves, key=lambda m: curves[m]["mean"][i]) for i in range(len(budgets))]
            out.append(f"{task}: the best mean at each budget ({', '.join(map(str, budgets))} steps): "
                       f"{', '.join(leaders)}.")
    return out


def block_findings(r: dict) -> list[str]:
    b = r["block_size"]
    acc, decode = b["accuracy"], b["decode"]
    best = [max(range(len(row)), key=row.__getitem__) for row in acc]
    diag = sum(i == j for i, j in enumerate(best))
    line = (f"block size: the decoding block length equal to the training block size is the best of its row in "
            f"{diag} of {len(acc)} rows")
    if len(set(best)) == 1:
        line += f"; decoding block length {decode[best[0]]} is the best of every row, whatever the training block size"
    per_seed = b.get("per_seed")  # [train][seed][decode]
    if per_seed and diag:  # is each diagonal best told apart from its row's runner-up?
        told = 0
        for i, j in enumerate(best):
            if i == j and len(acc[i]) > 1:
                runner = max((k for k in range(len(acc[i])) if k != j), key=acc[i].__getitem__)
                lo_ = difference_interval([run[j] for run in per_seed[i]], [run[runner] for run in per_seed[i]])[1][0]
                told += lo_ > 0
        line += f", told apart from the row's runner-up (t-test at 5%) in {told} of them"
        diag = told
    out = [line + (f". {PAPER_SETTING['blockwise']}" if diag < len(acc) else "") + "."]
    if "sft" in b:
        j = 0  # the smallest decoding block: where SFT's whole-response training differs most from its decoding
        small = {"mean": acc[0][j], "ci95": b["ci95"][0][j]} if "ci95" in b else {"mean": acc[0][j], "ci95": [acc[0][j]] * 2}
        sft = {"mean": b["sft"][j], "ci95": b["sft_ci95"][j]}
        if "per_seed" in b and "sft_per_seed" in b:  # [train][seed][decode], [seed][decode]
            small["scores"] = [run[j] for run in b["per_seed"][0]]
            sft["scores"] = [run[j] for run in b["sft_per_seed"]]
        out.append(f"block size: decoded in blocks of {decode[j]}, SFT scores {pct(sft['mean'])} {span(sft['ci95'])}, "
                   f"Blockwise SFT trained with blocks of {b['train'][0]} {pct(small['mean'])} {span(small['ci95'])}: "
                   f"{compare(small, sft, 'blockwise', 'sft')}; SFT loses {pct(b['sft'][-1] - b['sft'][j])} points "
                   f"from blocks of {decode[-1]} to blocks of {decode[j]}.")
    return out


def gap_findings(r: dict) -> list[str]:
    g = r["gap"]
    gaps = [c - m for c, m in zip(g["causal"], g["mdm"])]
    out = ["gap: trained from scratch on the same rows, the causal model leads the masked-diffusion model by "
           + ", ".join(f"{pct(x)} points at {b} steps" for x, b in zip(gaps, g["budgets"])) + "."]
    base_name = next(iter(g["mdm_decoding"]))
    base = g["mdm_decoding"][base_name]
    deltas = {k: v - base for k, v in g["mdm_decoding"].items() if k != base_name}
    best = max(deltas, key=deltas.get)
    share = deltas[best] / gaps[-1] if gaps[-1] > 0 else 0.0
    of_gap = f", {100 * share:.0f}% of the gap at {g['budgets'][-1]} steps" if gaps[-1] > 0 else ""
    out.append(f"gap: of the decoding changes, '{best}' moves the masked-diffusion model most "
               f"({100 * deltas[best]:+.1f} points{of_gap}); "
               + "; ".join(f"'{k}' {100 * v:+.1f}" for k, v in deltas.items() if k != best) + ".")
    trend = gaps[-1] - gaps[0]
    out.append(f"gap: with training length the gap {'narrows' if trend < 0 else 'widens' if trend > 0 else 'stays'} "
               f"({pct(gaps[0])} -> {pct(gaps[-1])} points from {g['budgets'][0]} to {g['budgets'][-1]} steps): "
               + ("the masked-diffusion model is still learning (it fits every order of the tokens, the causal model one)"
                  if trend < 0 else "more training alone does not close it") + ".")
    return out + copy_findings(g) if "copy" in g else out


def copy_findings(g: dict) -> list[str]:
    """The gap's cause, read off `clue_copy`: whether the masked-diffusion model reproduces the given
    digits the causal model reproduces, and whether copying separates the pretrained SFT seeds."""
    c, m, last = g["copy"]["causal"][-1], g["copy"]["mdm"][-1], g["budgets"][-1]
    head = (f"gap: at {last} steps the from-scratch causal model reproduces {pct(c['copied'])}% of the puzzle's given "
            f"digits in place, the masked-diffusion model {pct(m['copied'])}% (chance: 25%), and "
            f"{pct(m['collapsed'])}% of the latter's answers repeat one digit in 10 or more of the 16 cells")
    if c["copied"] - m["copied"] >= 0.2:
        out = [head + ": the masked-diffusion model does not reliably copy cell i of the prompt into cell i of the "
               "answer, which the causal model does and which no decoding change above supplies (masked diffusion "
               "trains on every order of the tokens; Nie et al. 2024, 'Scaling up Masked Diffusion Models on Text', "
               "report about 16x a causal model's compute for equal likelihood)."]
    else:
        out = [head + ": copying the clues does not separate them."]
    runs = sorted(g["copy"].get("pretrained_sft", []), key=lambda x: x["copied"])
    if len(runs) >= 2:
        together = [x["score"] for x in runs] == sorted(x["score"] for x in runs)
        copying = [x["score"] for x in runs if x["copied"] >= 0.95]
        others = [x["score"] for x in runs if x["copied"] < 0.95]
        line = ("gap: the pretrained SFT seeds at the largest budget, by share of given digits copied: "
                + "; ".join(f"seed {x['seed']} {pct(x['copied'])}% copied, {pct(x['score'])} accuracy" for x in runs)
                + (": accuracy never falls as copying rises" if together else ": accuracy does not follow copying"))
        if copying:
            line += f"; the runs that copy 95% or more of the digits score {pct(min(copying))} to {pct(max(copying))}"
            if max(copying) < g["causal"][-1]:
                line += (f", below the causal model's {pct(g['causal'][-1])}: copying is part of the gap, not all of it "
                         "(the rest is solving the puzzle)")
            if others and max(others) < min(copying):
                line += "; the runs that copy less score lower"
        out.append(line + ".")
    return out


def l2d_findings(r: dict) -> list[str]:
    l2d = r["l2d_steps"]
    e = l2d["euler"]
    counts = sorted(e, key=int)
    values = [e[n] for n in counts]
    lo, hi, peak = counts[0], counts[-1], counts[values.index(max(values))]
    monotone = all(x <= y for x, y in zip(values, values[1:]))
    trend = "rises" if monotone and e[hi] > e[lo] else ("falls" if e[hi] < e[lo] else "is not monotone")
    shape = (f", peaking at {peak} ({pct(e[peak])}) and falling back after" if peak not in (lo, hi) else "")  # not just its ends
    best_solver, best_n = max(((s, n) for s in ODE_EVALS for n in l2d.get(s, {})), key=lambda sn: l2d[sn[0]][sn[1]])
    line = (f"l2d: with Euler, accuracy goes from {pct(e[lo])} at {lo} evaluation(s) to {pct(e[hi])} at {hi}{shape}; "
            f"the main model alone scores {pct(l2d['main_only'])}; the best L2D setting ({best_solver}, {best_n}) scores "
            f"{pct(l2d[best_solver][best_n])}, the AR fine-tune of equal budget {pct(l2d['ar_finetune'])}")
    ci = l2d.get("ci95", {})
    if best_solver in ci and "ar_finetune" in ci:
        seeds = l2d.get("per_seed", {})
        a = {"mean": l2d[best_solver][best_n], "ci95": ci[best_solver][best_n],
             "scores": seeds.get(best_solver, {}).get(best_n, [])}
        b = {"mean": l2d["ar_finetune"], "ci95": ci["ar_finetune"], "scores": seeds.get("ar_finetune", [])}
        line += f" ({compare(a, b, 'L2D', 'the AR fine-tune')})"
    if trend != "rises":
        line += f". {PAPER_SETTING['l2d']}"
    return [line + "."]


def rl_findings(r: dict) -> list[str]:
    starts = r["rl"]["starts"]
    if not {"sft", "gift"} <= set(starts):
        return []
    a, b = ({"mean": starts[k]["mean_final_reward"], "ci95": starts[k]["ci95_final_reward"],
             "scores": starts[k].get("final_reward", [])} for k in ("gift", "sft"))
    verdict = compare(a, b, "the GIFT start", "the SFT start")
    rises = {k: x["mean_final_reward"] - sum(c[0] for c in x["reward"]) / len(x["reward"]) for k, x in starts.items()}
    line = (f"rl: over the last fifth of diffu-GRPO, the GIFT start's mean reward is {a['mean']:.3f}, the SFT start's "
            f"{b['mean']:.3f}: {verdict}; the reward moved by {rises['gift']:+.3f} (GIFT) and {rises['sft']:+.3f} (SFT) "
            f"from the first step; held-out after RL: GIFT {pct(starts['gift']['mean_after'])}, SFT "
            f"{pct(starts['sft']['mean_after'])}")
    if "beats" not in verdict:
        line += f". The claimed advantage does not appear here. {PAPER_SETTING['rl']}"
    return [line + "."]


def findings(r: dict) -> list[str]:
    out = methods_findings(r)
    if "block_size" in r:
        out += block_findings(r)
    if "gap" in r:
        out += gap_findings(r)
    if "l2d_steps" in r:
        out += l2d_findings(r)
    if "rl" in r:
        out += rl_findings(r)
    return out
