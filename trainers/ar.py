"""`python -m trainers.ar`: autoregressive SFT of a causal LM (Llama, Qwen2) on the shared loop.

Plain next-token cross-entropy on response tokens (full fine-tuning or LoRA with --lora-rank), the
baseline L2D is measured against. Such a model decodes with `dlmarch.sampling.generate_causal`
(`python -m dlmarch.generate`, trainers.evaluate).
"""

from __future__ import annotations

import sys

from .cli import run
from .objectives.ar import ar


def add_options(p):
    # A causal LM learns one EOS; padding is hidden and carries no loss.
    p.set_defaults(eos_pad="exclude")


def objective(ctx):
    if getattr(ctx.model, "kind", None) != "causal":
        from dlmarch.sampling.dispatch import family_name

        raise ValueError(f"{ctx.args.model}: a {family_name(ctx.model)} model is not causal; "
                         "autoregressive SFT trains Llama/Qwen2 decoders")
    return ar


def main(argv=None) -> int:
    return run("ar", __doc__, add_options, objective, argv, needs_mask=False)


if __name__ == "__main__":
    sys.exit(main())
