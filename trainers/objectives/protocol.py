"""What the training loop asks of an objective (the objective protocol).

An objective is called once per micro-batch, `objective(model, batch, generator) -> ObjectiveOutput`
(common.py), and the loop calls nothing else by name:

- `begin_step(step)` before the first micro-batch of each optimizer step (0-based): an objective
  that keeps work across steps (diffu-GRPO's rollouts, reused for mu steps) keys it on the step;
- `sync()` after every optimizer step: a stateful objective (GIFT's running betas) shares its state
  across ranks here;
- `state_dict()` / `load_state_dict(state)`: its state, saved with each checkpoint (as
  objective.safetensors when not empty) and restored on --resume;
- `training_info`: what the run's record (trainers/record.py) keeps about how it trained.

Most objectives are pure functions; `FunctionObjective` gives one the protocol (stateless).
"""

from __future__ import annotations

from typing import Callable

from torch import Tensor


class Objective:
    """Base class of the objective protocol: stateless, records nothing beyond the method's name."""

    training_info: dict = {}

    def __call__(self, model, batch, generator):
        raise NotImplementedError

    def begin_step(self, step: int) -> None:
        """Before the micro-batches of optimizer step `step`; nothing to do for most objectives."""

    def sync(self) -> None:
        """After each optimizer step; nothing to share for a stateless objective."""

    def state_dict(self) -> dict[str, Tensor]:
        return {}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        if state:
            raise ValueError(f"{type(self).__name__} is stateless; the checkpoint holds objective state {sorted(state)}")


class FunctionObjective(Objective):
    """A pure objective function (e.g. a functools.partial of sft) under the protocol."""

    def __init__(self, fn: Callable, training_info: dict | None = None):
        self.fn = fn
        self.training_info = dict(training_info or {})

    def __call__(self, model, batch, generator):
        return self.fn(model, batch, generator)


def as_objective(objective) -> Objective:
    """An objective factory's result under the protocol: an Objective as it is, a function wrapped."""
    return objective if isinstance(objective, Objective) else FunctionObjective(objective)


__all__ = ["Objective", "FunctionObjective", "as_objective"]
