"""Training step time, tokens/s and peak memory of the objectives and data layouts, side by side.

    python benchmarks/train_speed.py                       # all variants, CPU, ~20M LLaDA
    python benchmarks/train_speed.py --variants sft gift   # a subset
    python benchmarks/train_speed.py --size 100m --steps 6

Every variant runs the real trainer (`python -m trainers.<method>`) in its own process on the same
synthetic data with hidden padding (--eos-pad exclude): length-skewed by default (80% short
responses, 20% long), so that padding is pure waste and packing's gain is visible, or rows that all
fill --max-length (--data-kind uniform) for Blockwise, all-blocks and LIFT:

    python benchmarks/train_speed.py --data-kind uniform --max-length 256 --batch-size 32 \
        --variants sft blockwise all-blocks lift --size tiny

Step times are the mean of the steps after the first two; ratios are against `sft` (padded) in the
same run; "supervised tokens" are the tokens in the loss.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from benchmarks.common import emit, machine, matmul_peak_flops, max_rss_mib, run_isolated, table  # noqa: E402

SIZES = {
    "tiny": dict(hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=4, intermediate_size=128),
    "20m": dict(hidden_size=512, num_layers=6, num_heads=8, num_kv_heads=8, intermediate_size=1408),
    "100m": dict(hidden_size=768, num_layers=12, num_heads=12, num_kv_heads=12, intermediate_size=2048),
}

VARIANTS = {
    # name: (method, extra flags)
    "sft": ("sft", []),
    "gift": ("gift", []),
    "sft-packed": ("sft", ["--pack", "--eos-pad", "exclude"]),
    "gift-packed": ("gift", ["--pack", "--eos-pad", "exclude"]),
    "sft-grad-ckpt": ("sft", ["--grad-checkpointing"]),
    "sft-lora": ("sft", ["--lora-rank", "16"]),
    "gift-lora": ("gift", ["--lora-rank", "16"]),
    # The amortised GIFT probe only saves work after the first epoch: these two train on the first
    # `SUBSET` rows for two epochs and time the second one.
    "sft-epoch2": ("sft", []),
    "gift-probe-every-2-epoch2": ("gift", ["--probe-every", "2"]),
    # Card 5 and 6 (run with --data-kind uniform --max-length 256 --batch-size 32):
    "blockwise": ("blockwise", ["--block-size", "32"]),
    "all-blocks": ("blockwise", ["--block-size", "32", "--all-blocks"]),
    "lift": ("lift", []),
}
DEFAULT_VARIANTS = ["sft", "gift", "sft-packed", "gift-packed", "sft-grad-ckpt", "sft-lora", "gift-lora", "sft-epoch2",
                    "gift-probe-every-2-epoch2"]
SUBSET = 64


def make_workdir(work: Path, size: str, max_length: int, rows: int, seed: int = 0, kind: str = "skewed") -> None:
    from dlmarch import LLaDAConfig, LLaDAModel
    from trainers.tokenizer import build_char_tokenizer

    tok = build_char_tokenizer(pad_to=8)
    cfg = LLaDAConfig(vocab_size=len(tok), mask_token_id=tok.mask_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id, max_position_embeddings=4096, **SIZES[size])
    torch.manual_seed(seed)
    LLaDAModel(cfg).init_weights().save_pretrained(work / "model")
    tok.save_pretrained(work / "model")
    rng = random.Random(seed)
    letters = "abcdefghijklmnopqrstuvwxyz "
    with open(work / "data.jsonl", "w") as f:
        for _ in range(rows):
            if kind == "uniform":  # every row fills about max_length: a 24-48 token prompt, the rest response
                prompt = "".join(rng.choice(letters) for _ in range(rng.randint(20, 44)))
                n = max_length - len(prompt) - 12
            else:
                n = rng.randint(max_length // 3, max_length - 60) if rng.random() < 0.2 else rng.randint(20, 60)
                prompt = "".join(rng.choice(letters) for _ in range(rng.randint(10, 30)))
            f.write(json.dumps({"prompt": prompt, "response": "".join(rng.choice(letters) for _ in range(n))}) + "\n")


def child(args) -> None:
    import importlib

    method, extra = VARIANTS[args.variant]
    out = Path(args.work) / f"run-{args.variant}"
    if out.exists():
        shutil.rmtree(out)
    main = importlib.import_module(f"trainers.{method}").main
    data, steps, skip = Path(args.work) / "data.jsonl", args.steps, 2
    if args.variant.endswith("-epoch2"):
        per_epoch = SUBSET // args.batch_size
        data = Path(args.work) / "subset.jsonl"
        data.write_text("".join((Path(args.work) / "data.jsonl").read_text().splitlines(keepends=True)[:SUBSET]))
        steps, skip = 2 * per_epoch, per_epoch
    rc = main(["--model", str(Path(args.work) / "model"), "--data", str(data),
               "--output", str(out), "--max-steps", str(steps), "--batch-size", str(args.batch_size),
               "--max-length", str(args.max_length), "--eos-pad", "exclude", "--save-every", "100000", "--lr", "1e-4",
               "--no-progress", "--seed", "0", *extra])
    if rc != 0:
        raise SystemExit(rc)
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    timed = rows[skip - 1:]
    step_s = [b["elapsed_s"] - a["elapsed_s"] for a, b in zip(timed[:-1], timed[1:])]
    tokens = sum(r["tokens"] for r in timed[1:])
    supervised = sum(r.get("supervised_tokens", 0) for r in timed[1:])
    emit({"step_s": sum(step_s) / len(step_s), "tokens_per_s": tokens / sum(step_s), "peak_mib": max_rss_mib(),
          "tokens_per_step": tokens / len(step_s), "supervised_per_s": supervised / sum(step_s) if supervised else None})


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--child", action="store_true")
    p.add_argument("--variant")
    p.add_argument("--work")
    p.add_argument("--variants", nargs="+", default=DEFAULT_VARIANTS, choices=list(VARIANTS))
    p.add_argument("--data-kind", choices=["skewed", "uniform"], default="skewed")
    p.add_argument("--size", default="20m", choices=list(SIZES))
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--rows", type=int, default=2000)
    args = p.parse_args()
    if args.child:
        return child(args)
    work = Path(tempfile.mkdtemp(prefix="dlmarch-train-bench-"))
    make_workdir(work, args.size, args.max_length, args.rows, kind=args.data_kind)
    common = ["--work", str(work), "--steps", str(args.steps), "--batch-size", str(args.batch_size),
              "--max-length", str(args.max_length)]
    rows = []
    for name in args.variants:
        r = run_isolated(__file__, common + ["--variant", name])
        r["variant"] = name
        rows.append(r)
        print(f"  {name}: {r['step_s']:.3f} s/step, {r['tokens_per_s']:.0f} tok/s", file=sys.stderr)
    ref = {r["variant"]: r for r in rows}
    for r in rows:
        base = ref.get("sft") or rows[0]
        r["time_vs_sft"] = r["step_s"] / base["step_s"]
        r["tok_vs_sft"] = r["tokens_per_s"] / base["tokens_per_s"]
        r["mem_vs_sft"] = r["peak_mib"] / base["peak_mib"]
        ref_sup = (ref.get("blockwise") or {}).get("supervised_per_s")
        r["sup_vs_blockwise"] = r["supervised_per_s"] / ref_sup if ref_sup and r.get("supervised_per_s") else None
        pair = {"gift": "sft", "gift-packed": "sft-packed", "gift-lora": "sft-lora",
                "gift-probe-every-2-epoch2": "sft-epoch2"}.get(r["variant"])
        r["vs_its_sft"] = r["step_s"] / ref[pair]["step_s"] if pair in ref else None
    print(f"# training steps, {args.size} LLaDA, micro-batch {args.batch_size} x max {args.max_length}, {args.data_kind} "
          f"data, fp32; machine: {machine()}; matmul peak now {matmul_peak_flops('cpu', torch.float32) / 1e9:.0f} GFLOP/s")
    print(table(rows, [("variant", "variant", "s"), ("step_s", "s/step", ".3f"), ("tokens_per_step", "data tokens/step", ".0f"),
                       ("tokens_per_s", "data tokens/s", ".0f"), ("time_vs_sft", "step time x sft", ".2f"),
                       ("vs_its_sft", "GIFT/SFT (same layout)", ".2f"), ("tok_vs_sft", "tokens/s x sft", ".2f"),
                       ("peak_mib", "peak RSS MiB", ".0f"), ("mem_vs_sft", "mem x sft", ".2f"),
                       ("supervised_per_s", "supervised tokens/s", ".0f"), ("sup_vs_blockwise", "x blockwise", ".2f")]))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
