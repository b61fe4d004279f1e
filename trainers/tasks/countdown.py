"""Countdown on d1's protocol (dllm-reasoning/d1 `eval/countdown.py`, scored as its
`eval/parse_and_get_acc.py` scores it): reach the target with + - * / using each given number once.

Rows: d1's test set as it ships ({"input": "30,100,93", "output": "23"}) or the project's generated
rows ({"numbers": [...], "target": n, "solution": expr}), from 3 or 4 numbers built by a random
expression. The verdict is d1's: the last `\\boxed{}` (the whole generation when there is none), its
integers exactly the given numbers, its value within 1e-5 of the target. Expressions are evaluated
by walking their syntax tree, never by eval (see `d1.countdown_value`).
"""

from __future__ import annotations

import itertools
import math
import random
import re
from fractions import Fraction
from pathlib import Path

from .common import Task, is_int, read_jsonl, wrong
from .d1 import COUNTDOWN_SYSTEM_PROMPT, countdown_correct, countdown_expression, countdown_value, d1_items, uses_exactly

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
    system_prompt = COUNTDOWN_SYSTEM_PROMPT

    def __init__(self, sizes: tuple[int, ...] = (3, 4), max_number: int = 50, max_target: int = 200,
                 with_system_prompt: bool = True):
        self.sizes, self.max_number, self.max_target = sizes, max_number, max_target
        if not with_system_prompt:
            self.system_prompt = None

    def load(self, path: str | Path) -> list[dict]:
        rows = read_jsonl(path, self.name, (("numbers", "target"), ("input", "output")), self.check_row)
        if rows and all("numbers" not in r for r in rows):  # d1's file (countdown_cd3_test.jsonl): its 256 items
            rows = d1_items(rows, self.name)
        return [r if "numbers" in r else {"numbers": [int(x) for x in str(r["input"]).split(",")],
                                          "target": int(r["output"])} for r in rows]

    def check_row(self, row: dict) -> str | None:
        """Our rows: a list of integers and an integer target. d1's: "30,100,93" and "23" (or 23)."""
        if "numbers" in row:
            numbers, target = row["numbers"], row.get("target")
            if not isinstance(numbers, list) or not numbers or not all(is_int(x) for x in numbers):
                return wrong("numbers", "a non-empty list of integers", numbers)
            return None if is_int(target) else wrong("target", "an integer", target)
        given, output = row.get("input"), row.get("output")
        if not isinstance(given, str) or not re.fullmatch(r"\s*\d+\s*(,\s*\d+\s*)*", given):
            return wrong("input", 'comma-separated integers ("30,100,93")', given)
        if not (is_int(output) or (isinstance(output, str) and output.strip().isdigit())):
            return wrong("output", "an integer", output)
        return None

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
        return f"Numbers: {[int(x) for x in row['numbers']]}\nTarget: {int(row['target'])}"

    def response(self, row: dict) -> str:
        return f"<reasoning></reasoning><answer>\\boxed{{{row['solution']}}}</answer>"

    def score(self, generation: str, row: dict) -> dict:
        numbers, target = row["numbers"], row["target"]
        expr = countdown_expression(generation)
        if not uses_exactly(expr, numbers):
            return {"correct": False, "reason": "numbers differ from the given ones", "answer": expr, "value": None}
        value = countdown_value(expr)
        ok = countdown_correct(value, target)
        reason = "" if ok else ("not an arithmetic expression" if value == math.inf else "wrong value")
        finite = isinstance(value, (int, float)) and math.isfinite(value)
        return {"correct": ok, "reason": reason, "answer": expr, "value": float(value) if finite else None}

    def from_d1(self, item: dict) -> dict:
        """d1's ground truth [numbers, target], else the numbers and target read from its question."""
        gt, question = item.get("ground_truth"), item.get("question", "")
        if isinstance(gt, list) and len(gt) == 2:
            return {"numbers": gt[0], "target": gt[1]}
        m = re.search(r"Numbers: \[([\d, ]+)\]", question, re.IGNORECASE)
        t = re.search(r"Target: (\d+)", question, re.IGNORECASE)
        return {"numbers": [int(x.strip()) for x in m.group(1).split(",")] if m else [],
                "target": int(t.group(1)) if t else None}
