"""One command for the day a GPU is available: does the GPU code path work, and how fast is it?

    python benchmarks/gpu_check.py              # CUDA: everything below, under 8 minutes on one GPU
    make gpu-check                              # the same
    python benchmarks/gpu_check.py --device cpu # the parity part only (fp32, small shapes, eager flex)

Sections, each a block of rows in one table (status ok / FAIL / skipped, with the reason):

1. parity: the output and the gradients (q, k, v) of `dlmarch.attention.attend` under each backend
   (sdpa with the dense mask, FlexAttention, flash-attn varlen) against an independent float64
   softmax(QK^T/sqrt(d))V over the dense mask, for every mask kind the library builds
   (dlmarch.masks): right padding (bidirectional), packed documents with filler (bidirectional),
   left padding (causal families), and BD3-LM's two-copy block-causal layout (Blockwise SFT's
   --all-blocks, trainers/objectives/blockwise.py two_copy_layout). bf16 on CUDA, fp32 on CPU.
   Padding/filler query rows are not compared (flash-attn returns zeros there, the dense form a
   defined but unused value); their gradients are, since the loss weighs only real tokens.
2. speed (CUDA): forward + backward time of compiled FlexAttention and flash-attn against SDPA with
   the dense mask, per mask kind (ratios; > 1 is faster than SDPA).
3. mfu (CUDA): one AdamW training step of a ~1B LLaDA-shaped model (hidden 2048, 16 layers, LLaDA's
   vocabulary of 126,464), bf16 autocast over fp32 weights, on packed rows, per backend: tokens/s
   and MFU (nanoGPT/PaLM FLOP accounting, TransformerConfig.flops_per_token) against the measured
   bf16 matmul peak and, for known GPUs, the datasheet's dense bf16 peak.
4. generate (CUDA): LLaDA's sampler (dlmarch.generate) in bf16 on that model with each KV cache
   (none, Fast-dLLM prefix, dual): generated tokens/s.
5. fsdp2 (CUDA): FSDP2 (`fully_shard` per block, then the model, as trainers/distributed.py `distribute`
   does) in a single-process NCCL world: loss, gradients and the weights after one AdamW step
   against the same model unsharded, and the full state dict the trainer gathers at the end.

Exit status 1 when any row FAILs. Sizes can be lowered for smaller GPUs (--mfu-layers, --mfu-tokens).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import math
import os
import sys
import tempfile
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from benchmarks.common import machine, matmul_peak_flops, sync, table  # noqa: E402
from dlmarch.attention import attend, flash_available  # noqa: E402
from dlmarch.masks import AttentionMask  # noqa: E402

MASK_KINDS = ("padding", "packed", "causal-left-pad", "two-copy")
BACKENDS = ("sdpa", "flex", "flash")
# Dense bf16 tensor-core peaks from the vendors' datasheets (SXM parts), FLOP/s.
DATASHEET_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 70e12}


def make_mask(kind: str, B: int, L: int, device, block: int = 16) -> tuple[AttentionMask, torch.Tensor]:
    """(the mask, real (B, L): the query tokens whose outputs count). Deterministic for (kind, B, L)."""
    g = torch.Generator().manual_seed(1)
    ar = torch.arange(L).expand(B, L)
    if kind == "padding":  # right padding, bidirectional (LLaDA with --eos-pad exclude)
        lengths = torch.tensor([L] + [int(L * f) for f in torch.linspace(0.3, 0.9, B - 1).tolist()])[:B]
        valid = ar < lengths[:, None]
        rule, kw, real = "bidirectional", dict(positions=ar.clone(), valid=valid), valid
    elif kind == "causal-left-pad":  # Llama/Qwen2 prompts padded on the left
        lengths = torch.tensor([L] + [int(L * f) for f in torch.linspace(0.4, 0.9, B - 1).tolist()])[:B]
        valid = ar >= (L - lengths)[:, None]
        rule, kw, real = "causal", dict(positions=ar.clone(), valid=valid), valid
    elif kind == "packed":  # documents back to back, filler (doc -1) at the end of each row
        doc = torch.full((B, L), -1, dtype=torch.long)
        pos = torch.zeros(B, L, dtype=torch.long)
        for b in range(B):
            at, d = 0, 0
            while True:
                n = int(torch.randint(max(2, L // 8), max(3, L // 3), (1,), generator=g))
                if at + n > L - max(1, L // 16):
                    break
                doc[b, at:at + n], pos[b, at:at + n] = d, torch.arange(n)
                at, d = at + n, d + 1
            pos[b, at:] = torch.arange(L - at)
        rule, kw, real = "bidirectional", dict(positions=pos, doc_ids=doc), doc >= 0
    elif kind == "two-copy":  # [noisy copy | clean copy], BD3-LM's block-causal rule
        n = L // 2
        pos = torch.arange(n).repeat(2).expand(B, 2 * n).clone()
        blk = pos // block
        clean = torch.cat([torch.zeros(B, n, dtype=torch.bool), torch.ones(B, n, dtype=torch.bool)], 1)
        rule, kw = "block_causal", dict(positions=pos, block_ids=blk, clean=clean)
        real = torch.ones(B, 2 * n, dtype=torch.bool)
    else:
        raise ValueError(kind)
    return AttentionMask.self_attention(rule, **{k: v.to(device) for k, v in kw.items()}), real.to(device)


def reference_attention(q, k, v, dense: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v in float64 over the boolean (B, 1, L, L) mask, keys repeated for GQA.
    Written out here so that every backend, SDPA included, is compared with code that is none of them."""
    q, k, v = (t.double() for t in (q, k, v))
    rep = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
    s = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    s = s.masked_fill(~dense, float("-inf"))
    p = torch.softmax(s, -1).nan_to_num(0.0)
    return p @ v


