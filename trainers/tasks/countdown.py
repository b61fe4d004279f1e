"""Countdown (card 8): reach the target with + - * / using exactly the given numbers, each once.

The generator builds solvable instances from a random expression over the numbers (3 or 4 of
them); the verifier accepts an expression (in <answer>, or the last \\boxed{}) that uses exactly the
given numbers and evaluates within 1e-5 of the target. Expressions are evaluated exactly by our
own arithmetic parser, never by Python's eval.
"""

from __future__ import annotations

import itertools
import random
from fractions import Fraction

from .common import FORMAT_INSTRUCTIONS, Task, answer_tag, arithmetic, boxed_all

_OPS = ("+", "-", "*", "/")


def _combine(a: tuple[Fraction, str], b: tuple[Fraction, str], op: str):
    (x, ex), (y, ey) = a, b
    if op == "+":
        return x + y, f"({ex} + {ey})"
    if op == "-":
        return x - y, f"({ex} - {ey})"
    if op == "*":
        return x * y, f"({ex} * {ey})"
    if y == 0:
        return None
    return x / y, f"({ex} / {ey})"


def _unwrap(expr: str) -> str:
    """Drop the outer parentheses _combine puts around every result."""
    return expr[1:-1] if expr.startswith("(") else expr


def solve(numbers: list[int], target: int) -> str | None:
    """An expression reaching target with every number once, or None (exhaustive search)."""
    def rec(items):
        if len(items) == 1:
            value, expr = items[0]
            return _unwrap(expr) if value == target else None
        for i, j in itertools.permutations(range(len(items)), 2):
            rest = [items[k] for k in range(len(items)) if k not in (i, j)]
            for op in _OPS:
                c = _combine(items[i], items[j], op)
                if c is not None:
                    found = rec(rest + [c])
                    if found:
                        return found
        return None

    return rec([(Fraction(n), str(n)) for n in numbers])


class Countdown(Task):
    name = "countdown"
    required = ("numbers", "target")
    system_prompt = ("Use each of the given numbers exactly once, with + - * / and parentheses, to write an "
                     "expression equal to the target. The answer is the expression alone. " + FORMAT_INSTRUCTIONS)

    def __init__(self, sizes: tuple[int, ...] = (3, 4), max_number: int = 50, max_target: int = 200,
                 with_system_prompt: bool = True):
        self.sizes, self.max_number, self.max_target = sizes, max_number, max_target
        if not with_system_prompt:
            self.system_prompt = None

    def generate(self, n: int, seed: int) -> list[dict]:
        rng = random.Random(seed)
        rows = []
        while len(rows) < n:
            numbers = [rng.randint(1, self.max_number) for _ in range(rng.choice(self.sizes))]
            items = [(Fraction(x), str(x)) for x in numbers]
            rng.shuffle(items)
            while len(items) > 1:
                a, b = items.pop(), items.pop()
                c = _combine(a, b, rng.choice(_OPS))
                if c is None:
                    break
                items.append(c)
            if len(items) != 1:
                continue
            value, expr = items[0]
            if value.denominator != 1 or not 0 < value <= self.max_target:
                continue
            rows.append({"numbers": numbers, "target": int(value), "solution": _unwrap(expr)})
        return rows

    def question(self, row: dict) -> str:
        return f"Numbers: {', '.join(map(str, row['numbers']))}. Target: {row['target']}."

    def score(self, generation: str, row: dict) -> dict:
        expr = answer_tag(generation)
        if expr is None:
            boxed = boxed_all(generation)
            expr = boxed[-1] if boxed else None
        if expr is None:
            return {"correct": False, "reason": "no answer", "answer": None}
        expr = expr.split("=")[0]  # "1 + 2 = 3" names the expression on the left
        value, used = arithmetic(expr)
        if value is None:
            return {"correct": False, "reason": "not an arithmetic expression", "answer": expr}
        if sorted(used) != sorted(int(x) for x in row["numbers"]):
            return {"correct": False, "reason": "numbers differ from the given ones", "answer": expr}
        ok = abs(float(value) - float(row["target"])) < 1e-5
        return {"correct": ok, "reason": "" if ok else "wrong value", "answer": expr}
