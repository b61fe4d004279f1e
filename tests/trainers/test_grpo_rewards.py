"""d1's diffu-GRPO rewards: each of ours equals a transcription of dllm-reasoning/d1
`diffu-grpo/reward_func.py` (and `math500_utils.boxed_in_answer`, `remove_boxed`,
`last_boxed_only_string`) on hand-written completions, malformed ones included. The transcription
takes d1's conversational completions ([{"content": text}]) and prints what d1 prints (silenced)."""

import contextlib
import io
import re

import numpy as np
import pytest

from trainers.tasks import d1 as ours_d1
from trainers.tasks.rewards import REWARDS, score_completions

# --- transcription of d1 (test oracle) -----------------------------------------------------------


def d1_extract_xml_answer(text):
    answer = text.split("<answer>")[-1]
    answer = answer.split("</answer>")[0]
    return answer.strip()


def d1_extract_hash_answer(text):
    if "####" not in text:
        return None
    return text.split("####")[1].strip()


def d1_correctness_reward_func(prompts, completions, answer, **kwargs):
    responses = [completion[0]["content"] for completion in completions]
    extracted_responses = [d1_extract_xml_answer(r) for r in responses]
    return [2.0 if r == a else 0.0 for r, a in zip(extracted_responses, answer)]


def d1_int_reward_func(completions, **kwargs):
    responses = [completion[0]["content"] for completion in completions]
    extracted_responses = [d1_extract_xml_answer(r) for r in responses]
    return [0.5 if r.isdigit() else 0.0 for r in extracted_responses]


def d1_strict_format_reward_func(completions, **kwargs):
    pattern = r"^<reasoning>\n.*?\n</reasoning>\n<answer>\n.*?\n</answer>\n$"
    responses = [completion[0]["content"] for completion in completions]
    matches = [re.match(pattern, r) for r in responses]
    return [0.5 if match else 0.0 for match in matches]


def d1_soft_format_reward_func(completions, **kwargs):
    pattern = r"<reasoning>.*?</reasoning>\s*<answer>.*?</answer>"
    responses = [completion[0]["content"] for completion in completions]
    matches = [re.match(pattern, r) for r in responses]
    return [0.5 if match else 0.0 for match in matches]


def d1_count_xml(text):
    count = 0.0
    if text.count("<reasoning>\n") == 1:
        count += 0.125
    if text.count("\n</reasoning>\n") == 1:
        count += 0.125
    if text.count("\n<answer>\n") == 1:
        count += 0.125
        count -= len(text.split("\n</answer>\n")[-1]) * 0.001
    if text.count("\n</answer>") == 1:
        count += 0.125
        count -= (len(text.split("\n</answer>")[-1]) - 1) * 0.001
    return count


def d1_xmlcount_reward_func(completions, **kwargs):
    contents = [completion[0]["content"] for completion in completions]
    return [d1_count_xml(c) for c in contents]


def d1_extract_solution(solution_str):
    answer_pattern = r"<answer>(.*?)</answer>"
    matches = re.findall(answer_pattern, solution_str, re.DOTALL)
    return matches[-1].strip() if matches else None


def d1_validate_equation(equation_str, available_numbers):
    try:
        numbers_in_eq = [int(n) for n in re.findall(r"\d+", equation_str)]
        return sorted(numbers_in_eq) == sorted(available_numbers)
    except:  # noqa: E722
        return False


def d1_evaluate_equation(equation_str):
    try:
        allowed_pattern = r"^[\d+\-*/().\s]+$"
        if not re.match(allowed_pattern, equation_str):
            raise ValueError("Invalid characters in equation.")
        return eval(equation_str, {"__builtins__": None}, {})
    except:  # noqa: E722
        return None


def d1_compute_score(solution_str, ground_truth, method="strict", format_score=0.1, score=1.0):
    target = ground_truth["target"]
    numbers = ground_truth["numbers"]
    equation = d1_extract_solution(solution_str)
    if equation is None:
        return 0
    if not d1_validate_equation(equation, numbers):
        return format_score
    try:
        result = d1_evaluate_equation(equation)
        if result is None:
            return format_score
        if abs(result - target) < 1e-5:
            return score
        else:
            return format_score
    except:  # noqa: E722
        return format_score


def d1_countdown_reward_func(prompts, completions, run_name, step=None, rank=None, **kwargs):
    responses = [completion[0]["content"] for completion in completions]
    scores = []
    for i, response in enumerate(responses):
        ground_truth = {"target": kwargs["target"][i], "numbers": kwargs["numbers"][i]}
        scores.append(d1_compute_score(response, ground_truth))
    return scores


def d1_extract_answer_sudoku(solution_str):
    answer_pattern = r"<answer>(.*?)</answer>"
    matches = re.findall(answer_pattern, solution_str, re.DOTALL)
    if matches:
        return "".join(char for char in matches[-1].strip() if char.isdigit())
    return None


