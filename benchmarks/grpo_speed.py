"""Where a diffu-GRPO step's time goes: rollouts (sampling, rewards, old and reference log-probs) vs
the policy update (one masked forward + backward per iteration), and the rollout speed-up from
Fast-dLLM's KV cache and confidence-threshold decoding (approximations; docs/llada-sampling.md).

    python benchmarks/grpo_speed.py                          # random tiny LLaDA
    python benchmarks/grpo_speed.py --size 100m --device cuda --dtype bf16
    python benchmarks/grpo_speed.py --model runs/grpo-demo/base/model --gen-length 32 --block-length 32

One rollout batch (--prompts x --num-generations completions) and --num-iterations updates on it, per
variant; d1's run is mu = 12 (configs/diffu-grpo-llada-8b.yaml), so the update share there is larger.
Rewards are constants (their cost is nil next to the model's).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from benchmarks.common import machine, sync, table  # noqa: E402
from dlmarch import AutoModel, LLaDAConfig, LLaDAModel  # noqa: E402
from dlmarch.dtypes import DTYPES  # noqa: E402
from dlmarch.sampling.options import DecodingOptions  # noqa: E402
from trainers.data import Example, pad_batch  # noqa: E402
from trainers.objectives.grpo import GRPOObjective, GRPOSettings, frozen_copy  # noqa: E402

SIZES = {
    "100m": dict(vocab_size=16384, hidden_size=768, num_layers=12, num_heads=12, num_kv_heads=12, intermediate_size=2048),
    "tiny": dict(vocab_size=512, hidden_size=128, num_layers=4, num_heads=4, num_kv_heads=4, intermediate_size=384),
}


class NoTokenizer:
    @staticmethod
    def batch_decode(ids, **kw):
        return ["" for _ in ids]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", help="a trained LLaDA directory (else a random --size model)")
    p.add_argument("--size", default="tiny", choices=list(SIZES))
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="fp32", choices=list(DTYPES))
    p.add_argument("--prompts", type=int, default=2)
    p.add_argument("--num-generations", type=int, default=6)
    p.add_argument("--num-iterations", type=int, default=2)
    p.add_argument("--prompt-length", type=int, default=64)
    p.add_argument("--gen-length", type=int, default=128)
    p.add_argument("--block-length", type=int, default=32)
    p.add_argument("--steps", type=int, default=None, help="diffusion steps (default: gen_length / 2)")
    p.add_argument("--threshold", type=float, default=0.9)
    args = p.parse_args()
    dtype = DTYPES[args.dtype]
    if args.model:
        model = AutoModel.from_pretrained(args.model, dtype=dtype, device=args.device)
        what = f"trained model {args.model}"
    else:
        torch.manual_seed(0)
        cfg = LLaDAConfig(**SIZES[args.size], mask_token_id=SIZES[args.size]["vocab_size"] - 1,
                          eos_token_id=SIZES[args.size]["vocab_size"] - 2, max_position_embeddings=4096)
        model = LLaDAModel(cfg).init_weights().to(device=args.device, dtype=dtype)
        what = f"random {args.size} LLaDA ({model.num_parameters() / 1e6:.0f}M)"
    model.train()
    ref = frozen_copy(model)
    cfg = model.config
    g = torch.Generator().manual_seed(0)
    prompts = torch.randint(0, cfg.vocab_size - 3, (args.prompts, args.prompt_length), generator=g)
    batch = pad_batch([Example(prompts[i].tolist(), args.prompt_length, i + 1) for i in range(args.prompts)],
                      cfg.eos_token_id, "exclude").to(args.device)
    rows = {i + 1: {} for i in range(args.prompts)}
    N = args.prompts * args.num_generations
    rewards = {"r": [float(i % 3) for i in range(N)]}
    steps = args.steps or args.gen_length // 2
    variants = {"reference": {}, "kv cache (prefix)": {"kv_cache": "prefix"}, "dual cache": {"kv_cache": "dual"},
                f"threshold {args.threshold}": {"threshold": args.threshold},
                f"dual cache + threshold {args.threshold}": {"kv_cache": "dual", "threshold": args.threshold}}
    params = [p for p in model.parameters() if p.requires_grad]
    out = []
    for name, extra in variants.items():
        s = GRPOSettings(task="bench", num_generations=args.num_generations, num_iterations=args.num_iterations,
                         decoding=DecodingOptions(gen_length=args.gen_length, block_length=args.block_length,
                                                  steps=steps, **extra))
        obj = GRPOObjective(s, tokenizer=NoTokenizer(), rows=rows, mask_id=cfg.mask_token_id, eos_id=cfg.eos_token_id,
                            pad_id=cfg.eos_token_id, reward_fn=lambda t, r: rewards, reward_names=["r"], ref_model=ref)
        autocast = torch.autocast(args.device.split(":")[0], dtype=torch.bfloat16) if args.dtype == "bf16" else None
        rollout = update = 0.0
        for it in range(args.num_iterations):
            obj.begin_step(it)
            gen = torch.Generator(device=args.device).manual_seed(it)
            sync(args.device)
            t0 = time.perf_counter()
            with autocast if autocast else torch.enable_grad():
                res = obj(model, batch, gen)
                res.loss_sum.backward()
            sync(args.device)
            dt = time.perf_counter() - t0
            r = res.metrics["rollout_s"]
            rollout += r
            update += dt - r
            for p_ in params:
                p_.grad = None
        gen_s = obj.buffers[0]["stats"]["generate_s"]
        out.append({"variant": name, "rollout_s": rollout, "generate_s": gen_s, "update_s": update,
                    "rollout_share": rollout / (rollout + update), "gen_tokens_per_s": N * args.gen_length / gen_s})
    base = out[0]["gen_tokens_per_s"]
    for r in out:
        r["speedup"] = r["gen_tokens_per_s"] / base
    print(f"# diffu-GRPO step, {what}, {args.prompts} prompts x {args.num_generations} generations, prompt "
          f"{args.prompt_length}, gen_length {args.gen_length}, block {args.block_length}, steps {steps}, "
          f"mu {args.num_iterations}, {args.dtype}, {args.device}; machine: {machine()}")
    print(table(out, [("variant", "rollout sampler", "s"), ("rollout_s", "rollout s", ".2f"),
                      ("generate_s", "... sampling s", ".2f"), ("update_s", f"{args.num_iterations} updates s", ".2f"),
                      ("rollout_share", "rollout share", ".2f"), ("gen_tokens_per_s", "sampled tokens/s", ".1f"),
                      ("speedup", "sampling x reference", ".2f")]))


if __name__ == "__main__":
    main()
