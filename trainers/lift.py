"""`python -m trainers.lift`: LIFT, learnability-informed masking (arXiv 2605.22939); LIFT-3 or LIFT-2."""

from __future__ import annotations

import sys
from functools import partial

from .cli import run
from .objectives.lift import COMPONENT_FROM, lift


def add_options(p):
    g = p.add_argument_group("lift")
    g.add_argument("--lift-variant", choices=["lift3", "lift2"], default="lift3")
    g.add_argument("--lift-h", type=float, default=3.0, help="LIFT-3's H: thresholds 1/H and 1 - 1/H on t")
    g.add_argument("--lift-component-from", choices=COMPONENT_FROM, default="batch",
                   help="batch: one component per micro-batch from its mean t (the reference); "
                        "document: each document's own t (a 1/3 mixture whatever the batch size)")


def objective(ctx):
    if ctx.args.lift_h <= 2 and ctx.args.lift_variant == "lift3":
        raise ValueError(f"--lift-h must exceed 2 (thresholds 1/H < 1 - 1/H), found {ctx.args.lift_h}")
    return partial(lift, mask_id=ctx.mask_id, variant=ctx.args.lift_variant, h=ctx.args.lift_h,
                   component_from=ctx.args.lift_component_from)


def main(argv=None) -> int:
    return run("lift", __doc__, add_options, objective, argv)


if __name__ == "__main__":
    sys.exit(main())
