"""GSM8K and MATH-500 on d1's protocol (dllm-reasoning/d1 `eval/gsm8k.py`, `eval/math500.py`, scored
as `eval/parse_and_get_acc.py` scores them), for data the user supplies.

GSM8K rows: {"question", "answer"} with the gold number after "####" (the dataset's own format).
MATH-500 rows: {"problem", "answer"} (HuggingFaceH4/MATH-500's format). The extraction and the
comparison are d1's (see `d1.py`); `--scorer math-verify` adds a second, more lenient column.
"""

from __future__ import annotations

from pathlib import Path

from .common import Task, is_number, read_jsonl, wrong
from .d1 import GSM8K_SYSTEM_PROMPT, MATH500_SYSTEM_PROMPT, gsm8k_answer, gsm8k_gold, is_equiv, math_answer


class GSM8K(Task):
    name = "gsm8k"
    system_prompt = GSM8K_SYSTEM_PROMPT

    def load(self, path: str | Path) -> list[dict]:
        return read_jsonl(path, self.name, (("question", "answer"),), self.check_row)

    def check_row(self, row: dict) -> str | None:
        """GSM8K's rows: question and answer text; d1's items: a number (or null) as ground_truth."""
        for key in ("question", "answer"):
            if key in row and not isinstance(row[key], str):
                return wrong(key, "a string", row[key])
        if "ground_truth" in row and row["ground_truth"] is not None and not is_number(row["ground_truth"]):
            return wrong("ground_truth", "a number (d1's GSM8K gold)", row["ground_truth"])
        if "answer" not in row and "ground_truth" not in row:
            return "a gsm8k reference needs answer or ground_truth"
        return None

    def question(self, row: dict) -> str:
        return row["question"]

    def gold(self, row: dict) -> float | None:
        """d1's ground truth: a d1 file's float as it is, else the '####' number of the answer."""
        if "ground_truth" in row:
            return row["ground_truth"]
        return gsm8k_gold(row["answer"])

    def reference_text(self, row: dict) -> str | None:
        gold = self.gold(row)
        return None if gold is None else f"{gold:g}"

    def score(self, generation: str, row: dict) -> dict:
        gold, pred = self.gold(row), gsm8k_answer(generation)
        return {"correct": pred is not None and pred == gold, "prediction": pred, "gold": gold}

    def from_d1(self, item: dict) -> dict:
        return {"question": item.get("question", ""), "ground_truth": item.get("ground_truth")}


class Math500(Task):
    name = "math500"
    system_prompt = MATH500_SYSTEM_PROMPT

    def load(self, path: str | Path) -> list[dict]:
        return read_jsonl(path, self.name, (("problem", "answer"),), self.check_row)

    def check_row(self, row: dict) -> str | None:
        """MATH-500's rows: problem and answer text (its answers are LaTeX strings); d1's: ground_truth text."""
        for key in ("problem", "answer", "ground_truth"):
            if key in row and not isinstance(row[key], str):
                return wrong(key, "a string", row[key])
        if "answer" not in row and "ground_truth" not in row:
            return "a math500 reference needs answer or ground_truth"
        return None

    def question(self, row: dict) -> str:
        return row["problem"]

    def gold(self, row: dict) -> str:
        return row["ground_truth"] if "ground_truth" in row else str(row["answer"])

    def reference_text(self, row: dict) -> str | None:
        return self.gold(row)

    def score(self, generation: str, row: dict) -> dict:
        pred, gold = math_answer(generation), self.gold(row)
        return {"correct": pred is not None and is_equiv(pred, gold), "prediction": pred, "gold": gold}

    def from_d1(self, item: dict) -> dict:
        return {"problem": item.get("question", ""), "ground_truth": item.get("ground_truth", "")}
