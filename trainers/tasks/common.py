"""What every task shares: the answer format, answer extraction, safe arithmetic, the task protocol."""

from __future__ import annotations

import ast
import operator
import re
from fractions import Fraction
from pathlib import Path

from dlmarch.config import jsonl_rows
from dlmarch.errors import DlmarchError

REASONING_PREFIX = "<reasoning>"  # card 8: appended after the chat template's generation prompt

FORMAT_INSTRUCTIONS = (
    "Respond in the following format:\n<reasoning>\nyour reasoning\n</reasoning>\n<answer>\nyour answer\n</answer>"
)


def answer_tag(text: str) -> str | None:
    """Content of the last <answer>...</answer> (or of an unclosed final <answer>), stripped."""
    found = re.findall(r"<answer>(.*?)</answer>", text, re.DOTALL)
    if found:
        return found[-1].strip()
    tail = text.rsplit("<answer>", 1)
    return tail[1].strip() if len(tail) == 2 else None


def boxed_all(text: str) -> list[str]:
    """Contents of every \\boxed{...} (balanced braces) and \\boxed x, in order."""
    out = []
    i = 0
    while True:
        i = text.find("\\boxed", i)
        if i < 0:
            return out
        j = i + len("\\boxed")
        if j < len(text) and text[j] == "{":
            depth, k = 0, j
            while k < len(text):
                if text[k] == "{":
                    depth += 1
                elif text[k] == "}":
                    depth -= 1
                    if depth == 0:
                        break
                k += 1
            if depth == 0:
                out.append(text[j + 1:k])
            i = k + 1 if depth == 0 else j
        elif text[j:j + 1] == " ":
            m = re.match(r" ([^\s$]+)", text[j:])
            if m:
                out.append(m.group(1))
            i = j + 1
        else:
            i = j


_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}


def arithmetic(expr: str) -> tuple[Fraction | None, list[int]]:
    """Exact value of an expression of integers, + - * / and parentheses (no names, no calls, no
    powers), and the integers it uses in order. (None, numbers) if it is not such an expression or
    divides by zero."""
    expr = expr.replace("×", "*").replace("÷", "/").replace("\\times", "*").replace("\\div", "/").replace("\\cdot", "*")
    try:
        tree = ast.parse(expr.strip(), mode="eval")
    except (SyntaxError, ValueError):
        return None, []
    numbers: list[int] = []

    def ev(node):
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant) and type(node.value) is int:
            numbers.append(node.value)
            return Fraction(node.value)
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            a, b = ev(node.left), ev(node.right)
            if isinstance(node.op, ast.Div) and b == 0:
                raise ZeroDivisionError
            return _OPS[type(node.op)](a, b)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return -ev(node.operand)
        raise ValueError("not arithmetic")

    try:
        return ev(tree), numbers
    except (ValueError, ZeroDivisionError, RecursionError):
        return None, numbers


def read_jsonl(path: str | Path, required: tuple[str, ...], task: str) -> list[dict]:
    """Rows of a task's JSONL file; each row must have the `required` keys."""
    rows = []
    for n, row, error in jsonl_rows(path):
        if error:
            raise DlmarchError(error)
        missing = [k for k in required if not isinstance(row, dict) or k not in row]
        if missing:
            raise DlmarchError(f"{path}: line {n}: a {task} row needs {list(required)}, missing {missing}")
        rows.append(row)
    if not rows:
        raise DlmarchError(f"{path}: no rows")
    return rows


class Task:
    """A task: prompts, references, scoring. Subclasses define the pieces.

    score(generation, row) -> dict with at least "correct" (bool); summarize(scores) -> the metrics
    of a run, with `primary` naming the one reported in tables.
    """

    name = ""
    primary = "accuracy"
    required: tuple[str, ...] = ()
    system_prompt: str | None = None

    def load(self, path: str | Path) -> list[dict]:
        return read_jsonl(path, self.required, self.name)

    def generate(self, n: int, seed: int) -> list[dict]:
        raise DlmarchError(f"the {self.name} task has no generator; pass --data FILE.jsonl")

    def question(self, row: dict) -> str:
        raise NotImplementedError

    def response(self, row: dict) -> str:
        """The training target of a generated row: card 8's format around its "solution"."""
        return f"<reasoning></reasoning><answer>{row['solution']}</answer>"

    def messages(self, row: dict) -> list[dict]:
        msgs = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        return msgs + [{"role": "user", "content": self.question(row)}]

    def score(self, generation: str, row: dict) -> dict:
        raise NotImplementedError

    def summarize(self, scores: list[dict]) -> dict:
        n = len(scores)
        return {"n": n, "accuracy": sum(s["correct"] for s in scores) / max(n, 1)}
