"""Requests/s of the lm-eval model: one request per sampler call (gen_batch_size=1, what the references
do) against batches of length-sorted requests (gen_batch_size=B), for generate_until on a random
LLaDA and Dream, and for the exact loglikelihood of a causal model (rows per forward = batch_size).

    python benchmarks/lm_eval_throughput.py                       # tiny models, CPU
    python benchmarks/lm_eval_throughput.py --size 100m --device cuda --requests 64 --batch 16

Both variants run in this one process, on the same requests, one after the other (ratios, not
absolute numbers, are what carries to another machine). At temperature 0 a batched generation is
the one-at-a-time generation (checked here and in tests/test_surfaces.py).
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from types import SimpleNamespace

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from benchmarks.common import machine, table  # noqa: E402

SIZES = {
    "tiny": dict(hidden_size=128, num_layers=4, num_heads=4, num_kv_heads=4, intermediate_size=384),
    "100m": dict(hidden_size=768, num_layers=12, num_heads=12, num_kv_heads=12, intermediate_size=2048),
}


def build(family: str, path: str, size: dict) -> None:
    from dlmarch import DreamConfig, DreamModel, LlamaConfig, CausalLM, LLaDAConfig, LLaDAModel
    from trainers.tokenizer import build_char_tokenizer

    tok = build_char_tokenizer(pad_to=8)
    ids = dict(vocab_size=len(tok), eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
               max_position_embeddings=1024, **size)
    torch.manual_seed(0)
    if family == "llada":
        model = LLaDAModel(LLaDAConfig(mask_token_id=tok.mask_token_id, **ids))
    elif family == "dream":
        model = DreamModel(DreamConfig(mask_token_id=tok.mask_token_id, **ids))
    else:
        model = CausalLM(LlamaConfig(**ids))
    model.init_weights().save_pretrained(path)
    tok.save_pretrained(path)


def timed(fn, *args):
    t0 = time.perf_counter()
    out = fn(*args)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return out, time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", choices=list(SIZES), default="tiny")
    p.add_argument("--requests", type=int, default=32)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--gen-length", type=int, default=32)
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    from dlmarch.integrations.lm_eval import DlmarchLM

    rng = random.Random(0)
    letters = "abcdefgh "
    prompts = ["".join(rng.choice(letters) for _ in range(rng.randint(8, 64))) for _ in range(args.requests)]
    gen_reqs = [SimpleNamespace(args=(q, {"until": ["\n\n"]})) for q in prompts]
    ll_reqs = [SimpleNamespace(args=(q, " " + q[::-1][:16])) for q in prompts]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for family in ("llada", "dream", "llama"):
            path = os.path.join(tmp, family)
            build(family, path, SIZES[args.size])
            for kind, reqs in (("generate_until", gen_reqs), ("loglikelihood", ll_reqs)):
                if kind == "loglikelihood" and family != "llama":
                    continue  # the Monte Carlo estimators batch within a request (batch_size = MC mini-batch)
                if kind == "generate_until" and family == "llama":
                    continue
                out, rate = {}, {}
                for b in (1, args.batch):
                    opts = dict(gen_length=args.gen_length, gen_batch_size=b) if kind == "generate_until" else \
                        dict(batch_size=b, mc_num=b)
                    if family == "llada" and kind == "generate_until":
                        opts["block_length"] = args.gen_length
                    lm = DlmarchLM(pretrained=path, device=args.device, **opts)
                    fn = lm.generate_until if kind == "generate_until" else lm.loglikelihood
                    out[b], seconds = timed(lambda r: fn(r, disable_tqdm=True), reqs)
                    rate[b] = len(reqs) / seconds
                same = out[1] == out[args.batch] if kind == "generate_until" else \
                    max(abs(a[0] - b[0]) for a, b in zip(out[1], out[args.batch])) < 1e-3
                rows.append(dict(family=family, request=kind, one=rate[1], batched=rate[args.batch],
                                 speedup=rate[args.batch] / rate[1], same="yes" if same else "NO"))
                print(rows[-1], flush=True)
    print(f"{machine()}; {args.requests} requests, prompts of 8-64 characters, gen_length {args.gen_length}, "
          f"size {args.size}, batch {args.batch}")
    print(table(rows, [("family", "family", "s"), ("request", "request", "s"), ("one", "req/s one at a time", ".2f"),
                       ("batched", f"req/s batched ({args.batch})", ".2f"), ("speedup", "speed-up", ".2f"),
                       ("same", "same answers", "s")]))


if __name__ == "__main__":
    main()
