"""Mixture-of-experts speed and memory: our LLaDA-MoE / LLaDA2 model against the reference modeling code,
on the same weights, in one invocation.

    python benchmarks/moe_speed.py --family lladamoe --reference path/to/modeling_lladamoe.py
    python benchmarks/moe_speed.py --family llada2_moe --reference path/to/modeling_llada2_moe.py

--reference is the reference's modeling file (the Hub's remote code, e.g. ZHZisZZ/dllm's
dllm/pipelines/llada/models/modeling_lladamoe.py); its configuration_*.py must lie beside it. It is
imported from that path with importlib (never trust_remote_code from a model directory), so it needs
the transformers it was written for (4.57 for dllm's copies). Without --reference only our variants run.

A random model of --size is written once as an HF checkpoint (our export). Speed: one process loads
every variant and times them in turn, one training step and one no-grad forward each per round
(--steps rounds after --warmup; the median is reported), so that a busy machine slows them alike:
  train: forward + backward (cross-entropy on random targets) tokens/s, model.train();
  infer: forward tokens/s under no_grad, model.eval().
Memory: each variant alone in its own process (peak RSS on CPU, max_memory_allocated on CUDA),
  peak: during one training step minus after loading (activations, gradients).
Variants: ours with grouped matmuls (torch._grouped_mm; grouped_mm=True), ours with one matmul per
expert segment (grouped_mm=False: the CPU default and the path LoRA-wrapped experts take), and the reference (its training
forward loops over experts with boolean masks; its inference forward of LLaDA2 sorts tokens by expert).
The last column is the largest |logit difference| to the reference on the benchmark batch.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import tempfile
import time
import types
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from benchmarks.common import emit, machine, max_rss_mib, rss_mib, run_isolated, sync, table  # noqa: E402

SIZES = {
    # a few layers of each family's shape, scaled down to run on a laptop CPU
    "small": dict(vocab_size=2048, hidden_size=256, num_layers=4, num_heads=8, head_dim=32, num_experts=16,
                  num_experts_per_tok=4, moe_intermediate_size=128, intermediate_size=512),
    "medium": dict(vocab_size=8192, hidden_size=1024, num_layers=4, num_heads=16, head_dim=64, num_experts=64,
                   num_experts_per_tok=8, moe_intermediate_size=512, intermediate_size=2048),
}


def make_config(family: str, size: str):
    from dlmarch.models.llada2 import LLaDA2Config
    from dlmarch.models.lladamoe import LLaDAMoEConfig

    s = dict(SIZES[size])
    L = s["num_layers"]
    common = dict(vocab_size=s["vocab_size"], hidden_size=s["hidden_size"], num_layers=L, num_heads=s["num_heads"],
                  head_dim=s["head_dim"], num_experts=s["num_experts"], num_experts_per_tok=s["num_experts_per_tok"],
                  moe_intermediate_size=s["moe_intermediate_size"], intermediate_size=s["intermediate_size"],
                  eos_token_id=1, pad_token_id=1, max_position_embeddings=4096)
    if family == "lladamoe":  # LLaDA-MoE-7B: every layer MoE, no shared expert, MHA, full rotary
        return LLaDAMoEConfig(**common, num_kv_heads=s["num_heads"], moe_layer_freq=[1] * L, qk_norm=True,
                              rope_theta=50000.0)
    # LLaDA2.0-mini: first layer dense, one shared expert, GQA, half rotary, 8 groups keep 4
    return LLaDA2Config(**common, num_kv_heads=s["num_heads"] // 4, moe_layer_freq=[0] + [1] * (L - 1),
                        shared_expert_intermediate_size=s["moe_intermediate_size"], n_group=8, topk_group=4,
                        routed_scaling_factor=2.5, out_bias=False, rope_theta=600000.0)


def write_checkpoint(family: str, size: str, dst: Path) -> None:
    from conversions.hf import export_hf
    from dlmarch.models.llada2 import LLaDA2Model
    from dlmarch.models.lladamoe import LLaDAMoEModel

    cfg = make_config(family, size)
    torch.manual_seed(0)
    model = (LLaDAMoEModel if family == "lladamoe" else LLaDA2Model)(cfg).init_weights(std=0.05)
    for moe in model.moe_layers():
        if moe.expert_bias is not None:
            moe.expert_bias.normal_(0, 0.01)
    model.save_pretrained(dst / "native")
    export_hf(dst / "native", dst / "hf")


def load_reference(modeling: Path, hf_dir: Path, dtype):
    """The reference model class, imported from its file as part of a package (its modeling file
    imports its configuration relatively), loaded from `hf_dir`."""
    pkg = types.ModuleType("moe_reference")
    pkg.__path__ = [str(modeling.parent)]
    sys.modules["moe_reference"] = pkg
    for path in sorted(modeling.parent.glob("configuration_*.py")) + [modeling]:
        name = f"moe_reference.{path.stem}"
        spec = importlib.util.spec_from_file_location(name, path)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
    lm = [v for k, v in vars(mod).items() if k.endswith("ModelLM") and isinstance(v, type)][0]
    return lm.from_pretrained(hf_dir, torch_dtype=dtype, attn_implementation="sdpa")


def alternate(args) -> None:
    """Every variant in this one process, timed step by step in turn (a busy machine slows them alike):
    the median tokens/s of --steps rounds of one training step and one no-grad forward each."""
    import statistics

    from dlmarch import AutoModel

    torch.set_num_threads(args.threads)
    device, dtype = args.device, {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    hf = Path(args.dir) / "hf"
    ours = AutoModel.from_pretrained(hf, dtype=dtype, device=device)
    models = {"ours-grouped": ours, "ours-segments": ours}
    if args.reference:
        models["reference"] = load_reference(Path(args.reference), hf, dtype).to(device)
    g = torch.Generator().manual_seed(1)
    V = ours.config.vocab_size
    ids = torch.randint(2, V, (args.batch, args.seq), generator=g).to(device)
    targets = torch.randint(0, V, (args.batch, args.seq), generator=g).to(device)
    times = {v: {"train": [], "infer": []} for v in models}
    for r in range(args.warmup + args.steps):
        for v, model in models.items():
            for moe in (model.moe_layers() if v != "reference" else []):
                moe.grouped_mm = v == "ours-grouped"
            kw = {"use_cache": False} if v == "reference" else {}
            model.eval()
            sync(device)
            t = time.perf_counter()
            with torch.no_grad():
                model(ids, **kw)
            sync(device)
            t_infer = time.perf_counter() - t
            model.train()
            t = time.perf_counter()
            F.cross_entropy(model(ids, **kw).logits.float().view(-1, V), targets.view(-1)).backward()
            sync(device)
            t_train = time.perf_counter() - t
            model.zero_grad(set_to_none=True)
            if r >= args.warmup:
                times[v]["train"].append(t_train)
                times[v]["infer"].append(t_infer)
    n = args.batch * args.seq
    emit({v: {k: n / statistics.median(ts) for k, ts in d.items()} for v, d in times.items()})


def child(args) -> None:
    torch.set_num_threads(args.threads)
    device, dtype = args.device, {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    hf = Path(args.dir) / "hf"
    if args.variant == "reference":
        model = load_reference(Path(args.reference), hf, dtype).to(device)
    else:
        from dlmarch import AutoModel

        model = AutoModel.from_pretrained(hf, dtype=dtype, device=device)
        for moe in model.moe_layers():
            moe.grouped_mm = args.variant == "ours-grouped"
    g = torch.Generator().manual_seed(1)
    V = model.config.vocab_size
    ids = torch.randint(2, V, (args.batch, args.seq), generator=g).to(device)
    targets = torch.randint(0, V, (args.batch, args.seq), generator=g).to(device)
    kw = {"use_cache": False} if args.variant == "reference" else {}

    def logits():
        return model(ids, **kw).logits.float()

    model.eval()
    with torch.no_grad():
        out = logits()
        torch.save(out[0, :64].cpu(), Path(args.dir) / f"logits-{args.variant}.pt")
        for _ in range(args.warmup):
            logits()
        sync(device)
        t = time.perf_counter()
        for _ in range(args.steps):
            logits()
        sync(device)
        infer = args.steps * args.batch * args.seq / (time.perf_counter() - t)
    model.train()
    base = torch.cuda.memory_allocated() if device == "cuda" else rss_mib()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()

    def step():
        loss = F.cross_entropy(logits().view(-1, V), targets.view(-1))
        loss.backward()
        model.zero_grad(set_to_none=True)

    for _ in range(args.warmup):
        step()
    sync(device)
    t = time.perf_counter()
    for _ in range(args.steps):
        step()
    sync(device)
    train = args.steps * args.batch * args.seq / (time.perf_counter() - t)
    peak = (torch.cuda.max_memory_allocated() - base) / 2**20 if device == "cuda" else max_rss_mib() - base
    emit({"variant": args.variant, "train": train, "infer": infer, "peak": peak})


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--family", choices=["lladamoe", "llada2_moe"], default="lladamoe")
    p.add_argument("--reference", help="the reference's modeling_*.py (its configuration_*.py beside it)")
    p.add_argument("--size", choices=list(SIZES), default="small")
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--variant", help=argparse.SUPPRESS)
    p.add_argument("--dir", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        alternate(args) if args.variant == "alternate" else child(args)
        return 0
    variants = ["ours-grouped", "ours-segments"] + (["reference"] if args.reference else [])
    with tempfile.TemporaryDirectory() as tmp:
        write_checkpoint(args.family, args.size, Path(tmp))
        shared = ["--family", args.family, "--size", args.size, "--seq", str(args.seq), "--batch", str(args.batch),
                  "--warmup", str(args.warmup), "--threads", str(args.threads),
                  "--device", args.device, "--dtype", args.dtype, "--dir", tmp]
        if args.reference:
            shared += ["--reference", str(Path(args.reference).resolve())]
        # peak memory (and the logits) from each variant alone; speed from one process running them in turn
        rows = [run_isolated(__file__, shared + ["--steps", "1", "--variant", v]) for v in variants]
        speed = run_isolated(__file__, shared + ["--steps", str(args.steps), "--variant", "alternate"])
        for r in rows:
            r.update(speed[r["variant"]])
        if args.reference:
            ref = torch.load(Path(tmp) / "logits-reference.pt", weights_only=True)
            base = next(r for r in rows if r["variant"] == "reference")
            for r in rows:
                got = torch.load(Path(tmp) / f"logits-{r['variant']}.pt", weights_only=True)
                r["diff"] = float((got - ref).abs().max())
                r["train_x"], r["infer_x"] = r["train"] / base["train"], r["infer"] / base["infer"]
    cfg = make_config(args.family, args.size)
    print(f"# {args.family} {args.size}: {cfg.num_layers} layers, hidden {cfg.hidden_size}, {cfg.num_experts} experts "
          f"top-{cfg.num_experts_per_tok} of {cfg.moe_intermediate_size}; batch {args.batch} x {args.seq} tokens, "
          f"{args.dtype}, {args.threads} threads, median of {args.steps} alternating rounds; {machine()}")
    print(table(rows, [("variant", "variant", "s"), ("train", "train tok/s", ".0f"), ("train_x", "x ref", ".2f"),
                       ("infer", "infer tok/s", ".0f"), ("infer_x", "x ref", ".2f"), ("peak", "train peak MiB", ".0f"),
                       ("diff", "max |logit diff|", ".1e")]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