def d1_validate_sudoku_solution(solution_str, ground_truth, puzzle):
    if solution_str is None or len(solution_str) == 0:
        return 0.0
    if len(solution_str) < 16:
        solution_str = solution_str + "0" * (16 - len(solution_str))
    elif len(solution_str) > 16:
        solution_str = solution_str[:16]
    empty_indices = [i for i in range(16) if puzzle[i] == "0"]
    if empty_indices:
        correct_cells = sum(1 for i in empty_indices if solution_str[i] == ground_truth[i])
        return correct_cells / len(empty_indices)
    return 0.0


def d1_sudoku_reward_func(prompts, completions, run_name, step=None, rank=None, **kwargs):
    responses = [completion[0]["content"] for completion in completions]
    scores = []
    for i, response in enumerate(responses):
        puzzle = kwargs["puzzle"][i]
        ground_truth = kwargs["solution"][i]
        solution = d1_extract_answer_sudoku(response)
        score = 0.0 if solution is None else d1_validate_sudoku_solution(solution, ground_truth, puzzle)
        scores.append(score)
    return scores


def d1_boxed_in_answer(prompts, completions, answer, step=None, **kwargs):
    responses = [completion[0]["content"] for completion in completions]
    rewards = []
    for r in responses:
        reward = 0.0
        try:
            r = r.split("<answer>")[1].split("</answer>")[0]
            reward += 1.0
        except:  # noqa: E722
            reward += 0.0
        reward += 1.0 if "\boxed" in r else 0.5
        rewards.append(reward)
    return rewards


def d1_remove_boxed(s):
    if "\\boxed " in s:
        left = "\\boxed "
        assert s[: len(left)] == left
        return s[len(left):]
    left = "\\boxed{"
    try:
        assert s[: len(left)] == left
        assert s[-1] == "}"
        return s[len(left): -1]
    except:  # noqa: E722
        return s


def d1_last_boxed_only_string(string):
    idx = string.rfind("\\boxed")
    if "\\boxed " in string:
        return "\\boxed " + string.split("\\boxed ")[-1].split("$")[0]
    if idx < 0:
        idx = string.rfind("\\fbox")
        if idx < 0:
            return string
    i = idx
    right_brace_idx = None
    num_left_braces_open = 0
    while i < len(string):
        if string[i] == "{":
            num_left_braces_open += 1
        if string[i] == "}":
            num_left_braces_open -= 1
            if num_left_braces_open == 0:
                right_brace_idx = i
                break
        i += 1
    if right_brace_idx is None:
        retval = None
    else:
        retval = string[idx: right_brace_idx + 1]
    return retval


def d1_correctness_reward_func_math(prompts, completions, answer, step=None, run_name=None, **kwargs):
    responses = [completion[0]["content"] for completion in completions]
    extracted_responses = []
    answer = [d1_remove_boxed(d1_last_boxed_only_string(a)) for a in answer]
    for r in responses:
        try:
            r = d1_remove_boxed(d1_last_boxed_only_string(r))
        except:  # noqa: E722
            pass
        extracted_responses.append(r)
    # d1's is_equiv (math500_utils) is the Hendrycks normaliser, the same code as eval/parser_helper.py,
    # whose transcription trainers.tasks.d1.is_equiv is checked against in test_tasks.py.
    return [2.0 if ours_d1.is_equiv(r, a) else 0.0 for r, a in zip(extracted_responses, answer)]


def d1_boxed_and_answer_tags_format_reward(prompts, completions, answer, step=None, run_name=None, **kwargs):
    boxed_in_answer_rewards = d1_boxed_in_answer(prompts, completions, answer, step=step)
    return [b * 0.5 for b in boxed_in_answer_rewards]


# --- cases ---------------------------------------------------------------------------------------

GSM_TEXTS = [
    "<reasoning>\n3 + 4 = 7\n</reasoning>\n<answer>\n7\n</answer>\n",
    "<reasoning>\n3 + 4 = 7\n</reasoning>\n<answer>\n7\n</answer>\ntrailing words",
    "<reasoning>3 + 4 = 7</reasoning> <answer>7</answer>",
    "<reasoning>line one\nline two</reasoning><answer>7</answer>",
    "<reasoning>\nx\n</reasoning>\n<answer>\n7.0\n</answer>",
    "<answer>\n-7\n</answer>",
    "the answer is 7",
    "",
    "<answer>7</answer><answer>8</answer>",
    "<reasoning>\n<reasoning>\n</reasoning>\n<answer>\n 7 \n</answer>\n\n\n",
    "</answer>7<answer>",
]
COUNTDOWN_TEXTS = [
    "<answer>\n2*4-3\n</answer>", "<answer>3+4-2</answer>", "<answer>2*4*3</answer>", "<answer>2/(4-4)+3</answer>",
    "<answer>(2+4</answer>", "<answer>import os</answer>", "<answer></answer>", "no tags 2*4-3",
    "<answer>1</answer> <answer>4*2-3</answer>", "<answer>2 * 4 - 3 = 5</answer>", "<answer>2**4-3</answer>",
    "<answer>4/2*3-1</answer>",
]
SUDOKU_TEXTS = [
    "<answer>\n1324423121433412\n</answer>", "<answer>1324 4231 2143 3412</answer>", "<answer>1324</answer>",
    "<answer>13244231214334121111</answer>", "<answer>abc</answer>", "<answer></answer>", "1324423121433412",
    "<answer>0000000000000000</answer><answer>1324423121433412</answer>", "<answer>1 3 2 4\n4 2 3 1</answer>",
]
MATH_TEXTS = [
    "<reasoning>x</reasoning><answer>\\boxed{\\frac{1}{2}}</answer>", "<answer>\\boxed{0.5}</answer>",
    "<answer>\\boxed{3}</answer>", "\\boxed{3", "<answer>3</answer>", "\\boxed 3$", "3", "",
    "<answer>\\boxed{\\dfrac12}</answer>", "\\boxed{\\text{ cm} 3}", "<answer>1/2</answer>",
    "<answer>\x08oxed{1/2}</answer>", "\\fbox{1/2}",
]


