"""`python -m trainers.grpo_demo`: diffu-GRPO's mean reward rising on a toy, on a fresh CPU machine.

1. Builds the Sudoku 4x4 toy of `trainers.demo` (character tokenizer, a small LLaDA, generated
   puzzles with unique solutions) and teaches it the answer format with a short masked-diffusion
   SFT (the cold start: the format learned, the cells often wrong).
2. Runs `python -m trainers.grpo --task sudoku` from that model with d1's Sudoku reward (the share
   of empty cells filled as the row's "solution", dllm-reasoning/d1 `diffu-grpo/reward_func.py`)
   towards a synthetic target the cold start never saw: every empty cell holds 1. (Real 4x4 Sudoku is
   not a toy target here: a 0.1M-parameter model after a minute of SFT fills cells at chance, 25%, and
   reinforcement learning sharpens what a model can already sample, it does not teach a skill from
   nothing; on the real solutions the reward did not rise: 0.15-0.36 per rollout batch, means of
   five batches 0.26, 0.24, 0.24, 0.17 over 32 steps.) d1's defaults
   otherwise scaled down (4 prompts x a group of 8 per step, mu = 2, one block of 32 tokens,
   16 diffusion steps, lr 2e-4, full fine-tuning).
3. Plots the reward per step (and its moving average) to --figure.

Seeds are fixed; a killed run continues with --resume.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from dlmarch.atomic import atomic_file
from dlmarch.outputs import check_file_output

from .toy import SUDOKU_QUICK, claim_output, grpo_stage, pipeline_main, pipeline_parser, stage, sudoku_length, sudoku_rows

QUICK = SUDOKU_QUICK  # the SFT start: the Sudoku demo's --quick setting, whose base learns the format in a minute


def plot(metrics: Path, figure: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(x) for x in metrics.read_text().splitlines()]
    steps = [r["step"] for r in rows]
    reward = [r["reward"] for r in rows]
    ema, smooth = None, []
    for v in reward:
        ema = v if ema is None else 0.9 * ema + 0.1 * v
        smooth.append(ema)
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(steps, reward, alpha=0.35, label="mean reward of the step's rollouts")
    ax.plot(steps, smooth, label="EMA (0.9)")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("d1 Sudoku reward (share of empty cells = target)")
    ax.set_title(title, fontsize=9)
    ax.legend()
    fig.tight_layout()
    with atomic_file(figure, "wb") as f:  # never half a PNG; tagged so that --overwrite knows it is ours
        fig.savefig(f, format="png", dpi=110, metadata={"Software": FIGURE_TAG})
    plt.close(fig)


FIGURE_TAG = "dlmarch trainers.grpo_demo"
# What the demo writes at the top of its --output (the manifest its marker records).
WRITES = ("init", "data", "base", "grpo", "reward.png")


def _our_figure(path: Path) -> bool:
    """A PNG this command wrote: its text chunk (before the image data) names it."""
    with open(path, "rb") as f:
        return FIGURE_TAG.encode() in f.read(1 << 16)


def run(argv=None) -> int:
    p = pipeline_parser("python -m trainers.grpo_demo", __doc__, "runs/grpo-demo", argparse.SUPPRESS)
    p.add_argument("--base-steps", type=int, default=600, help="SFT steps of the cold start (the demo's quick base)")
    p.add_argument("--grpo-steps", type=int, default=40, help="GRPO optimizer steps")
    p.add_argument("--figure", default=None, help="PNG of the reward curve (default: OUTPUT/reward.png)")
    args = p.parse_args(argv)
    out = Path(args.output)
    if args.figure:  # a path outside --output: never an existing file of the user's
        check_file_output(args.figure, {"--output": out}, "--figure", args.overwrite, _our_figure)
    claim_output(out, args.resume, args.overwrite, "trainers.grpo_demo", WRITES)
    t0 = time.time()
    task, _ = sudoku_rows(out, QUICK, args.seed)
    length = sudoku_length(task, out / "init")
    print(f"grpo demo: cold start ({args.base_steps} steps of sft)", file=sys.stderr)
    stage("sft", out / "init", out / "base", out / "data" / "train.jsonl", args.base_steps, QUICK.base_lr, QUICK.batch,
          length, args.seed, args.resume)
    rows = [json.loads(x) for x in (out / "data" / "train.jsonl").read_text().splitlines()]
    puzzles = out / "data" / "puzzles.jsonl"
    with open(puzzles, "w") as f:  # the same puzzles, with the toy's target as their "solution"
        for r in rows:
            puzzle = r["messages"][0]["content"].split(": ")[1].strip()
            f.write(json.dumps({"puzzle": puzzle, "solution": puzzle.replace("0", "1")}) + "\n")
    print(f"grpo demo: diffu-GRPO ({args.grpo_steps} steps)", file=sys.stderr)
    summary = grpo_stage(out / "base" / "model", out / "grpo", puzzles, args.grpo_steps, args.seed, args.resume)
    figure = Path(args.figure) if args.figure else out / "reward.png"
    plot(out / "grpo" / "metrics.jsonl", figure,
         f"diffu-GRPO, Sudoku toy (target: empty cells = 1), LLaDA {QUICK.hidden}x{QUICK.layers} after {args.base_steps} SFT steps")
    print(f"grpo demo finished in {time.time() - t0:.0f}s: {figure}; {summary.get('model')}")
    return 0


def main(argv=None) -> int:
    return pipeline_main(run, argv)


if __name__ == "__main__":
    sys.exit(main())
