"""`python -m conversions import|export SRC DST`

import: an HF checkpoint (LLaDA, Llama, Qwen2, Dream; the family is read from config.json) -> native.
        With --base MAIN_DIR --l2d-options OPTIONS.json, SRC is a reference L2D checkpoint
        (SakanaAI/L2D's pytorch_model.bin) and DST a native L2D directory.
to-diffusion: a causal Llama/Qwen2 checkpoint -> a native bidirectional Dream (--style dream) or LLaDA
        (--style llada) model with the same weights and a mask token (conversions/to_diffusion.py).
export: a native checkpoint -> its family's HF layout, loadable by transformers (Llama, Qwen2) or
        the LLaDA and Dream reference modeling code.

Bad input (unreadable JSON, missing/unknown/mis-shaped tensors, a config that disagrees with the
weights, a truncated file) gives one line on stderr, exit status 2, and nothing at DST. DST may not
be, contain or lie inside an input; --overwrite replaces only a directory of checkpoint files.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dlmarch.errors import DlmarchError, os_error_line


def parse_size(text: str) -> int:
    units = {"KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}
    t = text.strip().upper()
    for u, mult in sorted(units.items(), key=lambda kv: -len(kv[0])):
        if t.endswith(u):
            return int(float(t[: -len(u)]) * mult)
    return int(t)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m conversions", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    for name, help_ in (("import", "HF (or reference L2D) checkpoint -> native"), ("export", "native -> HF layout")):
        s = sub.add_parser(name, help=help_)
        s.add_argument("src")
        s.add_argument("dst")
        s.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], help="cast floating tensors (default: keep)")
        s.add_argument("--max-shard-size", type=parse_size, default=None,
                       help="re-shard to at most this size, e.g. 5GB (default: keep the source's shards)")
        s.add_argument("--overwrite", action="store_true", help="replace DST if it exists")
        if name == "import":
            s.add_argument("--base", help="L2D: the main-path checkpoint (HF or native Llama/Qwen2)")
            s.add_argument("--l2d-options", help="L2D: the reference's options (JSON, its option names)")
    s = sub.add_parser("to-diffusion", help="causal Llama/Qwen2 -> native bidirectional Dream or LLaDA model (see "
                                             "conversions/to_diffusion.py)")
    s.add_argument("src")
    s.add_argument("dst")
    s.add_argument("--style", choices=["dream", "llada"], required=True,
                   help="dream: keep the shifted (next-token) head; llada: LLaDA's layout")
    s.add_argument("--mask-token-id", type=int, default=None,
                   help="an existing id to use as the mask token (default: append one, mean embedding)")
    s.add_argument("--overwrite", action="store_true", help="replace DST if it exists")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if getattr(args, "max_shard_size", None) is not None and args.max_shard_size <= 0:  # to-diffusion has none
            raise DlmarchError(f"--max-shard-size must be positive, found {args.max_shard_size} bytes")
        for path in (Path(args.dst), *Path(args.dst).parents):  # --overwrite replaces checkpoints, not files
            if path.exists() and not path.is_dir():
                raise DlmarchError(f"{path} is a file, not a directory (DST {args.dst})")
        if args.command == "import" and (args.base or args.l2d_options):
            if not (args.base and args.l2d_options):
                raise DlmarchError("an L2D import needs both --base MAIN_DIR and --l2d-options OPTIONS.json")
            from .hf import check_destination
            from .l2d_reference import import_l2d_reference

            check_destination(Path(args.dst), {"source": args.src, "base": args.base, "options": args.l2d_options},
                              args.overwrite, [Path(args.base)])
            report = import_l2d_reference(args.src, args.dst, base=args.base, options=args.l2d_options,
                                          dtype=args.dtype, overwrite=args.overwrite)
        elif args.command == "to-diffusion":
            from .to_diffusion import to_diffusion

            report = to_diffusion(args.src, args.dst, args.style, args.mask_token_id, args.overwrite)
        elif args.command == "import":
            from .hf import import_hf

            report = import_hf(args.src, args.dst, args.dtype, args.overwrite, args.max_shard_size)
        else:
            from .hf import export_hf

            report = export_hf(args.src, args.dst, args.dtype, args.overwrite, args.max_shard_size)
    except (DlmarchError, FileExistsError, OSError) as e:
        msg = os_error_line(e) if isinstance(e, OSError) and not isinstance(e, FileExistsError) else str(e)
        msg = msg.splitlines()[0] if msg else type(e).__name__
        if isinstance(e, FileExistsError):
            msg += " (pass --overwrite to replace it)"
        print(f"error: {msg}", file=sys.stderr)
        return 2
    verb = {"import": "imported", "export": "exported", "to-diffusion": "converted to"}[args.command]
    print(report.line(verb, args.dst))
    return 0


if __name__ == "__main__":
    sys.exit(main())
