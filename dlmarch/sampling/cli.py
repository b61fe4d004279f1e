"""`python -m dlmarch.generate --model DIR --prompt TEXT` (or `--prompts FILE.jsonl`).

Loads the model (any family: LLaDA, Dream, L2D, Llama/Qwen2; HF or native) and the tokenizer from the
same directory (local files only), applies the tokenizer's chat template when it has one, decodes
with the model's own sampler (`dlmarch.sampling.sampler_for`) and prints the decoded text, cut at
the first EOS/EoT. JSONL rows are {"prompt": ...} or {"messages": [...]}. The decoding flags are
`dlmarch.sampling.options.DecodingOptions`, shared with trainers.evaluate and the lm-eval model.
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
from ..atomic import atomic_file
from ..outputs import check_file_output
from ..prompts import decode, encode_prompts, left_pad, read_prompts
from ..tokenizers import end_of_turn_id, load_tokenizer
from .dispatch import sampler_for
from .options import add_decoding_arguments, options_from_args


def load_for_generation(model_dir: str, dtype: str | None = None, device: str | None = None):
    """(model, tokenizer) of a directory of any family (its sampler: `dlmarch.sampling.sampler_for`).
    The tokenizer pads on the left; a model whose config.json has no end-of-turn id takes the chat
    template's from the tokenizer (LLaDA's <|eot_id|>, Qwen2/Dream's <|im_end|>)."""
    from ..registry import load_pretrained

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = load_pretrained(model_dir, dtype=DTYPES[dtype] if dtype else None, device=device).eval()
    tokenizer = load_tokenizer(model_dir, padding_side="left")
    cfg = model.token_config
    if getattr(cfg, "eot_token_id", None) is None:
        eot = end_of_turn_id(tokenizer)
        if eot is not None and eot != cfg.eos_token_id:
            cfg.eot_token_id = eot
    return model, tokenizer


def pad_id_of(tokenizer, model) -> int:
    """The id left padding is written with: the tokenizer's pad token, else EOS; never the mask token."""
    cfg = model.token_config
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else cfg.eos_token_id
    if pad is not None and pad == getattr(cfg, "mask_token_id", None):
        raise DlmarchError("the tokenizer's pad token is the mask token; generation needs them distinct")
    return pad


def sampler_warnings(decoding, block_length: int | None, block_causal: bool | None) -> list[str]:
    """Warnings when the options override how the model was trained: `decoding` is the model's
    config.json `decoding` entry ({"trained_with": method, "block_length": N, "block_causal": bool};
    a trainer writes it, see trainers/record.py), or the directory holding that config.json."""
    if isinstance(decoding, (str, Path)):
        try:
            decoding = json.loads((Path(decoding) / "config.json").read_text()).get("decoding")
        except (OSError, ValueError, AttributeError):
            decoding = None
    info = decoding if isinstance(decoding, dict) else {}
    out = []
    size = info.get("block_length")
    if size and block_length and size != block_length:
        out.append(f"warning: the model was trained with block size {size}; decoding with block_length {block_length}")
    if info.get("block_causal") and block_causal is False:
        out.append("warning: the model was trained with --all-blocks (future cut off); decode it with --block-causal")
    if block_causal and info.get("trained_with") and not info.get("block_causal"):
        out.append(f"warning: --block-causal decodes --all-blocks models; the model was trained with {info['trained_with']}")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m dlmarch.generate", description=__doc__.split("\n\n")[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", help="one prompt")
    src.add_argument("--prompts", help="a JSONL file of prompts")
    p.add_argument("--model", required=True, help="model directory (any family, HF or native), with its tokenizer")
    p.add_argument("--no-chat-template", action="store_true")
    p.add_argument("--batch-size", default="8", help="prompts per sampler call (default 8)")
    p.add_argument("--dtype", choices=list(DTYPES), default=None)
    p.add_argument("--device", default=None)
    p.add_argument("--output", help="also write {prompt, output} rows to this JSONL file (never an input, nor inside "
                                    "the model directory)")
    p.add_argument("--overwrite", action="store_true", help="replace an --output file this command wrote")
    add_decoding_arguments(p)
    args = p.parse_args(argv)
    try:
        options = options_from_args(args)  # checked before the model is read
        batch_size = positive_int("batch_size", args.batch_size)
        if args.output:
            check_output(args)
        model, tok = load_for_generation(args.model, args.dtype, args.device)
        sampler = sampler_for(model)
        options = sampler.resolve(model, options)
        for w in sampler_warnings(model.decoding, options.block_length, options.block_causal):
            print(w, file=sys.stderr)
        prompts = [args.prompt] if args.prompt is not None else read_prompts(args.prompts)
        rows = encode_prompts(tok, prompts, not args.no_chat_template)
        pad = pad_id_of(tok, model)
        gen = torch.Generator(device=model.device).manual_seed(options.seed)
        eos_ids = model.stop_token_ids
        outputs = []
        t0, n_tokens = time.time(), 0
        for start in range(0, len(rows), batch_size):
            ids, am = left_pad(rows[start:start + batch_size], pad)
            x = sampler(model, ids, am, options, generator=gen, progress=True)
            n_tokens += x.shape[0] * (x.shape[1] - ids.shape[1])
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


def positive_int(name: str, value) -> int:
    """A count option (batch sizes): an integer >= 1, else the one-line message of DecodingOptions."""
    from .options import OptionError

    if isinstance(value, bool) or isinstance(value, float) and not value.is_integer():
        raise OptionError(f"{name} must be an integer, found {value!r}")
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise OptionError(f"{name} must be an integer, found {value!r}") from None
    if n < 1:
        raise OptionError(f"{name} must be at least 1, found {n}")
    return n


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
