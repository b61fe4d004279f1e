"""`python -m dlmarch.generate --model DIR --prompt TEXT` (or `--prompts FILE.jsonl`).

Loads the model (HF LLaDA or native) and the tokenizer from the same directory (local files only),
applies the tokenizer's chat template when it has one, generates with LLaDA's sampler (a progress
bar per block), and prints the decoded text. JSONL rows are {"prompt": ...} or {"messages": [...]}.
Dream directories are sampled with Dream's own sampler (dlmarch.sampling.dream; its flags under --help).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from ..dtypes import DTYPES
from ..errors import DlmarchError
from ..outputs import atomic_file, check_file_output
from ..prompts import decode, encode_prompts, left_pad, read_prompts
from .dream import add_dream_arguments, dream_cli_sampler, dream_tokenizer


def load_for_generation(model_dir: str, dtype: str | None, device: str | None, allow_l2d: bool = False,
                        allow_causal: bool = False):
    """(model, tokenizer) of a directory: a masked-diffusion model (or, with allow_l2d, an L2D model;
    with allow_causal, a Llama/Qwen2 model)."""
    from transformers import AutoTokenizer

    from ..registry import load_pretrained

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = load_pretrained(model_dir, dtype=DTYPES[dtype] if dtype else None, device=device).eval()
    if model.kind == "l2d":
        if not allow_l2d:
            raise DlmarchError(f"{model_dir}: an L2D model; sample it with dlmarch.generate_l2d or trainers.evaluate")
    elif model.kind != "masked-diffusion" and not allow_causal:
        raise DlmarchError(f"{model_dir}: a {model.config.family} model is not a masked-diffusion model")
    try:
        tokenizer = dream_tokenizer(model_dir)  # Dream's remote-code tokenizer, read natively
        if tokenizer is None:
            tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True, trust_remote_code=False)
    except Exception as e:
        raise DlmarchError(f"{model_dir}: cannot load its tokenizer ({str(e).splitlines()[0]})") from None
    tokenizer.padding_side = "left"
    # LLaDA's config.json has no EoT id; the tokenizer knows it.
    if model.mask_token_id is not None and getattr(model.config, "eot_token_id", None) is None:
        eot = tokenizer.convert_tokens_to_ids("<|eot_id|>") if "<|eot_id|>" in tokenizer.get_vocab() else None
        if eot is None and "<|eot|>" in tokenizer.get_vocab():
            eot = tokenizer.convert_tokens_to_ids("<|eot|>")
        model.config.eot_token_id = eot
    return model, tokenizer


def sampler_warnings(model_dir: str, block_length: int, block_causal: bool) -> list[str]:
    """Warnings when the sampler does not match how the model was trained: the `decoding` entry of
    its native config.json ({"trained_with": method, "block_length": N, "block_causal": bool}; a
    trainer writes it, see trainers/record.py)."""
    path = Path(model_dir) / "config.json"
    try:
        info = json.loads(path.read_text()).get("decoding") or {}
    except (OSError, ValueError, AttributeError):
        return []
    out = []
    size = info.get("block_length")
    if size and size != block_length:
        out.append(f"warning: {model_dir} was trained with block size {size}; decoding with block_length {block_length}")
    if info.get("block_causal") and not block_causal:
        out.append(f"warning: {model_dir} was trained with --all-blocks (future cut off); decode it with --block-causal")
    if block_causal and info.get("trained_with") and not info.get("block_causal"):
        out.append(f"warning: --block-causal decodes --all-blocks models; {model_dir} was trained with {info['trained_with']}")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m dlmarch.generate", description=__doc__.split("\n\n")[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", help="one prompt")
    src.add_argument("--prompts", help="a JSONL file of prompts")
    p.add_argument("--model", required=True, help="model directory (HF LLaDA or native), with its tokenizer")
    p.add_argument("--gen-length", type=int, default=128)
    p.add_argument("--block-length", type=int, default=32)
    p.add_argument("--steps", type=int, default=None, help="default: gen_length")
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--cfg-scale", type=float, default=0.0)
    p.add_argument("--remasking", default="low_confidence", choices=["low_confidence", "random"])
    p.add_argument("--kv-cache", nargs="?", const="prefix", default=False, choices=["prefix", "dual"],
                   help="KV cache per block (approximation): prefix (the default when given bare) or dual "
                        "(prefix and suffix, Fast-dLLM)")
    p.add_argument("--stop-at-eos", action="store_true",
                   help="stop after the block in which every row of the batch has emitted EOS/EoT")
    p.add_argument("--threshold", type=float, default=None, help="confidence-threshold parallel decoding")
    p.add_argument("--block-causal", action="store_true", help="the sampler of --all-blocks models")
    p.add_argument("--logits-eos-inf", action="store_true")
    p.add_argument("--confidence-eos-eot-inf", action="store_true")
    p.add_argument("--no-chat-template", action="store_true")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", choices=list(DTYPES), default=None)
    p.add_argument("--device", default=None)
    p.add_argument("--output", help="also write {prompt, output} rows to this JSONL file (never an input, nor inside "
                                    "the model directory)")
    p.add_argument("--overwrite", action="store_true", help="replace an --output file this command wrote")
    add_dream_arguments(p)
    args = p.parse_args(argv)
    try:
        for name in ("steps", "gen_length", "block_length", "batch_size"):  # 0 would otherwise fall back to the default
            if getattr(args, name) is not None and getattr(args, name) < 1:
                raise DlmarchError(f"--{name.replace('_', '-')} must be at least 1, found {getattr(args, name)}")
        if args.output:
            check_output(args)
        from .llada import generate

        model, tok = load_for_generation(args.model, args.dtype, args.device)
        if model.sampler == "generate_dream":  # Dream's own sampler, same call
            generate = dream_cli_sampler(args, model, tok)
        for w in sampler_warnings(args.model, args.block_length, args.block_causal):
            print(w, file=sys.stderr)
        prompts = [args.prompt] if args.prompt is not None else read_prompts(args.prompts)
        rows = encode_prompts(tok, prompts, not args.no_chat_template)
        pad = tok.pad_token_id if tok.pad_token_id is not None else model.config.eos_token_id
        if pad == model.config.mask_token_id:
            raise DlmarchError("the tokenizer's pad token is the mask token; generation needs them distinct")
        gen = torch.Generator(device=model.device).manual_seed(args.seed)
        eos_ids = model.stop_token_ids
        outputs = []
        t0, n_tokens = time.time(), 0
        for start in range(0, len(rows), args.batch_size):
            ids, am = left_pad(rows[start:start + args.batch_size], pad)
            x = generate(model, ids, attention_mask=am, steps=args.steps or args.gen_length, gen_length=args.gen_length,
                         block_length=args.block_length, temperature=args.temperature, cfg_scale=args.cfg_scale,
                         remasking=args.remasking, logits_eos_inf=args.logits_eos_inf,
                         confidence_eos_eot_inf=args.confidence_eos_eot_inf, generator=gen, kv_cache=args.kv_cache,
                         threshold=args.threshold, block_causal=args.block_causal, stop_at_eos=args.stop_at_eos,
                         progress=True)
            n_tokens += x.shape[0] * args.gen_length
            for row in x[:, ids.shape[1]:]:
                outputs.append(decode(tok, row, eos_ids))
    except (DlmarchError, ValueError, OSError) as e:
        print(f"error: {str(e).splitlines()[0]}", file=sys.stderr)
        return 2
    for prompt, text in zip(prompts, outputs):
        if len(prompts) > 1:
            print(f"### {prompt if isinstance(prompt, str) else prompt[-1]['content']}")
        print(text)
    print(f"[{n_tokens} tokens in {time.time() - t0:.1f}s]", file=sys.stderr)
    if args.output:
        try:
            with atomic_file(args.output) as f:
                for prompt, text in zip(prompts, outputs):
                    f.write(json.dumps({"prompt": prompt, "output": text}) + "\n")
        except (DlmarchError, OSError) as e:
            print(f"error: {str(e).splitlines()[0]}", file=sys.stderr)
            return 2
    return 0


def _is_generate_output(path: Path) -> bool:
    """Whether a file is one this command wrote: JSONL rows of exactly {prompt, output}."""
    try:
        with open(path, "rb") as f:
            first = f.readline(1 << 20)
        row = json.loads(first)
    except (OSError, ValueError):
        return False
    return isinstance(row, dict) and set(row) == {"prompt", "output"}


def check_output(args) -> None:
    """--output through the output guard, before the model is loaded: not the --prompts file or the
    model's files, not inside the model directory; an existing file only with --overwrite and only
    one this command wrote."""
    check_file_output(args.output, {"--prompts": args.prompts, "--model": args.model}, "--output", args.overwrite,
                      _is_generate_output)


if __name__ == "__main__":
    sys.exit(main())
