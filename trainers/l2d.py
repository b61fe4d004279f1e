"""`python -m trainers.l2d`: train L2D's diffusion path on a frozen Llama/Qwen2 (arXiv 2501.15781, SakanaAI/L2D).

--model is the main path (HF or native); the diffusion path is built from it with the L2D reference's
defaults, overridden by --l2d-options (a JSON of SakanaAI/L2D's option names, as its runs record
them) and by the flags below, or continued from an L2D checkpoint with --init. The final model/
holds only the diffusion path and a reference to --model.
"""

from __future__ import annotations

import dataclasses
import sys
from functools import partial

from dlmarch.config import read_json
from dlmarch.errors import DlmarchError
from dlmarch.models.l2d import L2DModel
from dlmarch.models.l2d_config import L2DConfig

from .cli import run
from .objectives.l2d import l2d
from .options import at_least, limited, positive


def add_options(p):
    g = p.add_argument_group("l2d")
    g.add_argument("--init", help="continue from this L2D checkpoint instead of a fresh diffusion path")
    g.add_argument("--l2d-options", help="JSON of SakanaAI/L2D option names")
    g.add_argument("--adapter", choices=["lora", "full"], default=None, help="diffusion q/o/MLP: LoRA or full copies")
    limited(g.add_argument("--l2d-lora-rank", type=int, default=None), at_least(1))
    limited(g.add_argument("--l2d-lora-alpha", type=float, default=None), positive)
    limited(g.add_argument("--flow-dim", type=int, default=None), at_least(1))
    limited(g.add_argument("--noise-scale", type=float, default=None), positive)
    limited(g.add_argument("--num-classes", type=int, default=None, help="guidance classes (rows carry an integer \"class\")"),
            at_least(1))
    # An autoregressive model learns one EOS; padding carries no loss.
    p.set_defaults(eos_pad="exclude", lr=1e-4)


def l2d_config(args, main_hidden: int) -> L2DConfig:
    cfg = L2DConfig.from_reference(read_json(args.l2d_options), main_hidden) if args.l2d_options else L2DConfig()
    changes = {k: v for k, v in dict(adapter=args.adapter, lora_rank=args.l2d_lora_rank, lora_alpha=args.l2d_lora_alpha,
                                     flow_dim=args.flow_dim, noise_scale=args.noise_scale,
                                     num_classes=args.num_classes).items() if v is not None}
    return dataclasses.replace(cfg, **changes)


def load_model(args, device, dtype):
    if args.lora_rank:
        raise DlmarchError("--lora-rank (peft) does not apply to L2D; its adapter is --adapter lora / --l2d-lora-rank")
    if args.grad_checkpointing:
        raise DlmarchError("--grad-checkpointing does not apply to L2D: its main path runs without gradient, "
                           "and its diffusion blocks are not checkpointed")
    if getattr(args, "distributed", "ddp") == "fsdp":
        raise DlmarchError("L2D trains with --distributed ddp (its blocks share the main path's norms)")
    if args.init:
        return L2DModel.from_pretrained(args.init, dtype=dtype, device=device, main_path=args.model)
    from dlmarch.registry import load_pretrained

    overrides = {"attn_backend": args.attn_backend} if args.attn_backend else {}
    main = load_pretrained(args.model, dtype=dtype, device=device, **overrides)
    if getattr(main, "kind", None) == "l2d":
        raise DlmarchError(f"{args.model}: an L2D checkpoint; pass its main path as --model and this directory "
                           "as --init to continue training it")
    torch_seed = args.seed
    model = L2DModel.from_main(main, l2d_config(args, main.config.hidden_size), seed=torch_seed)
    model.main_source = str(args.model)
    return model


def objective(ctx):
    return partial(l2d, use_classes=bool(ctx.model.config.num_classes))


def main(argv=None) -> int:
    return run("l2d", __doc__, add_options, objective, argv, needs_mask=False, model_loader=load_model)


if __name__ == "__main__":
    sys.exit(main())
