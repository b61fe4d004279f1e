"""`python -m trainers.ar_to_diffusion_demo [--quick] --output DIR`: AR -> diffusion at toy scale.

Dream 7B was initialised from Qwen2.5 and then trained with the masked-diffusion loss (Ye et al.,
2025); this repeats the recipe on a CPU:

1. builds a character tokenizer, a small causal Llama and 4x4 Sudoku data (train and held-out test,
   disjoint; the response is the d1 format "<reasoning>...</reasoning><answer>GRID</answer>");
2. teaches the causal model the task with next-token SFT (`python -m trainers.ar`);
3. converts it with `to-diffusion --style dream` (same weights, run bidirectionally, the head still
   predicting token i+1; the tokenizer's mask token is the mask);
4. scores the converted model with Dream's sampler (`trainers.evaluate`: generate_dream, greedy,
   entropy order, steps = gen_length / 2);
5. fine-tunes it with masked-diffusion SFT (`python -m trainers.sft`, the shift handled by the
   objectives);
6. scores it again, and writes results.md / results.json under --output. Beside them: the causal
   model's own greedy score, and a control (the untrained Llama converted and fine-tuned the same
   way), which shows what the autoregressive training is worth.

Seeds are fixed. --quick is a run of a few seconds for the test suite (numbers meaningless). A killed
run resumes with --resume (finished stages and evaluations are kept).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from dlmarch.atomic import atomic_file, write_json

from .toy import GEN_LENGTH, Plan, claim_output, evaluate_model, new_llama, pipeline_main, pipeline_parser, stage, \
    sudoku_length, sudoku_rows
# base_*: teaching the causal model (next-token SFT); method_*: the masked-diffusion fine-tune of the converted model
FULL = Plan(hidden=64, layers=2, train_rows=4000, test_rows=128, base_steps=600, method_steps=1000, batch=32,
            base_lr=3e-3, method_lr=1e-3)
QUICK = Plan(hidden=32, layers=1, train_rows=64, test_rows=4, base_steps=3, method_steps=3, batch=8, base_lr=2e-3,
             method_lr=1e-3)
WRITES = ("init", "data", "ar", "dream", "dream-sft", "scratch", "scratch-sft", "eval-*.jsonl", "eval-*.summary.json",
          "results.md", "results.json")


def convert(src: Path, dst: Path) -> None:
    """`python -m conversions to-diffusion SRC DST --style dream --mask-token-id <the tokenizer's mask>`."""
    from conversions.to_diffusion import to_diffusion
    from dlmarch.tokenizers import load_tokenizer

    if (dst / "config.json").exists():
        return
    tok = load_tokenizer(src)
    to_diffusion(src, dst, "dream", mask_token_id=tok.mask_token_id)


def markdown(rows: list[dict]) -> str:
    lines = ["| model | decoded with | cell accuracy | solved | training steps | train time (s) | eval time (s) |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        tt = f"{r['train_seconds']:.0f}" if r.get("train_seconds") is not None else "-"
        lines.append(f"| {r['model']} | {r['sampler']} | {100 * r['cell_accuracy']:.1f}% | {100 * r['solved_rate']:.1f}% | "
                     f"{r['train_steps']} | {tt} | {r['eval_seconds']:.1f} |")
    return "\n".join(lines)


def run(argv=None) -> int:
    p = pipeline_parser("python -m trainers.ar_to_diffusion_demo", __doc__, "runs/ar-to-diffusion",
                        "a few-second run (checks that it works; numbers meaningless)")
    args = p.parse_args(argv)
    out = Path(args.output)
    plan = QUICK if args.quick else FULL
    claim_output(out, args.resume, args.overwrite, "trainers.ar_to_diffusion_demo", WRITES)
    t0 = time.time()
    say = lambda msg: print(f"ar-to-diffusion: {msg}", file=sys.stderr)  # noqa: E731
    say(f"building tokenizer, causal model and data in {out}")
    task, test = sudoku_rows(out, plan, args.seed, new_model=new_llama)
    length = sudoku_length(task, out / "init")
    train = out / "data" / "train.jsonl"
    common = [] if not args.quick else ["--no-progress"]
    say(f"teaching the causal model ({plan.base_steps} steps of next-token SFT)")
    ar = stage("ar", out / "init", out / "ar", train, plan.base_steps, plan.base_lr, plan.batch, length, args.seed,
               args.resume, common)
    say("converting it: to-diffusion --style dream")
    convert(out / "ar" / "model", out / "dream")
    say(f"fine-tuning the converted model ({plan.method_steps} steps of masked-diffusion SFT)")
    sft = stage("sft", out / "dream", out / "dream-sft", train, plan.method_steps, plan.method_lr, plan.batch, length,
                args.seed, args.resume, common)
    say(f"control: the untrained causal model converted, then the same {plan.method_steps} steps")
    convert(out / "init", out / "scratch")
    scratch = stage("sft", out / "scratch", out / "scratch-sft", train, plan.method_steps, plan.method_lr, plan.batch,
                    length, args.seed, args.resume, common)
    say("scoring")
    ar_eval = evaluate_model("ar", out / "ar" / "model", task, test, out, args.seed, gen_length=GEN_LENGTH)
    rows = [{"model": "causal Llama (next-token SFT)", "sampler": "greedy, left to right", **pick(ar_eval),
             "train_steps": plan.base_steps, "train_seconds": ar["seconds"]}]
    for name, label, steps, summary in [("dream", "converted to Dream", 0, None),
                                        ("dream-sft", "converted + masked-diffusion SFT", plan.method_steps, sft),
                                        ("scratch-sft", "control: untrained Llama converted + the same SFT",
                                         plan.method_steps, scratch)]:
        model_dir = out / name if summary is None else out / name / "model"
        ev = evaluate_model(name, model_dir, task, test, out, args.seed, gen_length=GEN_LENGTH)
        rows.append({"model": label, "sampler": f"generate_dream (entropy, {GEN_LENGTH // 2} steps)", **pick(ev),
                     "train_steps": steps, "train_seconds": summary["seconds"] if summary else None})
    table = markdown(rows)
    seconds = time.time() - t0
    with atomic_file(out / "results.md") as f:
        f.write(table + f"\n\n{len(test)} held-out puzzles; {seconds:.0f} s in all.\n")
    write_json(out / "results.json", {"plan": plan.record(), "seed": args.seed, "rows": rows, "seconds": seconds})
    print(table)
    print(f"{seconds:.0f} s; results: {out / 'results.md'}")
    return 0


def main(argv=None) -> int:
    return pipeline_main(run, argv)


def pick(summary: dict) -> dict:
    return {"cell_accuracy": summary["cell_accuracy"], "solved_rate": summary["solved_rate"], "n": summary["n"],
            "eval_seconds": summary["seconds"]}


if __name__ == "__main__":
    sys.exit(main())
