"""`python -m trainers.sft`: masked-diffusion SFT (docs/masked-diffusion-sft.md) on the shared loop."""

from __future__ import annotations

import sys
from functools import partial

from .cli import run
from .objectives.sft import NORMALISERS, WEIGHTINGS, sft


def add_options(p):
    g = p.add_argument_group("sft")
    g.add_argument("--normaliser", choices=NORMALISERS, default="answer_length",
                   help="answer_length (LLaDA), response (d1, LIFT) or masked (GIFT re-implementation)")
    g.add_argument("--cart-p", type=float, default=None, help="CART weighting of masked tokens (e.g. 0.1; off by default)")
    g.add_argument("--weighting", choices=WEIGHTINGS, default="inverse_t",
                   help="inverse_t: CE / p (masked diffusion); classical: no 1/p, each document's mean CE over its "
                        "masked tokens (Blockwise SFT's train_fullseq.py baseline; --normaliser does not apply)")


def objective(ctx):
    return partial(sft, mask_id=ctx.mask_id, normaliser=ctx.args.normaliser, cart_p=ctx.args.cart_p,
                   weighting=ctx.args.weighting)


def main(argv=None) -> int:
    return run("sft", __doc__, add_options, objective, argv)


if __name__ == "__main__":
    sys.exit(main())
