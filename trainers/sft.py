"""`python -m trainers.sft`: masked-diffusion SFT (docs/masked-diffusion-sft.md) on the shared loop."""

from __future__ import annotations

import sys
from functools import partial

from .cli import run
from .objectives.sft import NORMALISERS, WEIGHTINGS, sft
from .options import limited, positive


def add_options(p):
    g = p.add_argument_group("sft")
    g.add_argument("--normaliser", choices=NORMALISERS, default="answer_length",
                   help="answer_length (LLaDA), response (d1, LIFT) or masked (GIFT re-implementation)")
    limited(g.add_argument("--cart-p", type=float, default=None,
                   help="CART's geometric p. With --weighting inverse_t: LIFT's CART, the CART weight x 1/p (e.g. 0.1; "
                        "off by default); with --weighting dream: Dream's CART without 1/p (default 0.3)"), positive)
    g.add_argument("--weighting", choices=WEIGHTINGS, default="inverse_t",
                   help="inverse_t: CE / p (masked diffusion); classical: no 1/p, each document's mean CE over its "
                        "masked tokens (Blockwise SFT's train_fullseq.py baseline); dream: Dream's recipe, CART "
                        "weights without 1/p over the response-token count (dllm's Dream SFT; use with --eos-pad hidden "
                        "--response-cutoff batch, configs/sft-dream.yaml). --normaliser applies to inverse_t only")


def objective(ctx):
    return partial(sft, mask_id=ctx.mask_id, normaliser=ctx.args.normaliser, cart_p=ctx.args.cart_p,
                   weighting=ctx.args.weighting)


def main(argv=None) -> int:
    return run("sft", __doc__, add_options, objective, argv)


if __name__ == "__main__":
    sys.exit(main())
