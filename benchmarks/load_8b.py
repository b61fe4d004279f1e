"""Loading an LLaDA-8B-sized checkpoint on a machine with little more memory than the model.

Builds a synthetic checkpoint with the shapes of GSAI-ML/LLaDA-8B-Instruct in its HF layout (bf16,
`model-0000K-of-00006.safetensors` + index, the reference's config.json field names), then, each in
its own process so that each peak RSS is its own:

1. `python -m conversions import` (HF -> native, bf16 kept),
2. `from_pretrained` of the HF directory (converted on the fly),
3. `from_pretrained` of the native directory, then one forward of 128 tokens,

and reports wall time and peak RSS against the largest shard and the model size. Peak RSS should
be the model plus about one tensor (the embedding, 1 GiB at full size) for loading, and about one
tensor for conversion.

    python benchmarks/load_8b.py                          # full size: ~16 GB per copy, ~33 GB of disk, ~20 GB RAM
    python benchmarks/load_8b.py --layers 2 --scale 8     # a quick check of the script (< 1 min)

--layers sets the depth (LLaDA-8B: 32), --scale divides the width (hidden size, MLP width and head
count; the head size stays 128), the vocabulary stays 126464. The work directory is removed at the
end unless --workdir is given.
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

# GSAI-ML/LLaDA-8B-Instruct's config.json, the fields our reader uses or checks.
LLADA_8B = {
    "architectures": ["LLaDAModelLM"], "model_type": "llada", "activation_type": "silu", "alibi": False,
    "block_type": "llama", "block_group_size": 1, "layer_norm_type": "rms", "layer_norm_with_affine": True,
    "attention_layer_norm": False, "input_emb_norm": False, "rope": True, "rope_full_precision": True,
    "scale_logits": False, "include_bias": False, "include_qkv_bias": False, "weight_tying": False,
    "d_model": 4096, "n_heads": 32, "n_kv_heads": 32, "n_layers": 32, "mlp_ratio": 4, "mlp_hidden_size": 12288,
    "vocab_size": 126464, "embedding_size": 126464, "max_sequence_length": 4096, "rope_theta": 500000.0,
    "rms_norm_eps": 1e-5, "eos_token_id": 126081, "pad_token_id": 126081, "mask_token_id": 126336,
    "torch_dtype": "bfloat16",
}
SHARDS = 6  # as in the released checkpoint


def hf_config(layers: int, scale: int) -> dict:
    cfg = dict(LLADA_8B)
    cfg.update(n_layers=layers, d_model=4096 // scale, n_heads=32 // scale, n_kv_heads=32 // scale,
               mlp_hidden_size=12288 // scale)
    return cfg


def make_checkpoint(path: Path, cfg: dict) -> None:
    """Random bf16 weights in LLaDA's HF names, written tensor by tensor into SHARDS files."""
    from dlmarch import LLaDAConfig, LLaDAModel
    from dlmarch import safetensors_io as st
    from dlmarch.models.llada import KEYS as LLADA

    with torch.device("meta"):
        model = LLaDAModel(LLaDAConfig.from_hf(cfg))
    entries = [(LLADA.hf_name(k), tuple(v.shape)) for k, v in model.state_dict().items()]
    nbytes = [(n, 2 * torch.Size(s).numel()) for n, s in entries]
    groups = st.plan_shards(nbytes, sum(b for _, b in nbytes) // SHARDS + 1)
    shapes = dict(entries)
    tmp = path.with_name(path.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    weight_map = {}
    g = torch.Generator().manual_seed(0)
    for fname, group in zip(st.shard_names(len(groups)), groups):
        with st.Writer(tmp / fname, [(n, torch.bfloat16, shapes[n]) for n in group]) as w:
            for n in group:
                w.write(n, torch.empty(shapes[n], dtype=torch.bfloat16).normal_(0, 0.02, generator=g))
                weight_map[n] = fname
    (tmp / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (tmp / "config.json").write_text(json.dumps(cfg, indent=2))
    tmp.rename(path)


def child(args) -> None:
    src, dst = Path(args.src), Path(args.dst) if args.dst else None
    idle = max_rss_mib()
    t = time.perf_counter()
    result = {}
    if args.op == "import":
        from conversions.__main__ import main as convert

        if convert(["import", str(src), str(dst)]) != 0:
            raise SystemExit("conversion failed")
    elif args.op in ("load", "load_forward"):
        from dlmarch import AutoModel

        model = AutoModel.from_pretrained(src, dtype=torch.bfloat16)
        result["load_rss_mib"] = max_rss_mib()
        if args.op == "load_forward":
            load_s = time.perf_counter() - t
            ids = torch.randint(0, model.config.vocab_size, (1, 128), generator=torch.Generator().manual_seed(0))
            with torch.inference_mode():
                t1 = time.perf_counter()
                logits = model(ids).logits
                result["forward_s"] = time.perf_counter() - t1
            assert logits.shape == (1, 128, model.config.vocab_size) and torch.isfinite(logits.float()).all()
            result["load_s"] = load_s
    emit({"seconds": time.perf_counter() - t, "peak_rss_mib": max_rss_mib(), "idle_rss_mib": idle, **result})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--op", help=argparse.SUPPRESS)
    p.add_argument("--src", help=argparse.SUPPRESS)
    p.add_argument("--dst", help=argparse.SUPPRESS)
    p.add_argument("--layers", type=int, default=32, help="depth (LLaDA-8B: 32)")
    p.add_argument("--scale", type=int, default=1, choices=[1, 2, 4, 8, 16, 32], help="divide the width by this")
    p.add_argument("--workdir", default=None, help="keep the checkpoints here (reused by a later run)")
    args = p.parse_args()
    if args.child:
        return child(args)
    if args.layers < 1:
        p.error(f"--layers must be at least 1, found {args.layers}")
    cfg = hf_config(args.layers, args.scale)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="dlmarch-load-8b-"))
    hf, native = work / "hf", work / "native"
    t = time.perf_counter()
    if not hf.exists():
        print(f"writing a synthetic checkpoint ({args.layers} layers, width / {args.scale}) to {hf} ...", file=sys.stderr)
        make_checkpoint(hf, cfg)
    write_s = time.perf_counter() - t
    files = sorted(hf.glob("*.safetensors"))
    size = sum(f.stat().st_size for f in files) / 2**20
    largest = max(f.stat().st_size for f in files) / 2**20
    shutil.rmtree(native, ignore_errors=True)
    ops = [("idle (python + torch)", "idle", hf, None),
           ("python -m conversions import (HF -> native)", "import", hf, native),
           ("from_pretrained(HF dir)", "load", hf, None),
           ("from_pretrained(native dir) + forward of 128 tokens", "load_forward", native, None)]
    rows = []
    for name, op, s, d in ops:
        os.sync()
        r = run_isolated(__file__, ["--op", op, "--src", str(s)] + (["--dst", str(d)] if d else []), timeout=3600)
        r.update(op=name, per_shard=r["peak_rss_mib"] / largest, per_model=r["peak_rss_mib"] / size)
        rows.append(r)
        extra = f", forward {r['forward_s']:.1f}s" if "forward_s" in r else ""
        print(f"  {name}: {r['seconds']:.1f}s, peak RSS {r['peak_rss_mib']:.0f} MiB{extra}", file=sys.stderr)
    from dlmarch import LLaDAConfig

    params = LLaDAConfig.from_hf(cfg).num_params()
    print(f"# LLaDA-8B shapes, {args.layers} layers, width / {args.scale}: {params / 1e9:.2f} B parameters, "
          f"bf16 checkpoint {size:.0f} MiB in {len(files)} shards, largest {largest:.0f} MiB "
          f"(written in {write_s:.0f} s); machine: {machine()}")
    print(table(rows, [("op", "operation", "s"), ("seconds", "wall s", ".1f"), ("forward_s", "forward s", ".1f"),
                       ("peak_rss_mib", "peak RSS MiB", ".0f"), ("per_shard", "/ largest shard", ".2f"),
                       ("per_model", "/ model", ".2f")]))
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
