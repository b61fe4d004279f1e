"""`python -m trainers.blockwise`: Blockwise SFT (arXiv 2508.19529), or every block in one pass (--all-blocks).

--all-blocks trains a different conditional: the future is cut off (block-causal attention), not
masked. Decode such a model with generate(block_causal=True) / `--block-causal`, with block_length
equal to --block-size.
"""

from __future__ import annotations

import sys
from functools import partial

from .cli import run
from .objectives.blockwise import ALL_BLOCKS_SHIFTED, all_blocks, blockwise
from .objectives.common import predicts_next_token
from .objectives.protocol import FunctionObjective
from .options import at_least, fraction, limited


def add_options(p):
    g = p.add_argument_group("blockwise")
    limited(g.add_argument("--block-size", type=int, default=32, help="match the sampler's block_length"), at_least(1))
    g.add_argument("--all-blocks", action="store_true", help="every block in one block-causal pass (see above)")
    limited(g.add_argument("--prefix-mask-rate", type=float, default=0.0, help="ablation: noise on the clean prefix"), fraction)
    limited(g.add_argument("--suffix-mask-prob", type=float, default=1.0, help="ablation: probability of masking the suffix"), fraction)


def objective(ctx):
    a = ctx.args
    if a.block_size <= 0:
        raise ValueError(f"--block-size must be positive, found {a.block_size}")
    if a.all_blocks:
        if predicts_next_token(ctx.model):
            raise ValueError(ALL_BLOCKS_SHIFTED)
        if a.prefix_mask_rate or a.suffix_mask_prob != 1.0:
            raise ValueError("--prefix-mask-rate and --suffix-mask-prob are ablations of the reference mode, not of --all-blocks")
        fn = partial(all_blocks, mask_id=ctx.mask_id, block_size=a.block_size)
    else:
        fn = partial(blockwise, mask_id=ctx.mask_id, block_size=a.block_size, seed=a.seed,
                     prefix_mask_rate=a.prefix_mask_rate, suffix_mask_prob=a.suffix_mask_prob)
    return FunctionObjective(fn, {"block_size": a.block_size, "all_blocks": a.all_blocks,
                                  "sampler": "generate(block_causal=True)" if a.all_blocks else "generate()"})


def main(argv=None) -> int:
    return run("blockwise", __doc__, add_options, objective, argv)


if __name__ == "__main__":
    sys.exit(main())
