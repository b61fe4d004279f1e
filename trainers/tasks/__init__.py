"""Evaluation tasks on d1's protocol: Sudoku 4x4 and Countdown (d1's test sets or generated), GSM8K and MATH-500."""

from .common import REASONING_PREFIX, Task, pass_at_k
from .countdown import Countdown
from .math import GSM8K, Math500
from .sudoku import Sudoku

TASKS = {"sudoku": Sudoku, "countdown": Countdown, "gsm8k": GSM8K, "math500": Math500}


def get_task(name: str, **kw) -> Task:
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r} (known: {', '.join(TASKS)})")
    return TASKS[name](**kw)


__all__ = ["TASKS", "get_task", "Task", "REASONING_PREFIX", "Sudoku", "Countdown", "GSM8K", "Math500", "pass_at_k"]
