"""d1's answer extraction in linear time, with d1's verdicts.

d1's patterns backtrack quadratically on what a model in a loop writes (`<answer>` 32000 times took
100 s on a 2-core CPU). `trainers/tasks/d1.py` replaces them with scans; here (1) a timing bound per adversarial
pattern, each far under a second at the lengths of a looping model's output, and (2) the
scans against d1's own extraction code, transcribed below from dllm-reasoning/d1
`eval/parse_and_get_acc.py` and `eval/parser_helper.py`, on a fuzzed corpus of the tokens the
patterns look for and on d1's generation files.
"""

import json
import random
import re
import time
from pathlib import Path

import pytest

from trainers.tasks import d1, get_task

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "d1-generations"
SUDOKU_ROW = {"puzzle": "3102200002100320", "solution": "3142243142131324"}
ROWS = {"countdown": {"numbers": [1, 2, 3], "target": 6}, "sudoku": SUDOKU_ROW,
        "gsm8k": {"question": "q", "answer": "#### 3"}, "math500": {"problem": "p", "answer": "3"}}

# What a model in a loop writes, at lengths where d1's patterns take a minute or more, and neighbours.
ADVERSARIAL = {
    "<answer> x32000": "<answer>" * 32000,
    "1+ x64000": "1+" * 64000,
    "128000 digits": "1" * 128000,
    "boxed sum of 10^5 terms": "\\boxed{" + "+".join(["1"] * 100_000) + "}",
    "\\boxed{ x32000": "\\boxed{" * 32000,
    "unclosed fence of spaces": "<answer>```" + " " * 200_000,
    "fences without a close": "<answer>" + "```1" * 60_000,
    "expression without a value": "1 " * 100_000 + "= x",
    "boxes cut by newlines": "\\boxed{1\n" * 30_000,
}


@pytest.mark.parametrize("task", list(ROWS))
@pytest.mark.parametrize("name", list(ADVERSARIAL))
def test_scoring_an_adversarial_generation_takes_well_under_a_second(task, name):
    t = get_task(task)
    start = time.perf_counter()
    verdict = t.score(ADVERSARIAL[name], ROWS[task])
    assert time.perf_counter() - start < 1.0, (task, name)  # generous: ~0.01 s on a 2-core CPU
    assert verdict["correct"] is False


# --- d1's extraction, transcribed (the oracle) -------------------------------------------------------------


def d1_last_boxed_only_string(string):
    idx = string.rfind("\\boxed")
    if "\\boxed " in string:
        return "\\boxed " + string.split("\\boxed ")[-1].split("$")[0]
    if idx < 0:
        idx = string.rfind("\\fbox")
        if idx < 0:
            return string
    i, right_brace_idx, num_left_braces_open = idx, None, 0
    while i < len(string):
        if string[i] == "{":
            num_left_braces_open += 1
        if string[i] == "}":
            num_left_braces_open -= 1
            if num_left_braces_open == 0:
                right_brace_idx = i
                break
        i += 1
    return None if right_brace_idx is None else string[idx:right_brace_idx + 1]


def d1_remove_boxed(s):
    if "\\boxed " in s:
        left = "\\boxed "
        assert s[:len(left)] == left
        return s[len(left):]
    left = "\\boxed{"
    try:
        assert s[:len(left)] == left
        assert s[-1] == "}"
        return s[len(left):-1]
    except:  # noqa: E722 - d1's
        return s


def d1_gsm(raw_generation):
    parsed_answer = None
    boxed_matches = re.findall(r"\\boxed{(.*?)}", raw_generation)
    if boxed_matches:
        for boxed_content in boxed_matches:
            boxed_content = boxed_content.strip()
            if boxed_content and boxed_content != "..." and not re.match(r"^\.+$", boxed_content):
                try:
                    parsed_answer = float(boxed_content)
                    break
                except ValueError:
                    numbers = re.findall(r"-?\d+\.?\d*", boxed_content)
                    if numbers:
                        try:
                            parsed_answer = float(numbers[0])
                            break
                        except ValueError:
                            pass
    if parsed_answer is None:
        answer_match = re.search(r"<answer>(.*?)</answer>", raw_generation, re.DOTALL)
        if answer_match:
            answer_text = answer_match.group(1).strip()
            if answer_text:
                try:
                    parsed_answer = float(answer_text)
                except ValueError:
                    numbers = re.findall(r"-?\d+\.?\d*", answer_text)
                    if numbers:
                        try:
                            parsed_answer = float(numbers[-1])
                        except ValueError:
                            pass
    return parsed_answer


