"""GSM8K and MATH-500 scorers (card 8, the d1 protocol), for data the user supplies as JSONL.

GSM8K rows: {"question", "answer"} with the gold number after "####" (the dataset's own format).
The prediction is the first non-empty \\boxed{} of the generation, else its <answer> content; the
number in it is compared numerically.

MATH-500 rows: {"problem", "answer"} (a "solution" with a \\boxed{} also works). The prediction is
the last \\boxed{}, else the <answer> content; both sides are normalised Hendrycks-style (spaces,
\\left/\\right, dfrac/tfrac, units, degrees, dollar and percent signs, leading "x =", a/b and 0.5 as
fractions, \\sqrt3) and compared, numerically when both parse as numbers.
"""

from __future__ import annotations

import re

from dlmarch.errors import DlmarchError

from .common import FORMAT_INSTRUCTIONS, Task, answer_tag, boxed_all

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")


def to_number(text: str | None) -> float | None:
    """The last number in text (commas, $ and % ignored), or None."""
    if text is None:
        return None
    found = _NUMBER.findall(text.replace("$", "").replace("\\!", ""))
    if not found:
        return None
    try:
        return float(found[-1].replace(",", ""))
    except ValueError:
        return None


def gsm8k_gold(answer: str) -> float:
    m = re.search(r"####\s*\$?\s*(-?[\d,]*\.?\d+)", answer)
    if not m:
        raise DlmarchError(f"GSM8K answer has no '#### number': {answer[-60:]!r}")
    return float(m.group(1).replace(",", ""))


def _fix_fracs(s: str) -> str:
    parts = s.split("\\frac")
    out = parts[0]
    for sub in parts[1:]:
        out += "\\frac"
        if not sub or sub[0] == "{":
            out += sub
            continue
        if len(sub) < 2:
            return s
        a, b, rest = sub[0], sub[1], sub[2:]
        out += "{" + a + "}" + ("{" + b + "}" + rest if b != "{" else b + rest)
    return out


def _fix_sqrt(s: str) -> str:
    return re.sub(r"\\sqrt(\w)", r"\\sqrt{\1}", s)


def normalize_math(s: str) -> str:
    """Hendrycks-style normalisation of a MATH answer."""
    s = s.replace("\n", "").replace("\\!", "").replace("\\\\", "\\")
    s = s.replace("tfrac", "frac").replace("dfrac", "frac")
    s = s.replace("\\left", "").replace("\\right", "")
    s = s.replace("^{\\circ}", "").replace("^\\circ", "")
    s = s.replace("\\$", "").replace("$", "")
    s = re.sub(r"\\text\{\s*([^}]*)\}", lambda m: "" if m.group(0).startswith("\\text{ ") else m.group(1), s)
    s = s.replace("\\%", "").replace("%", "")
    s = s.replace(" .", " 0.").replace("{.", "{0.")
    if s.startswith("."):
        s = "0" + s
    if len(s.split("=")) == 2 and len(s.split("=")[0].strip()) <= 2:
        s = s.split("=")[1]
    s = _fix_sqrt(s)
    s = s.replace(" ", "")
    s = _fix_fracs(s)
    if s == "0.5":
        s = "\\frac{1}{2}"
    m = re.fullmatch(r"(-?\d+)/(\d+)", s)
    if m:
        s = "\\frac{" + m.group(1) + "}{" + m.group(2) + "}"
    return s


def _as_number(s: str) -> float | None:
    m = re.fullmatch(r"(-?)\\frac\{(-?\d+)\}\{(\d+)\}", s)
    if m and int(m.group(3)) != 0:
        v = int(m.group(2)) / int(m.group(3))
        return -v if m.group(1) else v
    try:
        return float(s.replace(",", ""))
    except ValueError:
        return None


def math_equiv(pred: str | None, gold: str | None) -> bool:
    if pred is None or gold is None:
        return False
    a, b = normalize_math(pred), normalize_math(gold)
    if a == b:
        return True
    x, y = _as_number(a), _as_number(b)
    return x is not None and y is not None and abs(x - y) < 1e-6 * max(1.0, abs(y))


class GSM8K(Task):
    name = "gsm8k"
    required = ("question", "answer")
    system_prompt = FORMAT_INSTRUCTIONS + " Put the final number in \\boxed{}."

    def question(self, row: dict) -> str:
        return row["question"]

    def extract(self, generation: str) -> str | None:
        for b in boxed_all(generation):
            if b.strip():
                return b
        return answer_tag(generation)

    def score(self, generation: str, row: dict) -> dict:
        gold = gsm8k_gold(row["answer"])
        pred = to_number(self.extract(generation))
        return {"correct": pred is not None and abs(pred - gold) < 1e-6, "prediction": pred, "gold": gold}


class Math500(Task):
    name = "math500"
    required = ("problem",)
    system_prompt = FORMAT_INSTRUCTIONS + " Put the final answer in \\boxed{}."

    def question(self, row: dict) -> str:
        return row["problem"]

    def gold(self, row: dict) -> str:
        if "answer" in row:
            return str(row["answer"])
        boxed = boxed_all(row.get("solution", ""))
        if not boxed:
            raise DlmarchError("a MATH-500 row needs an \"answer\" or a \"solution\" with \\boxed{}")
        return boxed[-1]

    def extract(self, generation: str) -> str | None:
        boxed = boxed_all(generation)
        return boxed[-1] if boxed else answer_tag(generation)

    def score(self, generation: str, row: dict) -> dict:
        pred, gold = self.extract(generation), self.gold(row)
        return {"correct": math_equiv(pred, gold), "prediction": pred, "gold": gold}
