"""Sudoku 4x4 (card 8): a generator of puzzles with exactly one solution, and the cell-accuracy scorer.

A puzzle is a 16-character string, row by row, '0' for an empty cell. The answer is the solved
16-digit grid inside <answer>...</answer>. The reported metric is the accuracy over the puzzle's
empty cells (not solved puzzles); the solved rate is reported beside it.
"""

from __future__ import annotations

import random
from functools import lru_cache

from .common import FORMAT_INSTRUCTIONS, Task, answer_tag

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
    required = ("puzzle", "solution")
    system_prompt = ("Solve the 4x4 Sudoku. The puzzle is 16 digits read row by row, 0 for an empty cell; fill the "
                     "empty cells with 1-4 so that every row, column and 2x2 box holds 1-4 once. The answer is the "
                     "complete 16-digit grid. " + FORMAT_INSTRUCTIONS)

    def __init__(self, min_empty: int = 6, max_empty: int = 10, with_system_prompt: bool = True):
        self.min_empty, self.max_empty = min_empty, max_empty
        if not with_system_prompt:
            self.system_prompt = None

    def generate(self, n: int, seed: int) -> list[dict]:
        rng = random.Random(seed)
        rows = []
        for _ in range(n):
            puzzle, solution = make_puzzle(rng, rng.randint(self.min_empty, self.max_empty))
            rows.append({"puzzle": puzzle, "solution": solution})
        return rows

    def question(self, row: dict) -> str:
        return f"Sudoku puzzle: {row['puzzle']}"

    def score(self, generation: str, row: dict) -> dict:
        puzzle, solution = row["puzzle"], row["solution"]
        answer = answer_tag(generation)
        digits = "".join(ch for ch in (answer or "") if not ch.isspace())
        empty = [i for i, ch in enumerate(puzzle) if ch == "0"]
        correct_cells = sum(1 for i in empty if i < len(digits) and digits[i] == solution[i])
        solved = digits == solution
        return {"correct": solved, "correct_cells": correct_cells, "empty_cells": len(empty),
                "cell_accuracy": correct_cells / max(len(empty), 1), "answer": answer}

    def summarize(self, scores: list[dict]) -> dict:
        cells = sum(s["empty_cells"] for s in scores)
        return {"n": len(scores), "cell_accuracy": sum(s["correct_cells"] for s in scores) / max(cells, 1),
                "solved_rate": sum(s["correct"] for s in scores) / max(len(scores), 1)}
