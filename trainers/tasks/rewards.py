"""d1's diffu-GRPO rewards and training prompts (dllm-reasoning/d1 `diffu-grpo/reward_func.py`,
`diffu-grpo/data_utils.py`, `diffu-grpo/diffu_grpo_train.py`).

Each reward is `fn(completions, rows) -> list[float]`: the completions' texts and the task rows they
answer (one row per completion). The values are d1's on every input, quirks included:
- the GSM8K format rewards use `re.match` without DOTALL, so the soft format only matches when the
  reasoning holds no newline; the correctness reward compares the <answer> text with the text after
  "####" as strings ("72" is right, "72.0" and "$72" are not);
- MATH's `boxed_and_answer_tags_format_reward` tests `"\\boxed" in r` written as "\boxed" in d1,
  i.e. a backspace character followed by "oxed": in practice the box half is always 0.5, so the
  reward is 0.75 with <answer> tags and 0.25 without (d1's `math500_utils.boxed_in_answer`).
Differences by construction, never in the value: nothing is printed, nothing raises (an input on
which d1's code raises scores 0), and Countdown expressions are evaluated without `eval`
(`d1.countdown_value`, the same values).

d1's reward weights: `diffu_grpo_train.py` passes no `reward_weights`, so every reward weighs 1.0 and
a completion's reward is the plain sum of its task's rewards.
"""

from __future__ import annotations

import math
import re
from typing import Callable

from .d1 import countdown_value, is_equiv, last_boxed_only_string, remove_boxed, uses_exactly

# --- prompts (data_utils.py) ---------------------------------------------------------------------

GRPO_SYSTEM_PROMPT = "\nRespond in the following format:\n<reasoning>\n...\n</reasoning>\n<answer>\n...\n</answer>\n"
GRPO_SUDOKU_SYSTEM_PROMPT = (
    "\nPlease solve the following 4x4 Sudoku puzzle. The puzzle is provided as a 16-character string reading "
    "left-to-right, top-to-bottom, where '0' represents empty cells.\n\nRules:\n- Fill empty cells with digits 1-4\n"
    "- Each row must contain digits 1-4 exactly once\n- Each column must contain digits 1-4 exactly once\n"
    "- Each 2x2 box must contain digits 1-4 exactly once\n\nImportant: Your solution must be a COMPLETE 16-character "
    "string with only the digits 1-4, representing your final solved grid.\n\nRespond in this exact format:\n"
    "<reasoning>\nYour step-by-step solving process\n</reasoning>\n<answer>\n[16-character solution string with no "
    "spaces or separators]\n</answer>\n"
)


def grpo_user_message(task: str, row: dict, system_prompt: bool = True) -> str:
    """The user message d1 trains on (data_utils.py `get_*_questions`); without the system prompt,
    the task's own words only (for small models whose context the instructions would fill)."""
    if task == "gsm8k":
        return (GRPO_SYSTEM_PROMPT + "\n\n" if system_prompt else "") + row["question"]
    if task == "math500":
        head = (f"{GRPO_SYSTEM_PROMPT}\n\n" if system_prompt else "")
        return (head + "You are a math expert. You will be given a question to solve. Solve it step by step. "
                "Wrap the final answer in a \\boxed{}. \n\n" + row["problem"])
    if task == "countdown":
        nums = [int(x) for x in row["numbers"]]
        return ((f"{GRPO_SYSTEM_PROMPT}\n" if system_prompt else "") +
                f"Using only the numbers {nums}, create an arithmetic expression that evaluates to exactly "
                f"{row['target']}. You must use all numbers from the list, and each number must be used exactly once. "
                "You may use the operations +, -, *, and / as needed. After reasoning, provide only your final "
                "expression inside <answer></answer> tags without including an equals sign or the target number. For "
                "example, if the numbers are [2, 3, 4] and the target is 5, a valid answer is: <answer>\n2*4-3\n</answer>")
    if task == "sudoku":
        return (f"{GRPO_SUDOKU_SYSTEM_PROMPT}\n\n" if system_prompt else "") + \
            f"Solve the following Sudoku puzzle: {row['puzzle']}\n"
    raise ValueError(f"unknown task {task!r}")


# --- GSM8K (reward_func.py) ----------------------------------------------------------------------


def extract_xml_answer(text: str) -> str:
    """d1's `extract_xml_answer`: the text after the last <answer>, up to the next </answer>, stripped."""
    return text.split("<answer>")[-1].split("</answer>")[0].strip()


def hash_answer(text: str) -> str | None:
    """d1's `extract_hash_answer` of a GSM8K solution: the text after '####', stripped."""
    return text.split("####")[1].strip() if "####" in text else None


def gsm8k_gold(row: dict) -> str | None:
    return hash_answer(str(row["answer"])) if "answer" in row else row.get("ground_truth")


def correctness_reward(completions, rows):
    return [2.0 if extract_xml_answer(c) == gsm8k_gold(r) else 0.0 for c, r in zip(completions, rows)]


def int_reward(completions, rows):
    return [0.5 if extract_xml_answer(c).isdigit() else 0.0 for c in completions]


STRICT_FORMAT = re.compile(r"^<reasoning>\n.*?\n</reasoning>\n<answer>\n.*?\n</answer>\n$")
SOFT_FORMAT = re.compile(r"<reasoning>.*?</reasoning>\s*<answer>.*?</answer>")


def strict_format_reward(completions, rows):
    return [0.5 if STRICT_FORMAT.match(c) else 0.0 for c in completions]


def soft_format_reward(completions, rows):
    return [0.5 if SOFT_FORMAT.match(c) else 0.0 for c in completions]


