"""`python -m trainers.gift`: GIFT, entropy-guided per-token masking rates (card 4)."""

from __future__ import annotations

import sys
from functools import partial

from .cli import run
from .objectives.gift import gift
from .objectives.sft import NORMALISERS


def add_options(p):
    g = p.add_argument_group("gift")
    g.add_argument("--normaliser", choices=NORMALISERS, default="masked",
                   help="masked (the GIFT re-implementation), answer_length (LLaDA) or response (d1)")


def objective(ctx):
    return partial(gift, mask_id=ctx.mask_id, normaliser=ctx.args.normaliser)


def main(argv=None) -> int:
    return run("gift", __doc__, add_options, objective, argv)


if __name__ == "__main__":
    sys.exit(main())
