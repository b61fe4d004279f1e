"""Forward+backward speed and peak memory: our LLaDA against transformers' Llama given the same
weights and a bidirectional mask, eager and torch.compile, plus FLOPs per token and MFU.

    python benchmarks/model_speed.py                      # ~110M params, seq 512, CPU fp32
    python benchmarks/model_speed.py --no-compile --steps 2
    python benchmarks/model_speed.py --device cuda --dtype bf16 --batch 8 --backend flex

Each variant runs in its own process; tokens/s ratios are against transformers eager in this run.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from benchmarks.common import emit, machine, matmul_peak_flops, max_rss_mib, rss_mib, run_isolated, sync, table  # noqa: E402
from dlmarch.dtypes import DTYPES  # noqa: E402
from dlmarch import LLaDAConfig, LLaDAModel  # noqa: E402

SIZES = {
    "100m": dict(vocab_size=16384, hidden_size=768, num_layers=12, num_heads=12, num_kv_heads=12, intermediate_size=2048),
    "tiny": dict(vocab_size=512, hidden_size=128, num_layers=2, num_heads=4, num_kv_heads=4, intermediate_size=256),
}


def config(size: str, backend: str) -> LLaDAConfig:
    return LLaDAConfig(**SIZES[size], mask_token_id=SIZES[size]["vocab_size"] - 1, max_position_embeddings=8192,
                       attn_backend=backend)


def build(impl: str, cfg: LLaDAConfig, device: str, dtype: torch.dtype):
    torch.manual_seed(0)
    ours = LLaDAModel(cfg).init_weights()
    if impl == "ours":
        return ours.to(device=device, dtype=dtype)
    import transformers

    from dlmarch.models.causal import LLAMA_KEYS as LLAMA

    hf_cfg = transformers.LlamaConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads, num_key_value_heads=cfg.num_kv_heads,
        rms_norm_eps=cfg.rms_norm_eps, rope_theta=cfg.rope_theta, max_position_embeddings=cfg.max_position_embeddings,
        tie_word_embeddings=False, attn_implementation="sdpa",
    )
    hf = transformers.LlamaForCausalLM(hf_cfg)
    hf.load_state_dict({LLAMA.hf_name(k): v for k, v in ours.state_dict().items()})
    return hf.to(device=device, dtype=dtype)


def child(args) -> None:
    device, dtype = args.device, DTYPES[args.dtype]
    cfg = config(args.size, args.backend)
    model = build(args.impl, cfg, device, dtype).train()
    B, L = args.batch, args.seq
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, cfg.vocab_size - 1, (B, L), generator=g).to(device)
    target = torch.randint(0, cfg.vocab_size - 1, (B, L), generator=g).to(device)
    # transformers' Llama is causal unless handed a 4D mask; an all-True one makes it bidirectional.
    hf_mask = torch.ones(B, 1, L, L, dtype=torch.bool, device=device)

    def step(m):
        logits = m(ids).logits if args.impl == "ours" else m(ids, attention_mask=hf_mask).logits
        loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), target.flatten())
        loss.backward()
        return loss

    run = torch.compile(model) if args.compile else model
    t0 = time.perf_counter()
    step(run)  # warm-up (and compilation)
    sync(device)
    warm = time.perf_counter() - t0
    model.zero_grad(set_to_none=True)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    before = rss_mib()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step(run)
        model.zero_grad(set_to_none=True)
    sync(device)
    dt = (time.perf_counter() - t0) / args.steps
    peak = torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else max_rss_mib()
    emit({"tokens_per_s": B * L / dt, "step_s": dt, "warmup_s": warm, "peak_mib": peak,
          "rss_before_mib": before, "params": sum(p.numel() for p in model.parameters())})


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--child", action="store_true")
    p.add_argument("--impl", default="ours")
    p.add_argument("--size", default="100m", choices=list(SIZES))
    p.add_argument("--seq", type=int, default=512)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="fp32", choices=list(DTYPES))
    p.add_argument("--backend", default="auto")
    p.add_argument("--compile", action="store_true", help="(child) compile the model")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile variants")
    args = p.parse_args()
    if args.child:
        return child(args)

    common = ["--size", args.size, "--seq", str(args.seq), "--batch", str(args.batch), "--steps", str(args.steps),
              "--device", args.device, "--dtype", args.dtype, "--backend", args.backend]
    variants = [("transformers", "hf", False), ("dlmarch", "ours", False)]
    if not args.no_compile:
        variants += [("transformers", "hf", True), ("dlmarch", "ours", True)]
    cfg = config(args.size, args.backend)
    peak = matmul_peak_flops(args.device, DTYPES[args.dtype])
    fpt = cfg.flops_per_token(args.seq, training=True)
    rows = []
    for name, impl, comp in variants:
        r = run_isolated(__file__, common + ["--impl", impl] + (["--compile"] if comp else []))
        r.update(impl=name, mode="compiled" if comp else "eager", mfu=r["tokens_per_s"] * fpt / peak)
        rows.append(r)
        print(f"  {name} {r['mode']}: {r['tokens_per_s']:.0f} tok/s", file=sys.stderr)
    base = {m: next(r for r in rows if r["impl"] == "transformers" and r["mode"] == m) for m in {r["mode"] for r in rows}}
    eager_base = base["eager"]["tokens_per_s"]
    for r in rows:
        r["vs_hf_same_mode"] = r["tokens_per_s"] / base[r["mode"]]["tokens_per_s"]
        r["vs_hf_eager"] = r["tokens_per_s"] / eager_base
        r["mem_vs_hf"] = r["peak_mib"] / base[r["mode"]]["peak_mib"]
    print(f"# forward+backward, {args.size} LLaDA ({rows[0]['params'] / 1e6:.0f}M params), batch {args.batch} x seq "
          f"{args.seq}, {args.dtype}, {args.device}; machine: {machine()}")
    print(f"# flops_per_token (training) = {fpt:.3e}; matmul peak measured now = {peak / 1e9:.1f} GFLOP/s")
    print(table(rows, [("impl", "impl", "s"), ("mode", "mode", "s"), ("tokens_per_s", "tokens/s", ".1f"),
                       ("vs_hf_same_mode", "x transformers (same mode)", ".2f"), ("vs_hf_eager", "x transformers eager", ".2f"),
                       ("peak_mib", "peak MiB", ".0f"), ("mem_vs_hf", "mem x transformers", ".2f"),
                       ("mfu", "MFU", ".1%"), ("warmup_s", "warm-up s", ".1f")]))
    print()
    print(flops_table())


def flops_table() -> str:
    """flops_per_token() of the configs our users run, at sequence 2048."""
    from dlmarch import LlamaConfig, Qwen2Config

    configs = {
        "LLaDA-8B": LLaDAConfig(vocab_size=126464, hidden_size=4096, num_layers=32, num_heads=32, num_kv_heads=32,
                                intermediate_size=12288, rope_theta=500000.0),
        "Llama-3.2-1B": LlamaConfig(vocab_size=128256, hidden_size=2048, num_layers=16, num_heads=32, num_kv_heads=8,
                                    intermediate_size=8192, tie_word_embeddings=True),
        "Llama-3.1-8B": LlamaConfig(vocab_size=128256, hidden_size=4096, num_layers=32, num_heads=32, num_kv_heads=8,
                                    intermediate_size=14336),
        "Qwen2.5-1.5B": Qwen2Config(vocab_size=151936, hidden_size=1536, num_layers=28, num_heads=12, num_kv_heads=2,
                                    intermediate_size=8960, tie_word_embeddings=True),
        "bench-100m": config("100m", "auto"),
    }
    rows = [{"name": n, "params": c.num_params() / 1e9, "fwd": c.flops_per_token(2048, training=False) / 1e9,
             "train": c.flops_per_token(2048) / 1e9} for n, c in configs.items()]
    return "# flops_per_token at seq 2048\n" + table(rows, [("name", "config", "s"), ("params", "params (B)", ".3f"),
                                                             ("fwd", "fwd GFLOP/token", ".2f"), ("train", "train GFLOP/token", ".2f")])


if __name__ == "__main__":
    main()