def count_xml(text: str) -> float:
    """d1's `count_xml`: 0.125 for each of the four tags that appears exactly once; the answer's tags
    also lose 0.001 per character after their last occurrence (the closing tag's own newline spared).
    The additions and subtractions run in d1's order, so the floats are d1's to the last bit."""
    def once(tag: str) -> bool:
        return text.count(tag) == 1

    def after(tag: str) -> int:
        return len(text.rsplit(tag, 1)[-1])

    score = 0.0
    for tag in ("<reasoning>\n", "\n</reasoning>\n"):
        if once(tag):
            score += 0.125
    if once("\n<answer>\n"):
        score += 0.125
        score -= after("\n</answer>\n") * 0.001
    if once("\n</answer>"):
        score += 0.125
        score -= (after("\n</answer>") - 1) * 0.001
    return score


def xmlcount_reward(completions, rows):
    return [count_xml(c) for c in completions]


# --- Countdown -----------------------------------------------------------------------------------


def last_answer_tag(text: str) -> str | None:
    """d1's `extract_solution`: the last <answer>...</answer> content (across lines), stripped."""
    matches = re.findall(r"<answer>(.*?)</answer>", text, re.DOTALL)
    return matches[-1].strip() if matches else None


def countdown_score(text: str, numbers, target, format_score: float = 0.1, score: float = 1.0) -> float:
    """d1's `compute_score`: 0 without an answer, 1 when it uses exactly the numbers and reaches the
    target, 0.1 otherwise."""
    equation = last_answer_tag(text)
    if equation is None:
        return 0.0
    if not uses_exactly(equation, numbers):
        return format_score
    value = countdown_value(equation)  # inf where d1's evaluate_equation returns None or raises
    try:
        return score if abs(value - target) < 1e-5 else format_score
    except (TypeError, OverflowError):
        return format_score


def countdown_reward(completions, rows):
    return [countdown_score(c, r["numbers"], r["target"]) for c, r in zip(completions, rows)]


# --- Sudoku --------------------------------------------------------------------------------------


def sudoku_digits(text: str) -> str | None:
    """d1's `extract_answer_sudoku`: the digits of the last <answer> content, or None."""
    matches = re.findall(r"<answer>(.*?)</answer>", text, re.DOTALL)
    return "".join(ch for ch in matches[-1].strip() if ch.isdigit()) if matches else None


def sudoku_score(answer: str | None, solution: str, puzzle: str) -> float:
    """d1's `validate_sudoku_solution`: the share of the puzzle's empty cells the answer (padded with
    '0' or cut to 16) fills as the solution does."""
    if not answer:
        return 0.0
    answer = answer[:16].ljust(16, "0")
    empty = [i for i in range(16) if puzzle[i] == "0"]
    return sum(1 for i in empty if answer[i] == solution[i]) / len(empty) if empty else 0.0


def sudoku_reward(completions, rows):
    return [sudoku_score(sudoku_digits(c), r["solution"], r["puzzle"]) for c, r in zip(completions, rows)]


# --- MATH (math500_utils.py) ---------------------------------------------------------------------


def boxed_in_answer(text: str) -> float:
    """d1's `boxed_in_answer`: 1 for an <answer> tag, plus 1.0 if "\\boxed" (a backspace and "oxed",
    as d1 writes it) is in the answer (or, without tags, the whole text), 0.5 otherwise."""
    reward = 0.0
    parts = text.split("<answer>")
    if len(parts) > 1:
        text = parts[1].split("</answer>")[0]
        reward += 1.0
    return reward + (1.0 if "\boxed" in text else 0.5)


def _unboxed(text):
    """remove_boxed(last_boxed_only_string(text)), None where that raises."""
    try:
        return remove_boxed(last_boxed_only_string(text))
    except (TypeError, AssertionError):
        return None


def math_gold(row: dict) -> str:
    """d1 trains on ankner/math-500's full "solution" (its boxed answer is taken out); a row with only
    the final "answer" (HuggingFaceH4/MATH-500) gives the same gold."""
    return str(row.get("solution", row.get("answer", row.get("ground_truth", ""))))


def math_correctness_reward(completions, rows):
    out = []
    for c, r in zip(completions, rows):
        gold = _unboxed(math_gold(r))
        pred = _unboxed(c)
        pred = c if pred is None else pred  # d1 keeps the whole completion where extraction raises
        out.append(2.0 if gold is not None and is_equiv(pred, gold) else 0.0)
    return out


def math_format_reward(completions, rows):
    return [0.5 * boxed_in_answer(c) for c in completions]


# --- per task (diffu_grpo_train.py) --------------------------------------------------------------

REWARDS: dict[str, list[tuple[str, Callable]]] = {
    "gsm8k": [("xmlcount", xmlcount_reward), ("soft_format", soft_format_reward),
              ("strict_format", strict_format_reward), ("int", int_reward), ("correctness", correctness_reward)],
    "countdown": [("countdown", countdown_reward)],
    "sudoku": [("sudoku", sudoku_reward)],
    "math500": [("correctness", math_correctness_reward), ("boxed_and_answer_tags_format", math_format_reward)],
}


def score_completions(task: str, completions: list[str], rows: list[dict]) -> dict[str, list[float]]:
    """Every reward of the task on every completion: {name: values}. A reward that fails on a
    completion (a malformed row) gives it 0.0, as a reward function never stops training."""
    out = {}
    for name, fn in REWARDS[task]:
        try:
            values = [float(v) for v in fn(completions, rows)]
        except Exception:  # noqa: BLE001 - score each completion alone, 0.0 where it fails
            values = []
            for c, r in zip(completions, rows):
                try:
                    values.append(float(fn([c], [r])[0]))
                except Exception:  # noqa: BLE001
                    values.append(0.0)
        out[name] = [v if math.isfinite(v) else 0.0 for v in values]
    return out