def parity_rows(device: str, dtype: torch.dtype, B: int, L: int, H: int, Hkv: int, D: int, tol: float) -> list[dict]:
    rows = []
    for kind in MASK_KINDS:
        mask, real = make_mask(kind, B, L, device)
        Lm = mask.q.pos.shape[1]
        g = torch.Generator(device="cpu").manual_seed(0)
        q0 = torch.randn(B, H, Lm, D, generator=g)
        k0 = torch.randn(B, Hkv, Lm, D, generator=g)
        v0 = torch.randn(B, Hkv, Lm, D, generator=g)
        w = torch.randn(B, H, Lm, D, generator=g) * real[:, None, :, None].cpu()
        # The reference takes the low-precision inputs themselves, so only the kernel's arithmetic differs.
        qs, ks, vs = (t.to(dtype) for t in (q0, k0, v0))
        qr, kr, vr = (t.clone().requires_grad_(True) for t in (qs, ks, vs))
        ref = reference_attention(qr, kr, vr, mask.dense().cpu())
        (ref * w.double()).sum().backward()
        ref_grads = [qr.grad, kr.grad, vr.grad]
        sel = real.cpu()[:, None, :, None].expand_as(ref)
        for backend in BACKENDS:
            row = dict(section="parity", case=kind, backend=backend, dtype=str(dtype).replace("torch.", ""))
            why = skip_reason(backend, mask, device, dtype)
            if why:
                rows.append({**row, "status": "skipped", "note": why})
                continue
            try:
                # FlexAttention has no backward on CPU (torch raises NotImplementedError): forward only there.
                backward = not (backend == "flex" and device == "cpu")
                q, k, v = (t.to(device).requires_grad_(backward) for t in (qs, ks, vs))
                out = attend(q, k, v, mask, backend)
                scale = ref.abs().max().item()
                err_out = (out.detach().double().cpu() - ref.detach())[sel].abs().max().item() / scale
                err_grad = None
                if backward:
                    (out.float() * w.to(device)).sum().backward()
                    err_grad = max(((t.grad.double().cpu() - r).abs().max() / r.abs().max()).item()
                                   for t, r in zip((q, k, v), ref_grads))
                ok = err_out <= tol and (err_grad is None or err_grad <= tol)
                bwd = f"bwd {err_grad:.1e}" if backward else "bwd skipped (no FlexAttention backward on CPU)"
                rows.append({**row, "status": "ok" if ok else "FAIL",
                             "note": f"fwd {err_out:.1e}, {bwd} (max rel. error vs float64, tol {tol:.0e})"})
            except Exception as e:  # a backend that crashes is a finding, not the end of the check
                rows.append({**row, "status": "FAIL", "note": one_line(e)})
    return rows


def skip_reason(backend: str, mask: AttentionMask, device: str, dtype) -> str | None:
    if backend != "flash":
        return None
    if device != "cuda":
        return "flash-attn needs CUDA"
    if not flash_available():
        return "flash-attn not installed (pip install 'dlmarch[flash]')"
    if not mask.varlen_ok:
        return f"flash-attn varlen cannot express the {mask.rule} mask (auto picks flex)"
    return None


