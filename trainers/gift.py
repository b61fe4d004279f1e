"""`python -m trainers.gift`: GIFT, entropy-guided per-token masking rates (arXiv 2509.20863)."""

from __future__ import annotations

import sys

from .cli import run
from .data import trains_padding
from .objectives.gift import GIFTObjective
from .objectives.sft import NORMALISERS
from .options import at_least, limited


def add_options(p):
    g = p.add_argument_group("gift")
    g.add_argument("--normaliser", choices=NORMALISERS, default="masked",
                   help="masked (the GIFT re-implementation), answer_length (LLaDA) or response (d1)")
    limited(g.add_argument("--probe-every", type=int, default=1,
                           help="re-probe each example's entropies every K epochs, reusing them in between "
                                "(an approximation that makes the probe cost 1/K; 1 = the paper's GIFT exactly)"),
            at_least(1))


def objective(ctx):
    # The re-implementation's pad id: the tokenizer's pad token (EOS for LLaDA), else EOS.
    pad_id = ctx.tokenizer.pad_token_id if ctx.tokenizer.pad_token_id is not None else ctx.eos_id
    return GIFTObjective(ctx.mask_id, ctx.args.normaliser, ctx.args.probe_every, pad_id=pad_id,
                         train_padding=trains_padding(ctx.args.eos_pad))


def main(argv=None) -> int:
    return run("gift", __doc__, add_options, objective, argv)


if __name__ == "__main__":
    sys.exit(main())