def d1_math(raw_generation):
    try:
        parsed_answer = d1_remove_boxed(d1_last_boxed_only_string(raw_generation))
    except:  # noqa: E722 - d1's
        parsed_answer = None
    if not parsed_answer:
        answer_match = re.search(r"<answer>(.*?)</answer>", raw_generation, re.DOTALL)
        if answer_match:
            parsed_answer = answer_match.group(1).strip()
    return parsed_answer


def d1_countdown(generated_text):
    try:
        equation = d1_remove_boxed(d1_last_boxed_only_string(generated_text))
    except:  # noqa: E722 - d1's
        answer_match = re.search(r"<answer>(.*?)</answer>", generated_text, re.DOTALL)
        equation = answer_match.group(1).strip() if answer_match else generated_text
    equation = equation.replace(r"\div", "/").replace(r"\times", "*").replace(r"\cdot", "*")
    equation_match = re.search(r"([0-9+\-*/() ]+)=[0-9. ]+", equation)
    if equation_match:
        equation = equation_match.group(1).strip()
    return equation


def d1_sudoku(raw_generation):
    solution_str = ""
    patterns = [
        r"<answer>.*?```\s*([\d\s]+)```",
        r"<answer>(.*?)(?:<\|eot_id\|>|<\|endoftext\|>|</answer>)",
        r"</answer>\s*(.*?)(?:<\|eot_id\|>|<\|endoftext\|>|$)",
        r".*?(\d{16})\s*</answer>",
        r"\b(\d{16})\b",
    ]
    for pattern in patterns:
        if solution_str:
            break
        match = re.search(pattern, raw_generation, re.DOTALL)
        if match and match.group(1).strip():
            solution_str = match.group(1).strip()
    solution_str = re.sub(r"\s", "", solution_str)
    if solution_str:
        solution_str = solution_str[:16].ljust(16, "0")
    return solution_str


# --- the scans against it ----------------------------------------------------------------------------------

TOKENS = ["<answer>", "</answer>", "<answer", "\\boxed{", "\\boxed ", "\\boxed", "\\fbox{", "{", "}", "```", "``", "`",
          "\n", " ", "\t", "\u00a0", "1", "7", "12", "3.5", "-4", "=", "= 5", "=.", "+", "-", "*", "/", "(", ")",
          "...", ".", "$", "<|eot_id|>", "<|endoftext|>", "x", "1234123412341234", "3142243142131324",
          "\u0663", "\\div", "\\times", "\\cdot", "\\frac", "\\text{ ", "%"]


def _corpus(n=4000, seed=0):
    rng = random.Random(seed)
    out = [item["generations"] for name in ("gsm8k", "math500", "countdown", "sudoku")
           for item in json.loads((FIXTURES / f"{name}.json").read_text())["generations"]]
    for _ in range(n):
        out.append("".join(rng.choice(TOKENS) for _ in range(rng.randint(0, 24))))
    return out


def _math(text):
    return d1.math_answer(text)


@pytest.mark.parametrize("ours,theirs", [(d1.gsm8k_answer, d1_gsm), (_math, d1_math),
                                         (d1.countdown_expression, d1_countdown), (d1.sudoku_answer, d1_sudoku)],
                         ids=["gsm8k", "math500", "countdown", "sudoku"])
def test_extraction_is_d1s_on_a_fuzzed_corpus(ours, theirs):
    for text in _corpus():
        assert ours(text) == theirs(text), text


@pytest.mark.parametrize("text,group", [("<answer>````12```", "12"), ("<answer>```  \n```", "\n"),
                                        ("<answer>``` 1 2 ```x```3```", "1 2 "), ("```1```<answer>", None),
                                        ("<answer>```1``", None), ("<answer>```\u0663 4```", "\u0663 4")])
def test_the_fence_scan_is_the_pattern(text, group):
    m = re.search(r"<answer>.*?```\s*([\d\s]+)```", text, re.DOTALL)
    assert d1.fenced_answer(text) == (m.group(1) if m else None) == group