def one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"[:160]


def timed(fn, reps: int, device: str, warmup: int = 2) -> float:
    """Seconds per call after `warmup` calls (compilation excluded)."""
    for _ in range(warmup):
        fn()
    sync(device)
    t = time.perf_counter()
    for _ in range(reps):
        fn()
    sync(device)
    return (time.perf_counter() - t) / reps


def speed_rows(device: str, B: int, L: int, H: int, Hkv: int, D: int, reps: int) -> list[dict]:
    rows = []
    for kind in MASK_KINDS:
        mask, _ = make_mask(kind, B, L, device, block=64)
        Lm = mask.q.pos.shape[1]
        mask.dense(), mask.block_mask()  # each form built once, as the model does per batch
        q = torch.randn(B, H, Lm, D, device=device, dtype=torch.bfloat16, requires_grad=True)
        k = torch.randn(B, Hkv, Lm, D, device=device, dtype=torch.bfloat16, requires_grad=True)
        v = torch.randn(B, Hkv, Lm, D, device=device, dtype=torch.bfloat16, requires_grad=True)
        times = {}
        for backend in BACKENDS:
            row = dict(section="speed", case=f"{kind} B{B} L{Lm}", backend=backend, dtype="bf16")
            why = skip_reason(backend, mask, device, torch.bfloat16)
            if why:
                rows.append({**row, "status": "skipped", "note": why})
                continue

            def step():
                out = attend(q, k, v, mask, backend)
                out.sum().backward()
                q.grad = k.grad = v.grad = None

            try:
                times[backend] = timed(step, reps, device)
            except Exception as e:
                rows.append({**row, "status": "FAIL", "note": one_line(e)})
                continue
            note = f"fwd+bwd {times[backend] * 1e3:.2f} ms"
            if "sdpa" in times:
                note += f"; x{times['sdpa'] / times[backend]:.2f} vs sdpa (dense mask)"
            rows.append({**row, "status": "ok", "note": note})
    return rows


def llada_1b(layers: int, device: str):
    from dlmarch import LLaDAConfig, LLaDAModel

    cfg = LLaDAConfig(vocab_size=126464, hidden_size=2048, num_layers=layers, num_heads=16, num_kv_heads=16,
                      intermediate_size=8192, mask_token_id=126336, eos_token_id=126081,
                      max_position_embeddings=8192)
    torch.manual_seed(0)
    with torch.device(device):  # initialised where it runs: seconds instead of a minute of CPU
        return LLaDAModel(cfg).init_weights()


def packed_batch(B: int, L: int, vocab: int, device):
    mask, _ = make_mask("packed", B, L, device)
    ids = torch.randint(0, vocab - 1000, (B, L), device=device)
    return ids, mask.q.doc, mask.q.pos


def mfu_rows(device: str, layers: int, B: int, L: int, reps: int) -> tuple[list[dict], object]:
    """One model, its attention backend switched through its config between runs (the forward reads
    config.attn_backend per call), one fused AdamW; packed rows so that every backend has a mask."""
    rows = []
    peak = matmul_peak_flops(device, torch.bfloat16)
    name = torch.cuda.get_device_name()
    nominal = next((v for k, v in DATASHEET_BF16.items() if k in name), None)
    rows.append(dict(section="mfu", case="bf16 matmul peak", backend="-", dtype="bf16", status="ok",
                     note=f"{peak / 1e12:.0f} TFLOP/s measured (8192^3)"
                          + (f"; datasheet {nominal / 1e12:.0f}" if nominal else "")))
    model = llada_1b(layers, device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=True)
    ids, doc, pos = packed_batch(B, L, model.config.vocab_size, device)

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits = model(ids, doc_ids=doc, position_ids=pos).logits
            loss = F.cross_entropy(logits.float().flatten(0, 1), ids.flatten())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for backend in BACKENDS:
        row = dict(section="mfu", case=f"LLaDA {layers}L-2048 B{B} L{L} packed", backend=backend, dtype="bf16")
        if backend == "flash" and not flash_available():
            rows.append({**row, "status": "skipped", "note": "flash-attn not installed"})
            continue
        model.config.attn_backend = backend
        try:
            torch.cuda.reset_peak_memory_stats()
            sec = timed(step, reps, device)
            tok_s = B * L / sec
            flops = model.flops_per_token(L) * tok_s
            mem = torch.cuda.max_memory_allocated() / 2**30
            note = f"{tok_s:,.0f} tok/s, {model.num_parameters() / 1e9:.2f}B params, peak {mem:.1f} GiB"
            note += f", MFU {flops / peak:.1%} of measured" + (f", {flops / nominal:.1%} of datasheet" if nominal else "")
            rows.append({**row, "status": "ok", "note": note})
        except Exception as e:
            rows.append({**row, "status": "FAIL", "note": one_line(e)})
            opt.zero_grad(set_to_none=True)
    del opt
    torch.cuda.empty_cache()
    return rows, model


