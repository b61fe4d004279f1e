"""Tokens/s of LLaDA sampling: reference mode, prefix KV cache, confidence-threshold decoding, both,
Fast-dLLM's dual (prefix + suffix) cache alone and with the threshold; and how many generated
positions differ from reference mode.

    python benchmarks/sampling_speed.py --model runs/demo/sft/model     # a trained model (demo's)
    python benchmarks/sampling_speed.py --size 100m                    # random ~100M LLaDA
    python benchmarks/sampling_speed.py --size 100m --device cuda --dtype bf16
    python benchmarks/sampling_speed.py --dream tests/fixtures/dream-tiny   # Dream: generate_dream's variants
    python benchmarks/sampling_speed.py --dream tiny                         # a random tiny Dream

gen_length 256, block 32, steps = gen_length (one token per step in reference mode) unless given.
Agreement is only meaningful on a trained model: a random model has no confident positions, so
threshold decoding degenerates to one token per step and caching changes many choices.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from benchmarks.common import machine, sync, table  # noqa: E402
from dlmarch.dtypes import DTYPES  # noqa: E402
from dlmarch import AutoModel, DreamConfig, DreamModel, LLaDAConfig, LLaDAModel, generate, generate_dream  # noqa: E402

SIZES = {
    "100m": dict(vocab_size=16384, hidden_size=768, num_layers=12, num_heads=12, num_kv_heads=12, intermediate_size=2048),
    "tiny": dict(vocab_size=512, hidden_size=128, num_layers=4, num_heads=4, num_kv_heads=4, intermediate_size=384),
}


def prompts_for(model, args):
    """(prompt ids, scorer of generated ids or None)."""
    g = torch.Generator().manual_seed(0)
    if args.model:
        from dlmarch.tokenizers import load_tokenizer

        from dlmarch.prompts import encode_prompts
        from trainers.tasks import REASONING_PREFIX, get_task

        tok = load_tokenizer(args.model)
        task = get_task("sudoku", with_system_prompt=False)
        rows = task.generate(args.batch, 4242)
        ids = encode_prompts(tok, [task.messages(r) for r in rows], True, REASONING_PREFIX)

        def score(gen):
            texts = [REASONING_PREFIX + tok.decode(x[:32].tolist()) for x in gen]
            return task.summarize([task.score(t, r) for t, r in zip(texts, rows)])["cell_accuracy"]

        return torch.tensor(ids), score
    V = model.config.vocab_size
    return torch.randint(0, V - 2, (args.batch, args.prompt_length), generator=g), None


def dream_rows(model, prompt, args) -> tuple[list[dict], int]:
    """generate_dream's reference mode and Fast-dLLM's block decoding (no cache, prefix, dual; with and
    without threshold): tokens/s, and positions differing from the reference and from uncached blocks."""
    steps = args.steps or args.gen_length
    kw = dict(max_new_tokens=args.gen_length, steps=steps, temperature=0.0, top_k=None, alg="entropy")
    blk = dict(block_length=args.block_length)
    t = args.threshold
    variants = {"reference (diffusion_generate)": {}, "blocks, no cache": blk, "prefix cache": {**blk, "kv_cache": "prefix"},
                "dual cache": {**blk, "kv_cache": "dual"}, f"threshold {t}": {**blk, "threshold": t},
                f"prefix + threshold {t}": {**blk, "kv_cache": "prefix", "threshold": t},
                f"dual + threshold {t}": {**blk, "kv_cache": "dual", "threshold": t}}
    generate_dream(model, prompt[:, :8], max_new_tokens=args.block_length, steps=2, temperature=0.0)  # warm-up
    rows, outs = [], {}
    for name, extra in variants.items():
        sync(args.device)
        t0 = time.perf_counter()
        out = generate_dream(model, prompt, **kw, **extra)
        sync(args.device)
        dt = time.perf_counter() - t0
        gen = outs[name] = out[:, prompt.shape[1]:]
        ref, nocache = outs["reference (diffusion_generate)"], outs.get("blocks, no cache")
        rows.append({"variant": name, "seconds": dt, "tokens_per_s": gen.numel() / dt,
                     "differ_frac": float((gen != ref).float().mean()),
                     "differ_blocks": float((gen != nocache).float().mean()) if nocache is not None else None})
    base = rows[0]["tokens_per_s"]
    for r in rows:
        r["speedup"] = r["tokens_per_s"] / base
    return rows, steps


def run_dream(args) -> None:
    dtype = DTYPES[args.dtype]
    if args.dream == "tiny":
        torch.manual_seed(0)
        V = SIZES["tiny"]["vocab_size"]
        cfg = DreamConfig(**SIZES["tiny"], mask_token_id=V - 1, eos_token_id=V - 2, pad_token_id=V - 2,
                          max_position_embeddings=4096)
        model = DreamModel(cfg).init_weights().to(device=args.device, dtype=dtype).eval()
        what = f"random tiny Dream ({model.num_parameters() / 1e6:.1f}M)"
    else:
        model = AutoModel.from_pretrained(args.dream, dtype=dtype, device=args.device).eval()
        what = f"Dream {args.dream} ({model.num_parameters() / 1e6:.2f}M)"
    V = model.config.vocab_size
    ids = torch.randint(0, min(V - 2, model.config.mask_token_id), (args.batch, args.prompt_length),
                        generator=torch.Generator().manual_seed(0)).to(args.device)
    rows, steps = dream_rows(model, ids, args)
    print(f"# generate_dream, {what}, batch {args.batch}, prompt {args.prompt_length}, gen_length {args.gen_length}, "
          f"block {args.block_length}, steps {steps}, greedy, alg entropy, {args.dtype}, {args.device}; machine: {machine()}")
    print(table(rows, [("variant", "variant", "s"), ("tokens_per_s", "tokens/s", ".1f"), ("speedup", "x reference", ".2f"),
                       ("differ_frac", "fraction differing from reference", ".3f"),
                       ("differ_blocks", "... from blocks without cache", ".3f")]))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", help="a trained LLaDA directory (its prompts: the demo's Sudoku)")
    p.add_argument("--size", default="tiny", choices=list(SIZES))
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="fp32", choices=list(DTYPES))
    p.add_argument("--gen-length", type=int, default=256)
    p.add_argument("--block-length", type=int, default=32)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--threshold", type=float, default=0.9)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--prompt-length", type=int, default=64)
    p.add_argument("--dream", help="a Dream directory, or 'tiny' for a random tiny Dream: generate_dream's variants")
    args = p.parse_args()
    if args.dream:
        return run_dream(args)
    dtype = DTYPES[args.dtype]
    if args.model:
        model = AutoModel.from_pretrained(args.model, dtype=dtype, device=args.device).eval()
        what = f"trained model {args.model}"
    else:
        torch.manual_seed(0)
        cfg = LLaDAConfig(**SIZES[args.size], mask_token_id=SIZES[args.size]["vocab_size"] - 1, max_position_embeddings=4096)
        model = LLaDAModel(cfg).init_weights().to(device=args.device, dtype=dtype).eval()
        what = f"random {args.size} LLaDA ({model.num_parameters() / 1e6:.0f}M)"
    prompt, score = prompts_for(model, args)
    prompt = prompt.to(args.device)
    need = prompt.shape[1] + args.gen_length
    if need > model.config.max_position_embeddings:  # RoPE has no table to outgrow; only the check knows the limit
        print(f"(raising max_position_embeddings {model.config.max_position_embeddings} -> {need} for this run)", file=sys.stderr)
        model.config.max_position_embeddings = need
    steps = args.steps or args.gen_length
    kw = dict(steps=steps, gen_length=args.gen_length, block_length=args.block_length)
    variants = {"reference": {}, "kv cache": {"kv_cache": True}, f"threshold {args.threshold}": {"threshold": args.threshold},
                "both": {"kv_cache": True, "threshold": args.threshold}, "dual cache": {"kv_cache": "dual"},
                "dual + threshold": {"kv_cache": "dual", "threshold": args.threshold}}
    generate(model, prompt[:, :8], steps=2, gen_length=args.block_length, block_length=args.block_length)  # warm-up
    rows, ref = [], None
    for name, extra in variants.items():
        stats = {}
        sync(args.device)
        t0 = time.perf_counter()
        out = generate(model, prompt, stats=stats, **kw, **extra)
        sync(args.device)
        dt = time.perf_counter() - t0
        gen = out[:, prompt.shape[1]:]
        if ref is None:
            ref = gen
        rows.append({"variant": name, "seconds": dt, "tokens_per_s": gen.numel() / dt, "nfe": stats["nfe"],
                     "differ": int((gen != ref).sum()), "differ_frac": float((gen != ref).float().mean()),
                     "differ_first": float((gen[:, :args.block_length] != ref[:, :args.block_length]).float().mean()),
                     "score": score(gen.cpu()) if score else None})
    base = rows[0]["tokens_per_s"]
    for r in rows:
        r["speedup"] = r["tokens_per_s"] / base
    print(f"# generate, {what}, batch {args.batch}, gen_length {args.gen_length}, block {args.block_length}, "
          f"steps {steps}, {args.dtype}, {args.device}; machine: {machine()}")
    print(table(rows, [("variant", "variant", "s"), ("tokens_per_s", "tokens/s", ".1f"), ("speedup", "x reference", ".2f"),
                       ("nfe", "model calls", "d"), ("differ", "positions differing", "d"),
                       ("differ_frac", "fraction differing", ".3f"), ("differ_first", "... in the first block", ".3f"),
                       ("score", "Sudoku cell accuracy", ".3f")]))


if __name__ == "__main__":
    main()
