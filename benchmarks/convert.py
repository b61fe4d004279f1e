"""Converter wall time and peak RSS against checkpoint size, on a synthetic multi-shard Llama
checkpoint (default ~2.2 GB fp32 in 3 shards), side by side with the naive approach (load a whole
shard with safetensors, rename, save it) in the same run.

    python benchmarks/convert.py                 # writes the synthetic checkpoint under /tmp
    python benchmarks/convert.py --gb 1.1 --shards 2

Goal: peak RSS under 1.5x the largest shard. RSS includes the interpreter and torch (the "idle"
row), which the ratio does not subtract. dlmarch fsyncs each file before the final rename (a
crash never leaves a renamed directory with unwritten data); the naive script does not.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from benchmarks.common import emit, machine, max_rss_mib, run_isolated, table  # noqa: E402


def make_checkpoint(path: Path, gb: float, shards: int) -> None:
    """A Llama-shaped HF checkpoint of about `gb` GB (fp32), split in `shards` files."""
    from dlmarch import safetensors_io as st
    from dlmarch.models.causal import LLAMA_KEYS as LLAMA

    hidden, inter, vocab = 2048, 5632, 32000
    per_layer = (4 * hidden * hidden + 3 * hidden * inter + 2 * hidden) * 4
    layers = max(1, round((gb * 1e9 - 2 * vocab * hidden * 4) / per_layer))
    cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": hidden,
           "intermediate_size": inter, "num_hidden_layers": layers, "num_attention_heads": 16,
           "num_key_value_heads": 16, "vocab_size": vocab, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
           "max_position_embeddings": 4096, "tie_word_embeddings": False, "hidden_act": "silu", "torch_dtype": "float32"}
    from dlmarch import CausalLM, LlamaConfig

    with torch.device("meta"):
        model = CausalLM(LlamaConfig.from_hf(cfg))
    entries = [(LLAMA.hf_name(k), v.shape) for k, v in model.state_dict().items()]
    groups = st.plan_shards([(n, 4 * torch.Size(s).numel()) for n, s in entries], sum(4 * torch.Size(s).numel() for _, s in entries) // shards + 1)
    names = st.shard_names(len(groups))
    shapes = dict(entries)
    path.mkdir(parents=True)
    weight_map = {}
    g = torch.Generator().manual_seed(0)
    for fname, group in zip(names, groups):
        with st.Writer(path / fname, [(n, torch.float32, tuple(shapes[n])) for n in group]) as w:
            for n in group:
                w.write(n, torch.randn(tuple(shapes[n]), generator=g) * 0.02)
                weight_map[n] = fname
    (path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (path / "config.json").write_text(json.dumps(cfg))


def naive_convert(src: Path, dst: Path) -> None:
    """The usual script: each shard loaded whole, renamed, saved whole."""
    from safetensors.torch import load_file, save_file

    from dlmarch.models.causal import LLAMA_KEYS as LLAMA

    dst.mkdir(parents=True)
    for f in sorted(src.glob("*.safetensors")):
        tensors = load_file(f)
        save_file({LLAMA.native_name(k): v for k, v in tensors.items()}, dst / f.name)


def child(args) -> None:
    src, dst = Path(args.src), Path(args.dst)
    if dst.exists():
        shutil.rmtree(dst)
    idle = max_rss_mib()
    t = time.perf_counter()
    if args.op == "import":
        from conversions.hf import import_hf

        import_hf(src, dst)
    elif args.op == "export":
        from conversions.hf import export_hf

        export_hf(src, dst)
    elif args.op == "naive":
        naive_convert(src, dst)
    elif args.op == "from_pretrained":
        from dlmarch import AutoModel

        AutoModel.from_pretrained(src)
    elif args.op == "idle":
        pass
    emit({"seconds": time.perf_counter() - t, "peak_rss_mib": max_rss_mib(), "idle_rss_mib": idle})


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--child", action="store_true")
    p.add_argument("--op")
    p.add_argument("--src")
    p.add_argument("--dst")
    p.add_argument("--gb", type=float, default=2.2)
    p.add_argument("--shards", type=int, default=3)
    p.add_argument("--workdir", default=None)
    args = p.parse_args()
    if args.child:
        return child(args)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="dlmarch-convert-bench-"))
    hf = work / "hf"
    if not hf.exists():
        print(f"writing a synthetic {args.gb} GB checkpoint to {hf} ...", file=sys.stderr)
        make_checkpoint(hf, args.gb, args.shards)
    size = sum(f.stat().st_size for f in hf.glob("*.safetensors")) / 2**20
    largest = max(f.stat().st_size for f in hf.glob("*.safetensors")) / 2**20
    ops = [("idle (python + torch)", "idle", hf, work / "none"),
           ("naive: load shard, rename, save", "naive", hf, work / "naive"),
           ("dlmarch import (HF -> native)", "import", hf, work / "native"),
           ("dlmarch export (native -> HF)", "export", work / "native", work / "back"),
           ("dlmarch from_pretrained (HF dir)", "from_pretrained", hf, work / "none")]
    rows = []
    for name, op, s, d in ops:
        os.sync()  # every operation starts with the previous one's writes on disk
        r = run_isolated(__file__, ["--op", op, "--src", str(s), "--dst", str(d)])
        r.update(op=name, mb_s=size / r["seconds"] if op not in ("idle",) else None,
                 ratio=r["peak_rss_mib"] / largest)
        rows.append(r)
        print(f"  {name}: {r['seconds']:.1f}s, {r['peak_rss_mib']:.0f} MiB", file=sys.stderr)
    print(f"# checkpoint {size:.0f} MiB in {args.shards} shards, largest {largest:.0f} MiB; machine: {machine()}")
    print(table(rows, [("op", "operation", "s"), ("seconds", "wall s", ".1f"), ("mb_s", "MiB/s", ".0f"),
                       ("peak_rss_mib", "peak RSS MiB", ".0f"), ("ratio", "peak RSS / largest shard", ".2f")]))
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
