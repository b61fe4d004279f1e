"""`python -m trainers.evaluate --model DIR --task TASK [--data FILE.jsonl]`: card 8's protocol.

Defaults are the d1 protocol: block length 32, temperature 0, low-confidence remasking, steps =
gen_length / 2, and "<reasoning>" appended after the chat template's generation prompt. LLaDA-style
models decode with `dlmarch.generate`, L2D models with `dlmarch.generate_l2d`. Every generation is
written to a JSONL file next to its score, and the summary printed and saved beside it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from dlmarch.errors import DlmarchError
from dlmarch.sampling.cli import decode, encode_prompts, left_pad, sampler_warnings

from .tasks import REASONING_PREFIX, TASKS, get_task


def evaluate(model, tokenizer, task, rows: list[dict], *, gen_length: int = 128, block_length: int = 32,
             steps: int | None = None, batch_size: int = 16, reasoning_prefix: bool = True, chat_template: bool = True,
             temperature: float = 0.0, kv_cache: bool = False, threshold: float | None = None, block_causal: bool = False,
             seed: int = 0, progress: bool = True) -> tuple[dict, list[dict]]:
    """Generate for every row, score, and summarise. Returns (summary, per-row records)."""
    from dlmarch import generate, generate_l2d
    from dlmarch.models.l2d import L2DModel

    is_l2d = isinstance(model, L2DModel)
    cfg = model.main.config if is_l2d else model.config
    steps = steps or max(1, gen_length // 2)
    prompts = [task.messages(r) for r in rows]
    encoded = encode_prompts(tokenizer, prompts, chat_template, REASONING_PREFIX if reasoning_prefix else "")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else cfg.eos_token_id
    eos_ids = [i for i in (cfg.eos_token_id, getattr(cfg, "eot_token_id", None)) if i is not None]
    gen = torch.Generator(device=model.device).manual_seed(seed)
    records, t0, n_tokens = [], time.time(), 0
    batches = range(0, len(rows), batch_size)
    if progress:
        from tqdm.auto import tqdm

        batches = tqdm(batches, desc=f"eval {task.name}", unit="batch", leave=False)
    model.eval()
    for start in batches:
        ids, am = left_pad(encoded[start:start + batch_size], pad)
        if is_l2d:
            x = generate_l2d(model, ids, am, max_new_tokens=gen_length, temperature=temperature, generator=gen,
                             eos_token_id=cfg.eos_token_id)
        else:
            x = generate(model, ids, attention_mask=am, steps=steps, gen_length=gen_length, block_length=block_length,
                         temperature=temperature, generator=gen, kv_cache=kv_cache, threshold=threshold,
                         block_causal=block_causal)
        n_tokens += x.shape[0] * (x.shape[1] - ids.shape[1])
        for j, row_ids in enumerate(x[:, ids.shape[1]:]):
            i = start + j
            text = decode(tokenizer, row_ids, eos_ids)
            scored = task.score((REASONING_PREFIX if reasoning_prefix else "") + text, rows[i])
            records.append({"index": i, "prompt": prompts[i], "generation": text, "reference": rows[i], **scored})
    seconds = time.time() - t0
    summary = {"task": task.name, **task.summarize(records), "primary": task.primary, "gen_length": gen_length,
               "block_length": block_length, "steps": steps, "seconds": round(seconds, 2),
               "tokens_per_s": n_tokens / max(seconds, 1e-9)}
    return summary, records


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m trainers.evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True)
    p.add_argument("--task", required=True, choices=list(TASKS))
    p.add_argument("--data", help="JSONL rows of the task (required for gsm8k and math500)")
    p.add_argument("--num", type=int, default=None, help="first N rows (default: all; generated tasks: 256)")
    p.add_argument("--seed", type=int, default=1234, help="seed of generated tasks and of sampling")
    p.add_argument("--gen-length", type=int, default=128)
    p.add_argument("--block-length", type=int, default=32)
    p.add_argument("--steps", type=int, default=None, help="default: gen_length / 2")
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--kv-cache", action="store_true")
    p.add_argument("--threshold", type=float, default=None)
    p.add_argument("--block-causal", action="store_true")
    p.add_argument("--no-reasoning-prefix", action="store_true")
    p.add_argument("--no-system-prompt", action="store_true")
    p.add_argument("--device", default=None)
    p.add_argument("--output", help="JSONL of generations (default: MODEL/eval-TASK.jsonl); the summary goes beside it")
    args = p.parse_args(argv)
    try:
        for name in ("steps", "gen_length", "block_length", "batch_size", "num"):  # 0 would otherwise fall back to the default
            if getattr(args, name) is not None and getattr(args, name) < 1:
                raise DlmarchError(f"--{name.replace('_', '-')} must be at least 1, found {getattr(args, name)}")
        from dlmarch.sampling.cli import load_for_generation

        kw = {"with_system_prompt": False} if args.no_system_prompt and args.task in ("sudoku", "countdown") else {}
        task = get_task(args.task, **kw)
        if args.no_system_prompt:
            task.system_prompt = None
        rows = task.load(args.data) if args.data else task.generate(args.num or 256, args.seed)
        rows = rows[: args.num] if args.num else rows
        model, tok = load_for_generation(args.model, None, args.device, allow_l2d=True)
        for w in sampler_warnings(args.model, args.block_length, args.block_causal):
            print(w, file=sys.stderr)
        summary, records = evaluate(model, tok, task, rows, gen_length=args.gen_length, block_length=args.block_length,
                                    steps=args.steps, batch_size=args.batch_size,
                                    reasoning_prefix=not args.no_reasoning_prefix, temperature=args.temperature,
                                    kv_cache=args.kv_cache, threshold=args.threshold, block_causal=args.block_causal,
                                    seed=args.seed)
    except (DlmarchError, ValueError, OSError) as e:
        print(f"error: {str(e).splitlines()[0]}", file=sys.stderr)
        return 2
    out = Path(args.output or Path(args.model) / f"eval-{args.task}.jsonl")
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    summary.update(model=str(args.model), generations=str(out))
    out.with_suffix(".summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    metric = summary[task.primary]
    print(f"{args.task}: {task.primary} = {metric:.4f} over {summary['n']} rows "
          f"({summary['tokens_per_s']:.0f} tokens/s); generations: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
