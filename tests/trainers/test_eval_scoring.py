"""trainers.eval_scoring: math-verify beside d1's verdicts, pass@k (Chen et al. 2021) over items."""

import json
import math

import pytest

from trainers import evaluate as ev
from trainers.eval_rescore import rescore
from trainers.eval_scoring import math_verify_scorer, summarize
from trainers.tasks import get_task, pass_at_k


def test_math_verify_is_a_column_beside_d1s(tmp_path):
    pytest.importorskip("math_verify")
    f = tmp_path / "gsm8k_x_0_generations.json"
    f.write_text(json.dumps({"generations": [
        {"question": "q", "generations": "<answer>\\boxed{1,234}</answer>", "ground_truth": 1234.0},  # d1: 1
        {"question": "q", "generations": "<answer>\\boxed{7}</answer>", "ground_truth": 7.0}]}))
    task = get_task("gsm8k")
    summary, records = rescore(task, [f], math_verify_scorer(task))
    assert [r["correct"] for r in records] == [False, True]
    assert [r["math_verify"] for r in records] == [True, True]
    assert summary["accuracy"] == 0.5 and summary["math_verify_accuracy"] == 1.0
    assert ev.main(["--task", "sudoku", "--score", str(f), "--scorer", "math-verify"]) == 2


def _pass_at_k_chen(n, c, k):
    """Chen et al. 2021, Fig. 3 (numpy version), transcribed: 1 - prod(1 - k / arange(n - c + 1, n + 1))."""
    import numpy as np

    if n - c < k:
        return 1.0
    return 1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1))


@pytest.mark.parametrize("n,c,k", [(16, 0, 1), (16, 1, 1), (16, 3, 4), (16, 15, 16), (16, 16, 16), (200, 7, 16)])
def test_pass_at_k_is_chen_et_al(n, c, k):
    assert pass_at_k(n, c, k) == pytest.approx(_pass_at_k_chen(n, c, k), abs=1e-12)
    assert pass_at_k(n, c, k) == pytest.approx(1 - math.comb(n - c, k) / math.comb(n, k), abs=1e-12)


def test_summary_reports_pass_at_k_over_items():
    task = get_task("gsm8k")
    records = [{"index": i, "sample": s, "correct": s < i} for i in range(3) for s in range(4)]  # 0, 1, 2 of 4
    out = summarize(task, records, [1, 2])
    assert out["accuracy"] == pytest.approx(3 / 12)
    assert out["pass@1"] == pytest.approx((0 + 1 / 4 + 2 / 4) / 3)
    assert out["pass@2"] == pytest.approx((0 + (1 - 3 / 6) + (1 - 1 / 6)) / 3)