def generate_rows(device: str, model, layers: int, B: int, prompt_len: int = 128, gen_length: int = 256,
                  block: int = 32) -> list[dict]:
    from dlmarch import generate

    rows = []
    if model is None:
        model = llada_1b(layers, device)
    model = model.to(torch.bfloat16).eval()
    model.config.attn_backend = "auto"
    prompt = torch.randint(0, min(120000, model.config.mask_token_id), (B, prompt_len), device=device)
    base = None
    for cache in (False, True, "dual"):
        row = dict(section="generate", case=f"B{B} prompt {prompt_len}, gen {gen_length}, block {block}, steps {gen_length}",
                   backend={False: "no cache", True: "prefix cache", "dual": "dual cache"}[cache], dtype="bf16")
        try:
            with torch.no_grad():
                def run():
                    return generate(model, prompt, steps=gen_length, gen_length=gen_length, block_length=block,
                                    kv_cache=cache)
                sec = timed(run, 1, device, warmup=1)
            tok_s = B * gen_length / sec
            base = base or tok_s
            rows.append({**row, "status": "ok", "note": f"{tok_s:,.0f} tok/s, x{tok_s / base:.2f} vs no cache"})
        except Exception as e:
            rows.append({**row, "status": "FAIL", "note": one_line(e)})
    return rows


