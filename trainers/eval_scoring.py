"""Verdicts and their summary for `trainers.evaluate`: d1's verdict on one generation (with the
math-verify column beside it), the task's metrics and pass@k over items, and the printed table."""

from __future__ import annotations

from collections import defaultdict

from dlmarch.errors import DlmarchError

from .tasks import pass_at_k

def math_verify_scorer(task):
    """A function (generation, row) -> bool from the math-verify package (Hugging Face), for the
    tasks with a textual gold answer (GSM8K, MATH-500)."""
    if task.name not in ("gsm8k", "math500"):
        raise DlmarchError(f"--scorer math-verify applies to gsm8k and math500, not {task.name}")
    try:
        from math_verify import parse, verify
    except ImportError as e:
        raise DlmarchError("--scorer math-verify needs the math-verify package: pip install 'dlmarch[math-verify]'") from e

    def score(generation: str, row: dict) -> bool:
        gold = task.reference_text(row)
        if gold is None:
            return False
        try:
            return bool(verify(parse("$" + gold + "$"), parse(generation)))
        except Exception:  # noqa: BLE001 - a scorer never ends a run; an unparsable answer is wrong
            return False

    return score


def score_record(task, generation: str, row: dict, extra=None) -> dict:
    """d1's verdict on one generation (and the extra scorer's). A scorer error is a wrong answer
    with its reason, never an exception: one adversarial generation must not lose a run."""
    try:
        verdict = task.score(generation, row)
    except Exception as e:  # noqa: BLE001
        verdict = {"correct": False, "reason": f"scorer error: {type(e).__name__}"}
        if task.name == "sudoku":
            verdict.update(correct_cells=0, empty_cells=str(row.get("puzzle", "")).count("0"))
    if extra is not None:
        verdict["math_verify"] = extra(generation, row)
    return verdict


def summarize(task, records: list[dict], ks: list[int] | None = None) -> dict:
    """The task's metrics over every generation, the math-verify column, and pass@k over items
    (Chen et al. 2021's unbiased estimator; an item's n is its number of samples)."""
    out = task.summarize(records)
    if records and "math_verify" in records[0]:
        out["math_verify_accuracy"] = sum(bool(r["math_verify"]) for r in records) / len(records)
    by_item = defaultdict(list)
    for r in records:
        by_item[r.get("index", len(by_item))].append(bool(r["correct"]))
    n = min((len(v) for v in by_item.values()), default=0)
    if n > 1 or ks:
        for k in ks or [1, n]:
            if k <= n:
                out[f"pass@{k}"] = sum(pass_at_k(len(v), sum(v), k) for v in by_item.values()) / len(by_item)
    return out


def table(task, summary: dict) -> str:
    """A markdown table of one row: the task, n, its primary metric, math-verify and pass@k (in percent)."""
    cols = [task.primary] + [k for k in summary if k.startswith("math_verify") or k.startswith("pass@")]
    head = f"| task | n | {' | '.join(cols)} |"
    row = f"| {task.name} | {summary['n']} | " + " | ".join(f"{100 * summary[c]:.2f}" for c in cols) + " |"
    return "\n".join([head, "|" + "---|" * (len(cols) + 2), row])

