"""Tasks (card 8): generators, scorers on hand-written generations, the evaluation command, the demo."""

import json
import subprocess
import sys

import pytest

from trainers.tasks import get_task
from trainers.tasks.countdown import solve
from trainers.tasks.math import math_equiv, normalize_math
from trainers.tasks.sudoku import all_grids, count_solutions, is_valid_solution


def test_every_generated_sudoku_has_exactly_one_solution():
    rows = get_task("sudoku").generate(300, seed=3)
    assert len(all_grids()) == 288
    for r in rows:
        assert count_solutions(r["puzzle"], limit=3) == 1
        assert is_valid_solution(r["solution"])
        assert all(p in ("0", s) for p, s in zip(r["puzzle"], r["solution"]))
        assert 6 <= r["puzzle"].count("0") <= 10


def test_sudoku_scorer():
    task = get_task("sudoku")
    row = {"puzzle": "0312010400201243", "solution": "4312213434211243"}  # 6 empty cells
    s = task.score("<reasoning>x</reasoning><answer>\n4312 2134\n3421 1243\n</answer>", row)
    assert s["correct"] and s["cell_accuracy"] == 1.0 and s["empty_cells"] == 6
    wrong = list(row["solution"])
    wrong[11], wrong[15] = "2", "4"  # cell 11 is empty in the puzzle, cell 15 is given
    s = task.score(f"<answer>{''.join(wrong)}</answer>", row)
    assert not s["correct"] and s["correct_cells"] == 5
    assert task.score("no answer", row)["correct_cells"] == 0
    assert task.score("<answer>43122", row)["correct_cells"] == 2  # truncated: cells 0 and 4 (empty, right) count
    summary = task.summarize([task.score("<answer>4312213434211243</answer>", row), task.score("", row)])
    assert summary == {"n": 2, "cell_accuracy": 0.5, "solved_rate": 0.5}


def test_every_generated_countdown_is_solvable():
    task = get_task("countdown")
    for r in task.generate(200, seed=5):
        assert len(r["numbers"]) in (3, 4) and r["target"] > 0
        assert solve(r["numbers"], r["target"]) is not None
        assert task.score(f"<answer>{r['solution']}</answer>", r)["correct"]


@pytest.mark.parametrize(
    "generation,ok,reason",
    [
        ("<answer>(25 - 5) * 3</answer>", True, ""),
        ("<answer>3 * (25 - 5)</answer>", True, ""),
        ("<answer>(25 - 5) * 3 = 60</answer>", True, ""),
        ("the answer is \\boxed{(25-5)\\times 3}", True, ""),
        ("<answer>(25 - 5) * 3 * 1</answer>", False, "numbers differ"),      # an unlisted number
        ("<answer>(25 - 5) * 3 + 5 - 5</answer>", False, "numbers differ"),  # a number used twice
        ("<answer>25 * 3 - 5</answer>", False, "wrong value"),
        ("<answer>(25 - 5) ** 3</answer>", False, "not an arithmetic"),
        ("<answer>__import__('os')</answer>", False, "not an arithmetic"),
        ("<answer>25 / (5 - 5) * 3</answer>", False, "not an arithmetic"),
        ("nothing", False, "no answer"),
    ],
)
def test_countdown_verifier(generation, ok, reason):
    s = get_task("countdown").score(generation, {"numbers": [3, 5, 25], "target": 60})
    assert s["correct"] is ok and s["reason"].startswith(reason)


def test_countdown_fractions_within_tolerance():
    task = get_task("countdown")
    assert task.score("<answer>(7 / 3) * 3 + 1</answer>", {"numbers": [7, 3, 3, 1], "target": 8})["correct"]


