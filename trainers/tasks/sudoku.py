"""Sudoku 4x4 on d1's protocol (dllm-reasoning/d1 `eval/sudoku.py`, scored as its
`eval/parse_and_get_acc.py` scores it), and a generator of puzzles with exactly one solution.

A puzzle is a 16-character string, row by row, '0' for an empty cell. Rows: d1's CSV as it ships
(`Puzzle,Solution`) or JSONL {"puzzle", "solution"} (the project's generated sets). The answer is
read with d1's five patterns; the reported metric is d1's: right empty cells over empty cells,
summed over the set (not solved puzzles; the solved rate is reported beside it).
"""

from __future__ import annotations

import random
from functools import lru_cache
from pathlib import Path

from dlmarch.errors import DlmarchError

from .common import Task, read_csv, read_jsonl, wrong
from .d1 import D1_END_MARKERS, SUDOKU_SYSTEM_PROMPT, d1_items, sudoku_answer, sudoku_cells, sudoku_puzzle

BOXES = [[(r, c) for r in range(br, br + 2) for c in range(bc, bc + 2)] for br in (0, 2) for bc in (0, 2)]


def _candidates(grid: list[int], i: int) -> list[int]:
    r, c = divmod(i, 4)
    used = {grid[r * 4 + k] for k in range(4)} | {grid[k * 4 + c] for k in range(4)}
    br, bc = (r // 2) * 2, (c // 2) * 2
    used |= {grid[(br + a) * 4 + bc + b] for a in range(2) for b in range(2)}
    return [d for d in (1, 2, 3, 4) if d not in used]


def count_solutions(puzzle: str, limit: int = 2) -> int:
    """Number of solutions of a puzzle, counting up to `limit`."""
    grid = [int(ch) for ch in puzzle]

    def solve() -> int:
        try:
            i = grid.index(0)
        except ValueError:
            return 1
        total = 0
        for d in _candidates(grid, i):
            grid[i] = d
            total += solve()
            grid[i] = 0
            if total >= limit:
                break
        return total

    return solve()


@lru_cache(maxsize=1)
def all_grids() -> tuple[str, ...]:
    """Every solved 4x4 grid (there are 288)."""
    out = []
    grid = [0] * 16

    def fill(i):
        if i == 16:
            out.append("".join(map(str, grid)))
            return
        for d in _candidates(grid, i):
            grid[i] = d
            fill(i + 1)
        grid[i] = 0

    fill(0)
    return tuple(out)


def is_valid_solution(grid: str) -> bool:
    if len(grid) != 16 or set(grid) - set("1234"):
        return False
    g = [int(ch) for ch in grid]
    groups = [[r * 4 + c for c in range(4)] for r in range(4)] + [[r * 4 + c for r in range(4)] for c in range(4)]
    groups += [[r * 4 + c for r, c in box] for box in BOXES]
    return all(sorted(g[i] for i in grp) == [1, 2, 3, 4] for grp in groups)


def make_puzzle(rng: random.Random, empty: int) -> tuple[str, str]:
    """A puzzle with `empty` empty cells (fewer if uniqueness needs it) and its unique solution."""
    solution = rng.choice(all_grids())
    cells = list(solution)
    order = list(range(16))
    rng.shuffle(order)
    removed = 0
    for i in order:
        if removed == empty:
            break
        keep = cells[i]
        cells[i] = "0"
        if count_solutions("".join(cells)) == 1:
            removed += 1
        else:
            cells[i] = keep
    return "".join(cells), solution


class Sudoku(Task):
    name = "sudoku"
    primary = "cell_accuracy"
    system_prompt = SUDOKU_SYSTEM_PROMPT
    end_markers = D1_END_MARKERS  # the evaluation adds the model's own EOS/EoT text

    def __init__(self, min_empty: int = 6, max_empty: int = 10, with_system_prompt: bool = True):
        self.min_empty, self.max_empty = min_empty, max_empty
        if not with_system_prompt:
            self.system_prompt = None

    def load(self, path: str | Path) -> list[dict]:
        if not str(path).endswith(".csv"):
            return read_jsonl(path, self.name, (("puzzle", "solution"),), self.check_row)
        # d1's file (dataset/4x4_test_sudoku.csv): d1's 256 items, in its order
        rows = [{"puzzle": r["Puzzle"], "solution": r["Solution"], "line": n}
                for n, r in enumerate(read_csv(path, self.name, ("Puzzle", "Solution")), 2)]
        rows = d1_items(rows, self.name)
        for r in rows:
            line = r.pop("line")
            problem = self.check_row(r)
            if problem:
                raise DlmarchError(f"{path}: line {line}: {problem}")
        return rows

    def check_row(self, row: dict) -> str | None:
        for key in ("puzzle", "solution"):
            value = row.get(key)
            if not (isinstance(value, str) and len(value) == 16 and value.isascii() and value.isdigit()):
                return wrong(key, "16 digits", value)
        return None

    def generate(self, n: int, seed: int) -> list[dict]:
        rng = random.Random(seed)
        rows = []
        for _ in range(n):
            puzzle, solution = make_puzzle(rng, rng.randint(self.min_empty, self.max_empty))
            rows.append({"puzzle": puzzle, "solution": solution})
        return rows

    def question(self, row: dict) -> str:
        return f"Solve the following Sudoku puzzle: {row['puzzle']}\n"

    def score(self, generation: str, row: dict) -> dict:
        answer = sudoku_answer(generation, self.end_markers)
        right, empty = sudoku_cells(answer, row["puzzle"], row["solution"])
        return {"correct": answer == row["solution"], "correct_cells": right, "empty_cells": empty,
                "cell_accuracy": right / empty if empty else 0.0, "answer": answer}

    def from_d1(self, item: dict) -> dict:
        puzzle = sudoku_puzzle(item.get("question", ""))
        if puzzle is None:
            raise DlmarchError(f"a d1 Sudoku item whose question holds no 16-digit puzzle: {item.get('question', '')[:60]!r}")
        return {"puzzle": puzzle, "solution": item.get("ground_truth", "")}

    def summarize(self, records: list[dict]) -> dict:
        cells = sum(r["empty_cells"] for r in records)
        return {"n": len(records), "cell_accuracy": sum(r["correct_cells"] for r in records) / max(cells, 1),
                "solved_rate": sum(bool(r["correct"]) for r in records) / max(len(records), 1)}
