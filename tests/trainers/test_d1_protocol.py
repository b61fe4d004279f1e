"""d1's evaluation protocol beyond its parsers: the items it scores (dllm-reasoning/d1 eval/eval.py)."""

import json
from pathlib import Path

from trainers.tasks.countdown import Countdown
from trainers.tasks.d1 import d1_items
from trainers.tasks.sudoku import Sudoku

D1_SUDOKU = Path(__file__).resolve().parents[1] / "fixtures" / "d1-sudoku"


def test_sudoku_from_d1s_csv_is_the_item_set_d1_published():
    """d1 scores 256 of its 500 puzzles (np.random.seed(42), np.random.choice); its published baseline
    generations (seven processes, process r taking items r, r + 7, ...) hold exactly ours, in our order."""
    ours = [r["puzzle"] for r in Sudoku().load(D1_SUDOKU / "4x4_test_sudoku.csv")]
    published = json.loads((D1_SUDOKU / "published_items.json").read_text())["puzzles"]
    assert len(ours) == 256
    for rank, items in enumerate(published):
        assert items == ours[rank::7], rank


def test_countdown_from_d1s_file_takes_d1s_order(tmp_path):
    """d1's Countdown file has 256 rows and d1 draws 256 of them: every row, in numpy's permuted order."""
    rows = [{"input": f"{i},{i + 1},{i + 2}", "output": str(3 * i + 3)} for i in range(256)]
    path = tmp_path / "countdown_cd3_test.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    import numpy as np

    np.random.seed(42)  # d1: init_seed(42), then GSM8KDataset's subsample
    order = np.random.choice(256, 256, replace=False)
    got = Countdown().load(path)
    assert [r["target"] for r in got] == [int(rows[i]["output"]) for i in order]
    assert d1_items(list(range(10)), "gsm8k") == list(range(10))  # GSM8K, MATH-500: every row
