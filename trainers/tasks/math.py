"""GSM8K and MATH-500 on d1's protocol (dllm-reasoning/d1 `eval/gsm8k.py`, `eval/math500.py`, scored
as `eval/parse_and_get_acc.py` scores them), for data the user supplies.

GSM8K rows: {"question", "answer"} with the gold number after "####" (the dataset's own format).
MATH-500 rows: {"problem", "answer"} (HuggingFaceH4/MATH-500's format). The extraction and the
comparison are d1's (see `d1.py`); `--scorer math-verify` adds a second, more lenient column.
"""

from __future__ import annotations

from pathlib import Path

from .common import Task, read_jsonl
from .d1 import GSM8K_SYSTEM_PROMPT, MATH500_SYSTEM_PROMPT, gsm8k_answer, gsm8k_gold, is_equiv, math_answer


class GSM8K(Task):
    name = "gsm8k"
    system_prompt = GSM8K_SYSTEM_PROMPT

    def load(self, path: str | Path) -> list[dict]:
        return read_jsonl(path, self.name, (("question", "answer"),))

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
        return read_jsonl(path, self.name, (("problem", "answer"),))

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
