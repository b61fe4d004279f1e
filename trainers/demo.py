"""`python -m trainers.demo`: the papers' comparison at small scale, on a fresh CPU machine.

1. Builds a character tokenizer and a small LLaDA from scratch, and generates 4x4 Sudoku puzzles
   with unique solutions (train and held-out test, disjoint).
2. Teaches the model the task and its answer format with masked-diffusion SFT (the "base").
3. Fine-tunes the base with sft, gift, blockwise and lift under the same token budget (same steps,
   batch and sequence length).
4. Evaluates the untrained model, the base and every method with the same sampler (d1's
   protocol: block length 32, steps = gen_length / 2, greedy, low-confidence remasking), and prints
   a table (method, cell accuracy, solved rate, training tokens/s, time) and writes results.md,
   results.json and demo.png (loss curves and accuracies) under --output.

Seeds are fixed. --quick runs a one-minute version (used by the test suite). A killed demo picks up
where it stopped with --resume (finished stages are kept, an interrupted one resumes from its last
checkpoint).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from dlmarch.atomic import atomic_file, write_json

from .toy import GEN_LENGTH, SUDOKU_QUICK, Plan, claim_output, evaluate_model, pipeline_main, pipeline_parser, stage, sudoku_length, sudoku_rows

METHODS = ("sft", "gift", "blockwise", "lift")
FULL = Plan(hidden=128, layers=4, train_rows=4000, test_rows=256, base_steps=1500, method_steps=600, batch=32,
            base_lr=2e-3, method_lr=3e-4)
QUICK = SUDOKU_QUICK
BLOCK_LENGTH = GEN_LENGTH  # d1 protocol block; the answer and its tags fit one block


def plot(out: Path, rows: list[dict], methods: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    for m in methods:
        lines = [json.loads(x) for x in (out / m / "metrics.jsonl").read_text().splitlines()]
        ema, ys = None, []
        for r in lines:
            ce = r.get("ce", r["loss"])
            ema = ce if ema is None else 0.95 * ema + 0.05 * ce
            ys.append(ema)
        ax1.plot([r["step"] for r in lines], ys, label=m)
    ax1.set_title("fine-tuning: cross-entropy on masked tokens (EMA)")
    ax1.set_xlabel("step")
    ax1.set_ylabel("nats")
    ax1.legend()
    names = [r["method"].split(" ")[0] for r in rows]
    acc = [100 * r["cell_accuracy"] for r in rows]
    bars = ax2.bar(names, acc, color=["#bbb", "#888"] + [f"C{i}" for i in range(len(names) - 2)])
    for b, a in zip(bars, acc):
        ax2.text(b.get_x() + b.get_width() / 2, a + 0.5, f"{a:.1f}", ha="center", fontsize=9)
    ax2.set_title(f"Sudoku 4x4: cell accuracy over empty cells ({rows[0]['n']} puzzles)")
    ax2.set_ylabel("%")
    fig.tight_layout()
    fig.savefig(out / "demo.png", dpi=120)
    plt.close(fig)


def markdown(rows: list[dict]) -> str:
    lines = ["| method | cell accuracy | solved | train tokens/s | train time (s) | eval time (s) |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        tps = f"{r['train_tokens_per_s']:.0f}" if r.get("train_tokens_per_s") else "-"
        tt = f"{r['train_seconds']:.0f}" if r.get("train_seconds") else "-"
        lines.append(f"| {r['method']} | {100 * r['cell_accuracy']:.1f}% | {100 * r['solved_rate']:.1f}% | {tps} | {tt} | "
                     f"{r['eval_seconds']:.1f} |")
    return "\n".join(lines)


# What the demo writes at the top of its --output (the manifest its marker records): --overwrite
# removes these and nothing else (a notebook the user added stays).
WRITES = ("init", "data", "base", *METHODS, "eval-*.jsonl", "eval-*.summary.json", "results.md", "results.json",
          "demo.png")


def run(argv=None) -> int:
    p = pipeline_parser("python -m trainers.demo", __doc__, "runs/demo", "a one-minute run")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    args = p.parse_args(argv)
    out = Path(args.output)
    plan = QUICK if args.quick else FULL
    claim_output(out, args.resume, args.overwrite, "trainers.demo", WRITES)
    t0 = time.time()
    print(f"demo ({'quick' if args.quick else 'full'}): building tokenizer, model and data in {out}", file=sys.stderr)
    task, test = sudoku_rows(out, plan, args.seed)
    length = sudoku_length(task, out / "init")
    train = out / "data" / "train.jsonl"
    print(f"demo: teaching the format ({plan.base_steps} steps of sft from scratch)", file=sys.stderr)
    base = stage("sft", out / "init", out / "base", train, plan.base_steps, plan.base_lr, plan.batch, length,
                 args.seed, args.resume)
    stages = {"untrained": (out / "init", None), "base (sft from scratch)": (out / "base" / "model", base)}
    extra = {"blockwise": ["--block-size", str(BLOCK_LENGTH)]}
    for m in args.methods:
        print(f"demo: fine-tuning the base with {m} ({plan.method_steps} steps)", file=sys.stderr)
        s = stage(m, out / "base" / "model", out / m, train, plan.method_steps, plan.method_lr, plan.batch, length,
                  args.seed, args.resume, extra.get(m, []))
        stages[m] = (out / m / "model", s)
    rows = []
    for name, (model_dir, summary) in stages.items():
        ev = evaluate_model(name.split(" ")[0], model_dir, task, test, out, args.seed, gen_length=GEN_LENGTH,
                            block_length=BLOCK_LENGTH, steps=GEN_LENGTH // 2)
        rows.append({"method": name, "cell_accuracy": ev["cell_accuracy"], "solved_rate": ev["solved_rate"],
                     "n": ev["n"], "eval_seconds": ev["seconds"],
                     "train_tokens_per_s": summary["tokens_per_s"] if summary else None,
                     "train_seconds": summary["seconds"] if summary else None})
    table = markdown(rows)
    with atomic_file(out / "results.md") as f:
        f.write(table + "\n")
    write_json(out / "results.json", {"plan": plan.record(), "seed": args.seed, "rows": rows, "seconds": time.time() - t0})
    plot(out, rows, list(args.methods))
    print(table)
    print(f"\ndemo finished in {time.time() - t0:.0f}s: {out / 'results.md'}, {out / 'demo.png'}")
    return 0


def main(argv=None) -> int:
    return pipeline_main(run, argv)


if __name__ == "__main__":
    sys.exit(main())