@pytest.mark.parametrize(
    "generation,gold,ok",
    [
        ("so \\boxed{18} dollars", "Janet sells 16 - 3 - 4 = 9 ... #### 18", True),
        ("\\boxed{} then \\boxed{1,234}", "#### 1234", True),  # first non-empty box
        ("\\boxed{18.0}", "#### 18", True),
        ("<answer>$18</answer>", "#### 18", True),
        ("<answer>The total is 18 dollars.</answer>", "#### 18", True),
        ("\\boxed{17} <answer>18</answer>", "#### 18", False),  # the box wins over the answer tag
        ("no number", "#### 18", False),
        ("\\boxed{-3}", "#### -3", True),
    ],
)
def test_gsm8k_scorer(generation, gold, ok):
    assert get_task("gsm8k").score(generation, {"question": "q", "answer": gold})["correct"] is ok


@pytest.mark.parametrize(
    "pred,gold,ok",
    [
        ("\\frac{1}{2}", "\\dfrac{1}{2}", True),
        ("0.5", "\\frac12", True),
        ("1/2", "\\frac{1}{2}", True),
        ("\\left( 3, 4 \\right)", "(3,4)", True),
        ("x = 5", "5", True),
        ("90^\\circ", "90", True),
        ("\\$10", "10", True),
        ("50\\%", "50", True),
        ("\\sqrt3", "\\sqrt{3}", True),
        ("10 \\text{ cm}", "10", True),
        ("\\frac{2}{4}", "0.5", True),  # numerically equal
        ("\\frac{1}{3}", "\\frac{1}{2}", False),
        ("3", "4", False),
        (None, "4", False),
    ],
)
def test_math_equivalence(pred, gold, ok):
    assert math_equiv(pred, gold) is ok


def test_math500_takes_the_last_box():
    task = get_task("math500")
    row = {"problem": "p", "answer": "\\frac{3}{4}"}
    assert task.score("first \\boxed{1} then \\boxed{\\dfrac{3}{4}}", row)["correct"]
    assert not task.score("\\boxed{\\frac{3}{4}} then \\boxed{1}", row)["correct"]
    assert task.score("<answer>3/4</answer>", row)["correct"]
    assert task.gold({"problem": "p", "solution": "so $\\boxed{\\frac{\\sqrt{2}}{2}}$"}) == "\\frac{\\sqrt{2}}{2}"
    assert normalize_math("\\left(1,2\\right)") == "(1,2)"


def test_evaluate_command_writes_every_generation(tmp_path):
    from tests.helpers import tiny_model_dir

    model, tok = tiny_model_dir(tmp_path / "m")
    data = tmp_path / "gsm.jsonl"
    data.write_text("".join(json.dumps({"question": f"{i}+1?", "answer": f"#### {i + 1}"}) + "\n" for i in range(5)))
    r = subprocess.run([sys.executable, "-m", "trainers.evaluate", "--model", str(tmp_path / "m"), "--task", "gsm8k",
                        "--data", str(data), "--gen-length", "16", "--block-length", "8"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    rows = [json.loads(x) for x in (tmp_path / "m" / "eval-gsm8k.jsonl").read_text().splitlines()]
    assert len(rows) == 5 and all("generation" in x and "correct" in x for x in rows)
    summary = json.loads((tmp_path / "m" / "eval-gsm8k.summary.json").read_text())
    assert summary["steps"] == 8 and summary["n"] == 5  # steps default to gen_length / 2
    bad = subprocess.run([sys.executable, "-m", "trainers.evaluate", "--model", str(tmp_path / "m"), "--task", "gsm8k"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "no generator" in bad.stderr


def test_quick_demo_beats_an_untrained_model(tmp_path):
    from trainers.demo import main

    out = tmp_path / "demo"
    assert main(["--quick", "--output", str(out)]) == 0
    rows = {r["method"].split(" ")[0]: r for r in json.loads((out / "results.json").read_text())["rows"]}
    assert set(rows) == {"untrained", "base", "sft", "gift", "blockwise", "lift"}
    for name in ("base", "sft", "gift", "blockwise", "lift"):
        assert rows[name]["cell_accuracy"] > rows["untrained"]["cell_accuracy"] + 0.1, name
    assert (out / "demo.png").stat().st_size > 10_000 and (out / "results.md").exists()
    # A second run refuses to clobber it; --resume reuses every finished stage.
    assert main(["--quick", "--output", str(out)]) == 2
    assert main(["--quick", "--output", str(out), "--resume"]) == 0
