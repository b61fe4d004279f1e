"""Validation loss during training: `--eval-data FILE --eval-every N`.

The objective itself (the same loss the run trains, its normaliser included) on a held-out set,
in eval mode and without gradients, with noise drawn from generators seeded by a constant and the
batch index only (not --seed, not the step): the same weights give the same number at any step of
any run, so curves of different runs and steps are comparable, as LLaDA-style likelihood estimates
with a fixed Monte-Carlo sample are. Batches are the examples in file order, --batch-size at a time
(the last one may be smaller), laid out like the training batches (padded or packed).

eval_loss = sum of the batches' loss sums / sum of their denominators, as one training step's loss
is over its micro-batches. Every rank evaluates the whole set (the same number of forwards on every
rank, which FSDP needs; the set is small); rank 0 writes it. A stateful objective (GIFT's cache of
probed betas, keyed by row number) gets its state back after validation, so held-out rows never
stand in for training rows.
"""

from __future__ import annotations

import copy
import math

import torch

from .data import Example, pack_rows, packed_batch, pad_batch

EVAL_SEED = 20_250_214  # constant on purpose (see the module docstring)


def eval_generator(index: int, device) -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed(EVAL_SEED * 1_000_003 + index)
    return g


class Validation:
    def __init__(self, examples: list[Example], args, pad_id: int):
        self.args, self.pad_id = args, pad_id
        if args.pack:
            rows = pack_rows(examples, args.max_length)
            self.batches = [packed_batch(rows[i:i + args.batch_size], args.max_length, pad_id)
                            for i in range(0, len(rows), args.batch_size)]
        else:
            length = args.max_length if args.pad_to == "max" else None
            self.batches = [pad_batch(examples[i:i + args.batch_size], pad_id, args.eos_pad, length)
                            for i in range(0, len(examples), args.batch_size)]
        self.examples = len(examples)

    @torch.no_grad()
    def loss(self, model, objective, device, autocast) -> dict:
        """{"eval_loss", "eval_examples"} of `model` (the module the objective calls)."""
        was_training = model.training
        model.eval()
        total, denom = 0.0, 0.0
        state = copy.deepcopy(vars(objective))
        try:
            for i, batch in enumerate(self.batches):
                with autocast():
                    res = objective(model, batch.to(device), eval_generator(i, device))
                total += float(res.loss_sum)
                denom += res.denom
        finally:
            model.train(was_training)
            vars(objective).clear()
            vars(objective).update(state)
        return {"eval_loss": total / denom if denom > 0 else math.nan, "eval_examples": self.examples}
