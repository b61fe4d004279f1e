"""L2D's cost, measured: per generated token against the main path's own decoding step, and a
training step against a LoRA fine-tune of the main model.

    python benchmarks/l2d_speed.py                       # ~100M Llama main path, CPU fp32
    python benchmarks/l2d_speed.py --size 1b --device cuda --dtype bf16

Decoding: context of --context tokens, batch --batch; "evaluation" is one pass of the diffusion
path (query length 1 against the cached keys/values); a generated token costs one main step plus
(ODE evaluations + the final pass), measured through generate_l2d with the prompt's prefill
subtracted. FLOPs are counted analytically (2 per multiply-accumulate).
Training: one step on the same batch, each variant in its own process for its peak memory.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from benchmarks.common import emit, machine, max_rss_mib, run_isolated, sync, table  # noqa: E402
from dlmarch.dtypes import DTYPES  # noqa: E402
from dlmarch import CausalLM, L2DConfig, L2DModel, LlamaConfig, generate_l2d  # noqa: E402

SIZES = {
    "100m": dict(vocab_size=16384, hidden_size=768, num_layers=12, num_heads=12, num_kv_heads=4, intermediate_size=2048),
    "1b": dict(vocab_size=128256, hidden_size=2048, num_layers=16, num_heads=32, num_kv_heads=8, intermediate_size=8192,
               tie_word_embeddings=True),
    "tiny": dict(vocab_size=512, hidden_size=128, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=256),
}


def build(size: str, device, dtype) -> L2DModel:
    torch.manual_seed(0)
    main = CausalLM(LlamaConfig(**SIZES[size], max_position_embeddings=8192)).init_weights().to(device=device, dtype=dtype)
    return L2DModel.from_main(main, L2DConfig(), seed=0)


def decode_flops(cfg: LlamaConfig, ctx: int) -> float:
    """One main decoding step: every weight matrix once, attention over ctx keys."""
    return cfg.flops_per_token(1, training=False) - 2 * cfg.num_layers * cfg.num_heads * cfg.head_dim + \
        4 * cfg.num_layers * ctx * cfg.num_heads * cfg.head_dim


def eval_flops(model: L2DModel, ctx: int) -> float:
    """One diffusion evaluation at query length 1 (the t-conditioning is cached, not counted)."""
    mc, lc = model.main.config, model.config
    H, I, q = mc.hidden_size, mc.intermediate_size, mc.num_heads * mc.head_dim
    per_layer = H * q + q * H + 3 * H * I  # q', o', MLP' (no k/v projections)
    if lc.adapter == "lora":
        r = lc.lora_rank
        per_layer += r * (H + q + q + H + 3 * (H + I))
    flow_in = lc.flow_dim * (lc.flow_in_hidden or H) + (lc.flow_in_hidden or H) * H
    head = H * mc.vocab_size
    return 2 * (mc.num_layers * per_layer + flow_in + head) + 4 * mc.num_layers * ctx * q


def child_decode(args) -> None:
    device, dtype = args.device, DTYPES[args.dtype]
    model = build(args.size, device, dtype).eval()
    B, ctx = args.batch, args.context
    prompt = torch.randint(0, SIZES[args.size]["vocab_size"], (B, ctx), device=device)
    reps = args.reps
    with torch.no_grad():
        out = model.main(prompt, return_kv=True, output_hidden=True, compute_logits=False)
        kv, h = out.kv, out.hidden[:, -1:]
        nxt = torch.zeros(B, 1, dtype=torch.long, device=device)
        # the main path's decoding step (with the KV cache, logits included)
        for _ in range(3):
            model.main(nxt, past_kv=kv)
        sync(device)
        t0 = time.perf_counter()
        for _ in range(reps):
            model.main(nxt, past_kv=kv)
        sync(device)
        main_step = (time.perf_counter() - t0) / reps
        # one diffusion evaluation
        from dlmarch.sampling.l2d import _Path

        q = torch.full((B, 1), ctx - 1, device=device)  # the query's cache index and position
        path = _Path(model, h, kv, q, q, None, None, {})
        x = torch.randn(B, model.config.flow_dim, dtype=torch.float64, device=device)
        t_mid = torch.tensor(0.5, dtype=torch.float64)  # the ODE's time is a float64 0-dim tensor
        for _ in range(3):
            path.logits(x, t_mid)
        sync(device)
        t0 = time.perf_counter()
        for _ in range(reps):
            path.logits(x, t_mid)
        sync(device)
        evaluation = (time.perf_counter() - t0) / reps
        # the prompt's prefill, paid once per call, subtracted from the per-token figures below
        sync(device)
        t0 = time.perf_counter()
        for _ in range(3):
            model.main(prompt, return_kv=True, output_hidden=True, compute_logits=False)
        sync(device)
        prefill = (time.perf_counter() - t0) / 3
        rows = []
        for name, solver, steps in (("euler, 2 grid points", "euler", 2), ("euler, 8 grid points", "euler", 8),
                                    ("midpoint, 8 grid points", "midpoint", 8)):
            st = {}
            n = args.tokens
            generate_l2d(model, prompt[:, : ctx // 2], max_new_tokens=2, solver=solver, ode_steps=steps)  # warm-up
            sync(device)
            t0 = time.perf_counter()
            generate_l2d(model, prompt, max_new_tokens=n, solver=solver, ode_steps=steps, stats=st)
            sync(device)
            per_token = (time.perf_counter() - t0 - prefill) / n
            rows.append({"solver": name, "evals": st["diffusion_evaluations"] / n, "per_token_s": per_token})
    emit({"main_step_s": main_step, "eval_s": evaluation, "rows": rows, "prefill_s": prefill,
          "main_flops": decode_flops(model.main.config, ctx), "eval_flops": eval_flops(model, ctx)})


def child_train(args) -> None:
    """One training step (after a warm-up) of L2D or of a LoRA fine-tune of the main model."""
    from peft import LoraConfig, get_peft_model

    from trainers.data import Example, pad_batch
    from trainers.objectives.l2d import l2d

    device, dtype = args.device, DTYPES[args.dtype]
    model = build(args.size, device, dtype)
    V = SIZES[args.size]["vocab_size"]
    g = torch.Generator().manual_seed(0)
    ex = [Example(torch.randint(0, V, (args.context,), generator=g).tolist(), args.context // 4, i) for i in range(args.batch)]
    batch = pad_batch(ex, 0, "exclude").to(device)
    if args.variant == "l2d":
        net = model.train()

        def loss_fn():
            out = l2d(net, batch, torch.Generator(device=device).manual_seed(0))
            return out.loss_sum / out.denom
    else:  # AR LoRA on the main path, rank and targets as L2D's adapter
        net = get_peft_model(model.main, LoraConfig(r=model.config.lora_rank, lora_alpha=model.config.lora_alpha,
                                                    target_modules=["q_proj", "attn_out", "ff_proj", "up_proj", "ff_out"]))
        net.train()
        labels = torch.where(batch.loss_mask, batch.input_ids, -100)

        def loss_fn():
            logits = net(batch.input_ids).logits[:, :-1]
            return torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100)

    params = [p for p in net.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    for _ in range(2):
        loss_fn().backward()
        opt.step()
        opt.zero_grad()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(args.reps_train):
        loss_fn().backward()
        opt.step()
        opt.zero_grad()
    sync(device)
    step = (time.perf_counter() - t0) / args.reps_train
    peak = torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else max_rss_mib()
    emit({"step_s": step, "peak_mib": peak, "trainable": sum(p.numel() for p in params)})


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--child", action="store_true")
    p.add_argument("--part", choices=["decode", "train"])
    p.add_argument("--variant", default="l2d")
    p.add_argument("--size", default="100m", choices=list(SIZES))
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="fp32", choices=list(DTYPES))
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--context", type=int, default=256)
    p.add_argument("--tokens", type=int, default=8)
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--reps-train", type=int, default=3)
    args = p.parse_args()
    if args.child:
        return child_decode(args) if args.part == "decode" else child_train(args)
    common = ["--size", args.size, "--device", args.device, "--dtype", args.dtype, "--batch", str(args.batch),
              "--context", str(args.context), "--tokens", str(args.tokens), "--reps", str(args.reps),
              "--reps-train", str(args.reps_train)]
    d = run_isolated(__file__, ["--part", "decode"] + common)
    print(f"# L2D on a {args.size} Llama main path, batch {args.batch}, context {args.context}, {args.dtype}, "
          f"{args.device}; machine: {machine()}")
    rows = [{"what": "main path decoding step", "s": d["main_step_s"], "x_main": 1.0, "gflop": d["main_flops"] / 1e9,
             "flop_x": 1.0},
            {"what": "one diffusion evaluation", "s": d["eval_s"], "x_main": d["eval_s"] / d["main_step_s"],
             "gflop": d["eval_flops"] / 1e9, "flop_x": d["eval_flops"] / d["main_flops"]}]
    for r in d["rows"]:
        e = r["evals"]
        rows.append({"what": f"L2D token: {r['solver']} ({e:.0f} evaluations)", "s": r["per_token_s"],
                     "x_main": r["per_token_s"] / d["main_step_s"],
                     "gflop": (d["main_flops"] + e * d["eval_flops"]) / 1e9,
                     "flop_x": (d["main_flops"] + e * d["eval_flops"]) / d["main_flops"]})
    print(table(rows, [("what", "per batch of tokens", "s"), ("s", "seconds", ".4f"), ("x_main", "x main step", ".2f"),
                       ("gflop", "GFLOP (per row)", ".3f"), ("flop_x", "FLOPs x main step", ".2f")]))
    print()
    train_rows = []
    for variant, name in (("lora", "LoRA fine-tune of the main path (AR)"), ("l2d", "L2D diffusion path")):
        r = run_isolated(__file__, ["--part", "train", "--variant", variant] + common)
        r["what"] = name
        train_rows.append(r)
    base = train_rows[0]
    for r in train_rows:
        r["x_time"] = r["step_s"] / base["step_s"]
        r["x_mem"] = r["peak_mib"] / base["peak_mib"]
    print(f"# training step, batch {args.batch} x {args.context} (3/4 of each row in the loss)")
    print(table(train_rows, [("what", "variant", "s"), ("trainable", "trainable params", ",d"), ("step_s", "s/step", ".3f"),
                             ("x_time", "x LoRA", ".2f"), ("peak_mib", "peak MiB", ".0f"), ("x_mem", "mem x LoRA", ".2f")]))


if __name__ == "__main__":
    main()