def fsdp_rows(device: str) -> list[dict]:
    """FSDP2 in a one-process NCCL world against the same model unsharded (see the module docstring)."""
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    from torch.distributed.fsdp import fully_shard

    from dlmarch import LLaDAConfig, LLaDAModel

    row = dict(section="fsdp2", case="world 1, LLaDA 4L-512, bf16 autocast", backend="auto", dtype="bf16")
    store_dir = tempfile.mkdtemp(prefix="gpu_check_")
    store = os.path.join(store_dir, "store")
    started = False
    try:
        if not dist.is_initialized():
            dist.init_process_group("nccl" if device == "cuda" else "gloo", init_method=f"file://{store}",
                                    rank=0, world_size=1)
            started = True
        cfg = LLaDAConfig(vocab_size=4096, hidden_size=512, num_layers=4, num_heads=8, num_kv_heads=8,
                          intermediate_size=1024, mask_token_id=4000, max_position_embeddings=2048)
        torch.manual_seed(0)
        plain = LLaDAModel(cfg).init_weights().to(device).train()
        sharded = copy.deepcopy(plain)
        for block in sharded.blocks:  # trainers/distributed.py distribute()
            fully_shard(block)
        fully_shard(sharded)
        ids, doc, pos = packed_batch(2, 512, cfg.vocab_size, device)
        losses, opts = [], []
        for m in (plain, sharded):
            opt = torch.optim.AdamW(m.parameters(), lr=1e-3)
            with torch.autocast(device, dtype=torch.bfloat16):
                loss = F.cross_entropy(m(ids, doc_ids=doc, position_ids=pos).logits.float().flatten(0, 1), ids.flatten())
            loss.backward()
            losses.append(loss.item())
            opts.append(opt)

        def full(t):
            return t.full_tensor() if hasattr(t, "full_tensor") else t

        grads = {n: p.grad for n, p in plain.named_parameters()}
        err_grad = max(((full(p.grad) - grads[n]).abs().max() / grads[n].abs().max().clamp_min(1e-12)).item()
                       for n, p in sharded.named_parameters())
        for opt in opts:
            opt.step()
        state = get_model_state_dict(sharded, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        ref_state = plain.state_dict()
        # AdamW's first step moves each weight by about lr whatever the gradient's size, so a gradient
        # that differs near zero can move a weight the other way: compare the mean change, in units of lr.
        diffs = [(state[n].to(device).float() - ref_state[n].float()).abs() for n in ref_state]
        err_w = (sum(d.sum().item() for d in diffs) / sum(d.numel() for d in diffs)) / 1e-3
        missing = sorted(set(ref_state) - set(state))
        err_loss = abs(losses[0] - losses[1])
        ok = err_loss < 1e-3 and err_grad < 1e-2 and err_w < 1e-2 and not missing
        note = (f"loss diff {err_loss:.1e}, grad rel. diff {err_grad:.1e}, weights after AdamW: mean diff "
                f"{err_w:.1e} lr" + (f"; full state dict lacks {missing[0]}" if missing else ""))
        return [{**row, "status": "ok" if ok else "FAIL", "note": note}]
    except Exception as e:
        return [{**row, "status": "FAIL", "note": one_line(e)}]
    finally:
        if started:
            dist.destroy_process_group()
        with contextlib.suppress(OSError):
            os.unlink(store)
        with contextlib.suppress(OSError):
            os.rmdir(store_dir)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--only", nargs="+", choices=["parity", "speed", "mfu", "generate", "fsdp2"], default=None)
    p.add_argument("--mfu-layers", type=int, default=16, help="layers of the LLaDA-shaped model (16: ~1.6B with embeddings)")
    p.add_argument("--mfu-batch", type=int, default=4)
    p.add_argument("--mfu-length", type=int, default=2048)
    p.add_argument("--reps", type=int, default=5)
    args = p.parse_args(argv)
    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        print("error: --device cuda but no CUDA device is visible", file=sys.stderr)
        return 2
    wanted = set(args.only or ["parity", "speed", "mfu", "generate", "fsdp2"])
    if cuda:
        # Every mask kind and shape compiles FlexAttention anew; the default limit (8) would send the
        # later sections to eager FlexAttention and time that instead.
        import torch._dynamo as dynamo

        dynamo.config.cache_size_limit = max(dynamo.config.cache_size_limit, 64)
    t0 = time.time()
    print(f"gpu_check on {machine()}", flush=True)
    rows = []
    if "parity" in wanted:
        if cuda:
            rows += parity_rows("cuda", torch.bfloat16, B=2, L=1024, H=8, Hkv=4, D=128, tol=3e-2)
        else:
            rows += parity_rows("cpu", torch.float32, B=2, L=48, H=4, Hkv=2, D=16, tol=1e-4)
    skipped_sections = []
    if cuda:
        model = None
        if "speed" in wanted:
            rows += guarded("speed", lambda: speed_rows("cuda", B=8, L=2048, H=16, Hkv=16, D=128, reps=args.reps))
        if "mfu" in wanted:
            result = guarded("mfu", lambda: mfu_rows("cuda", args.mfu_layers, args.mfu_batch, args.mfu_length, args.reps))
            if isinstance(result, tuple):
                mrows, model = result
                rows += mrows
            else:
                rows += result
        if "generate" in wanted:
            rows += guarded("generate", lambda: generate_rows("cuda", model, args.mfu_layers, B=4))
        model = None
        if "fsdp2" in wanted:
            rows += fsdp_rows("cuda")
    else:
        skipped_sections = [s for s in ("speed", "mfu", "generate", "fsdp2") if s in wanted]
    print(table(rows, [("section", "section", ""), ("case", "case", ""), ("backend", "backend", ""),
                       ("dtype", "dtype", ""), ("status", "status", ""), ("note", "result", "")]))
    for s in skipped_sections:
        print(f"skipped {s}: needs a CUDA device")
    failed = [r for r in rows if r["status"] == "FAIL"]
    print(f"{len(rows) - len(failed)} of {len(rows)} rows without failure in {time.time() - t0:.0f}s"
          + (f"; FAILED: {', '.join(r['section'] + '/' + r['case'] + '/' + r['backend'] for r in failed)}" if failed else ""))
    return 1 if failed else 0


def guarded(section: str, fn):
    """A section that crashes (out of memory, a compile error) becomes one FAIL row; the rest still run."""
    try:
        return fn()
    except Exception as e:
        traceback.print_exc(file=sys.stderr)
        return [dict(section=section, case="-", backend="-", dtype="-", status="FAIL", note=one_line(e))]


if __name__ == "__main__":
    sys.exit(main())