def quiet(fn, *a, **kw):
    with contextlib.redirect_stdout(io.StringIO()):
        return fn(*a, **kw)


def conv(texts):
    return [[{"role": "assistant", "content": t}] for t in texts]


def test_gsm8k_rewards_equal_d1():
    rows = [{"question": "q", "answer": "steps\n#### 7"}] * len(GSM_TEXTS)
    gold = [d1_extract_hash_answer(r["answer"]) for r in rows]
    prompts = [[{"role": "user", "content": "q"}]] * len(GSM_TEXTS)
    ours = score_completions("gsm8k", GSM_TEXTS, rows)
    d1 = {"xmlcount": d1_xmlcount_reward_func(conv(GSM_TEXTS)),
          "soft_format": d1_soft_format_reward_func(conv(GSM_TEXTS)),
          "strict_format": d1_strict_format_reward_func(conv(GSM_TEXTS)),
          "int": d1_int_reward_func(conv(GSM_TEXTS)),
          "correctness": quiet(d1_correctness_reward_func, prompts, conv(GSM_TEXTS), gold)}
    assert list(ours) == [n for n, _ in REWARDS["gsm8k"]] == list(d1)
    for name in d1:
        assert ours[name] == pytest.approx(d1[name], abs=0), name
    assert ours["correctness"][0] == 2.0 and ours["strict_format"][0] == 0.5  # a case that scores


def test_countdown_reward_equals_d1():
    rows = [{"numbers": [2, 3, 4], "target": 5}] * len(COUNTDOWN_TEXTS)
    ours = score_completions("countdown", COUNTDOWN_TEXTS, rows)["countdown"]
    d1 = quiet(d1_countdown_reward_func, None, conv(COUNTDOWN_TEXTS), "run",
               target=[r["target"] for r in rows], numbers=[r["numbers"] for r in rows])
    assert ours == pytest.approx(d1, abs=0)
    assert set(ours) == {0.0, 0.1, 1.0}


def test_sudoku_reward_equals_d1():
    rows = [{"puzzle": "0304003120033410", "solution": "1324423121433412"}] * len(SUDOKU_TEXTS)
    ours = score_completions("sudoku", SUDOKU_TEXTS, rows)["sudoku"]
    d1 = quiet(d1_sudoku_reward_func, None, conv(SUDOKU_TEXTS), "run",
               puzzle=[r["puzzle"] for r in rows], solution=[r["solution"] for r in rows])
    assert ours == pytest.approx(d1, abs=0)
    assert ours[0] == 1.0 and 0 < ours[2] < 1


@pytest.mark.parametrize("gold", ["The answer is $\\boxed{\\frac{1}{2}}$.", "3", "\\frac12"])
def test_math_rewards_equal_d1(gold):
    rows = [{"problem": "p", "solution": gold}] * len(MATH_TEXTS)
    prompts = [[{"role": "user", "content": "p"}]] * len(MATH_TEXTS)
    ours = score_completions("math500", MATH_TEXTS, rows)
    assert list(ours) == ["correctness", "boxed_and_answer_tags_format"]
    assert ours["correctness"] == d1_correctness_reward_func_math(prompts, conv(MATH_TEXTS), [gold] * len(MATH_TEXTS))
    assert ours["boxed_and_answer_tags_format"] == d1_boxed_and_answer_tags_format_reward(
        prompts, conv(MATH_TEXTS), [gold] * len(MATH_TEXTS))
    assert 2.0 in ours["correctness"]


def test_a_reward_never_raises():
    """Rows d1's code would crash on (a gold answer whose box is unbalanced, missing keys) score 0."""
    out = score_completions("math500", ["\\boxed{1}"], [{"problem": "p", "solution": "\\boxed{1"}])
    assert out["correctness"] == [0.0]
    out = score_completions("sudoku", ["<answer>1234</answer>", "x"], [{"puzzle": "0000"}, {"puzzle": "0" * 16, "solution": "1" * 16}])
    assert out["sudoku"] == [0.0, 0.0]
    out = score_completions("countdown", ["<answer>1+1</answer>"], [{"numbers": None, "target": "x"}])
    assert out["countdown"] == [pytest.approx(0.1)]
    assert np.isfinite(score_completions("gsm8k", [None], [{}])["xmlcount"][0])
