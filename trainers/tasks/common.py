"""What every task shares: d1's prompt layout, data loading, the task protocol, pass@k."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

from dlmarch.config import jsonl_rows, read_text
from dlmarch.errors import DlmarchError
from dlmarch.prompts import render_chat

from .d1 import user_message

REASONING_PREFIX = "<reasoning>"  # d1: appended after the chat template's generation prompt


def read_jsonl(path: str | Path, task: str, formats: tuple[tuple[str, ...], ...], check=None) -> list[dict]:
    """Rows of a task's JSONL file; each row must have the keys of one of `formats`, and `check(row)`
    (the task's `check_row`) find nothing wrong with their values."""

    def problem(row) -> str | None:
        if not isinstance(row, dict) or not any(all(k in row for k in keys) for keys in formats):
            found = sorted(row) if isinstance(row, dict) else type(row).__name__
            wanted = " or ".join(str(list(k)) for k in formats)
            return f"a {task} row needs {wanted}, found {found}"
        return check(row) if check is not None else None

    return checked_jsonl(path, problem, "rows")


def checked_jsonl(path: str | Path, problem, what: str) -> list[dict]:
    """Every record of a JSONL file, the first bad one an error of one line naming the file and line:
    a line that does not parse, or a record for which `problem(record)` returns a message (None:
    nothing wrong). A file without records is refused too ("no `what`")."""
    out = []
    for n, record, error in jsonl_rows(path):
        if error:
            raise DlmarchError(error)
        message = problem(record)
        if message:
            raise DlmarchError(f"{path}: line {n}: {message}")
        out.append(record)
    if not out:
        raise DlmarchError(f"{path}: no {what}")
    return out


def read_csv(path: str | Path, task: str, columns: tuple[str, ...]) -> list[dict]:
    """Rows of a CSV file with a header naming at least `columns`; every value kept as text."""
    text = read_text(path, f"{task} CSV file")
    reader = csv.DictReader(io.StringIO(text, newline=""))
    try:
        missing = [c for c in columns if c not in (reader.fieldnames or [])]
        if missing:
            raise DlmarchError(f"{path}: line 1: a {task} CSV needs columns {list(columns)}, missing {missing}")
        rows = list(reader)
    except csv.Error as e:
        raise DlmarchError(f"{path}: line {reader.line_num}: invalid CSV ({e})") from None
    if not rows:
        raise DlmarchError(f"{path}: no rows")
    return rows


def describe(value) -> str:
    """A value as a message shows it: its repr, cut short."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def wrong(key: str, expected: str, value) -> str:
    return f"{key} must be {expected}, found {describe(value)}"


def is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of Chen et al. 2021 ("Evaluating Large Language Models Trained on Code", eq. 1):
    1 - C(n-c, k) / C(n, k), the chance that k of the n samples, drawn without replacement, hold a
    correct one; computed as a product to stay exact for large n."""
    if k > n:
        raise ValueError(f"pass@{k} needs at least {k} samples per item, found {n}")
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


class Task:
    """A task: prompts, references, scoring. Subclasses define the pieces.

    score(generation, row) -> dict with at least "correct" (bool), d1's verdict; summarize(records)
    -> the metrics of a run, with `primary` naming the one reported in tables. `from_d1(item)` turns
    an item of a d1 generation file into a row.
    """

    name = ""
    primary = "accuracy"
    system_prompt: str | None = None

    def load(self, path: str | Path) -> list[dict]:
        raise NotImplementedError

    def generate(self, n: int, seed: int) -> list[dict]:
        raise DlmarchError(f"the {self.name} task has no generator; pass --data FILE")

    def question(self, row: dict) -> str:
        raise NotImplementedError

    def response(self, row: dict) -> str:
        """The training target of a generated row: d1's answer format around its "solution"."""
        return f"<reasoning></reasoning><answer>{row['solution']}</answer>"

    def messages(self, row: dict) -> list[dict]:
        """d1's layout: one user message, the system prompt and the question joined by a blank line."""
        return [{"role": "user", "content": user_message(self.system_prompt, self.question(row))}]

    def prompt_text(self, tokenizer, row: dict, reasoning_prefix: bool = True) -> str:
        """The prompt string d1 feeds the model: chat template with its generation prompt, then <reasoning>."""
        text = render_chat(tokenizer, self.messages(row), add_generation_prompt=True)
        return text + (REASONING_PREFIX if reasoning_prefix else "")

    def score(self, generation: str, row: dict) -> dict:
        raise NotImplementedError

    def reference_text(self, row: dict) -> str | None:
        """The gold answer as text, for math-verify; None where the task has none (Sudoku, Countdown)."""
        return None

    def from_d1(self, item: dict) -> dict:
        raise NotImplementedError

    def check_row(self, row: dict) -> str | None:
        """What is wrong with the values of a row (its keys are checked by the reader), or None: the
        row of a data file, or the reference of a generation being re-scored."""
        return None

    def summarize(self, records: list[dict]) -> dict:
        n = len(records)
        return {"n": n, "accuracy": sum(bool(r["correct"]) for r in records) / max(n, 1)}
