"""Tasks on d1's protocol: generators, scorers on hand-written and d1 generations, the evaluation command, the demo."""

import json
import os
import subprocess
import sys

import pytest

from trainers.tasks import get_task
from trainers.tasks.countdown import solve
from trainers.tasks.sudoku import all_grids, count_solutions, is_valid_solution
from tests.helpers import FIXTURES

ROOT = FIXTURES.parent.parent  # the repository (the subprocesses run in tmp_path)


def test_every_generated_sudoku_has_exactly_one_solution():
    rows = get_task("sudoku").generate(300, seed=3)
    assert len(all_grids()) == 288
    for r in rows:
        assert count_solutions(r["puzzle"], limit=3) == 1
        assert is_valid_solution(r["solution"])
        assert all(p in ("0", s) for p, s in zip(r["puzzle"], r["solution"]))
        assert 6 <= r["puzzle"].count("0") <= 10


# Verdicts below are d1's (dllm-reasoning/d1 eval/parse_and_get_acc.py), derived by reading its code
# and checked against it; each case is one where a naive reading of the answer tag disagrees.
SUDOKU_ROW = {"puzzle": "0312010400201243", "solution": "4312213434211243"}  # 6 empty cells: 0, 4, 6, 8, 9, 11


@pytest.mark.parametrize(
    "generation,cells",
    [
        ("<reasoning>x</reasoning><answer>\n4312 2134\n3421 1243\n</answer>", 6),  # whitespace removed
        ("<answer>4312213434211243</answer>", 6),
        ("<answer>\n```\n4312\n2134\n3421\n1243\n```\n</answer>", 6),     # pattern 1: a code block
        ("<answer>4312213434211243<|eot_id|>", 6),                             # unclosed, ends at <|eot_id|>
        ("<answer>4312213434211243", 6),  # unclosed, no end token: pattern 5, a bare 16-digit number
        ("<answer>43122", 0),             # unclosed and short: no pattern matches
        ("<answer>43122</answer>", 2),    # short: padded with '0' (cells 0 and 4 right)
        ("<answer>4312213434211243 and more text 9999</answer>", 6),  # long: cut to 16 characters
        ("<answer>  </answer>\n4312213434211243<|eot_id|>", 6),      # empty tag: pattern 3, after </answer>
        ("<answer>[4312213434211243]</answer>", 1),  # the bracket shifts every cell by one
        ("I think 4312213434211243 is it", 6),       # pattern 5: a bare 16-digit number
        ("no answer", 0),
    ],
)
def test_sudoku_scorer_is_d1s(generation, cells):
    assert get_task("sudoku").score(generation, SUDOKU_ROW)["correct_cells"] == cells


def test_sudoku_answers_end_at_the_models_own_end_token_too():
    task = get_task("sudoku")
    generation = "</reasoning><answer>43122134342112431<|eos|>"  # no </answer>: 17 digits up to the EOS
    assert task.score(generation, SUDOKU_ROW)["correct_cells"] == 0  # d1's patterns know LLaDA's tokens only
    task.end_markers = task.end_markers + ("<|eos|>",)  # what the evaluation adds for this tokenizer
    assert task.score(generation, SUDOKU_ROW)["correct_cells"] == 6


def test_sudoku_summary_sums_cells_over_the_set():
    task = get_task("sudoku")
    row2 = {"puzzle": "0000000000000000", "solution": "4312213434211243"}
    scores = [task.score("<answer>4312213434211243</answer>", SUDOKU_ROW), task.score("<answer>4312</answer>", row2)]
    assert task.summarize(scores) == {"n": 2, "cell_accuracy": (6 + 4) / (6 + 16), "solved_rate": 0.5}


def test_every_generated_countdown_is_solvable():
    task = get_task("countdown")
    for r in task.generate(200, seed=5):
        assert len(r["numbers"]) in (3, 4) and r["target"] > 0
        assert solve(r["numbers"], r["target"]) is not None
        assert task.score(task.response(r), r)["correct"]


@pytest.mark.parametrize(
    "generation,ok",
    [
        ("<answer>\\boxed{(25 - 5) * 3}</answer>", True),
        ("<answer>\\boxed{3 \\times (25 - 5)}</answer>", True),       # LaTeX operators
        ("<answer>\\boxed{(25 - 5) * 3 = 60}</answer>", True),          # "= target" dropped
        ("\\boxed{25} then <answer>\\boxed{(25-5)*3}</answer>", True),  # the last box
        ("<answer>(25 - 5) * 3</answer>", False),  # no box: d1 reads the whole generation, tags included
        ("(25 - 5) * 3", True),                      # ... which here is the expression
        ("<answer>\\boxed{(25 - 5) * 3</answer>", False),  # unbalanced box: the answer tag, "\\boxed{" and all
        ("<answer>\\boxed{60 = (25 - 5) * 3}</answer>", False),  # target on the left: numbers differ
        ("<answer>\\boxed{(25 - 5) * 3 * 1}</answer>", False),      # an unlisted number
        ("<answer>\\boxed{25 * 3 - 5}</answer>", False),           # wrong value
        ("<answer>\\boxed{(25 - 5) ** 3 // 400 * 3}</answer>", False),  # numbers differ (400)
        ("<answer>\\boxed{5 ** 3 - 25 * 3 + 10}</answer>", False),
        ("<answer>\\boxed{(25 - 5)(3)}</answer>", False),          # a call: eval raises
        ("<answer>\\boxed{25 / (5 - 5) * 3}</answer>", False),     # division by zero
        ("<answer>\\boxed{x = (25 - 5) * 3}</answer>", False),     # a letter: not evaluated
    ],
)
def test_countdown_verifier_is_d1s(generation, ok):
    assert get_task("countdown").score(generation, {"numbers": [3, 5, 25], "target": 60})["correct"] is ok


def test_countdown_power_and_fractions():
    task = get_task("countdown")
    assert task.score("\\boxed{(7 / 3) * 3 + 1}", {"numbers": [7, 3, 3, 1], "target": 8})["correct"]
    assert task.score("\\boxed{2 ** 3 + 1}", {"numbers": [1, 2, 3], "target": 9})["correct"]  # eval allows **
    # eval would hang on 9 ** 9 ** 99; d1's verdict, were it ever reached, is "wrong value".
    assert not task.score("\\boxed{9 ** 9 ** 99}", {"numbers": [9, 9, 99], "target": 9})["correct"]


def test_scorers_never_raise_on_adversarial_generations():
    long_sum = " + ".join(["1"] * 3000)
    generations = [long_sum, f"\\boxed{{{long_sum}}}", "(" * 1000 + "1" + ")" * 1000, "-" * 1000 + "1",
                   "\\boxed{" * 500, "}" * 500 + "\\boxed", "<answer>" * 300, "\\frac" * 300 + "\\sqrt",
                   "\\boxed{" + "9" * 4400 + "}", "\\boxed{1 / 2 / 3 \\text{ a}\\text{ b}}"]
    rows = {"countdown": {"numbers": [1] * 3000, "target": 3000}, "sudoku": SUDOKU_ROW,
            "gsm8k": {"question": "q", "answer": "#### 3000"}, "math500": {"problem": "p", "answer": "3000"}}
    for name, row in rows.items():
        for g in generations:
            assert isinstance(get_task(name).score(g, row)["correct"], bool)
    # d1's eval raises RecursionError on it ("during compilation"), which it scores wrong; so do we.
    assert not get_task("countdown").score(f"\\boxed{{{long_sum}}}", rows["countdown"])["correct"]


@pytest.mark.parametrize(
    "generation,gold,ok",
    [
        ("so \\boxed{18} dollars", 18.0, True),
        ("\\boxed{} then \\boxed{...} then \\boxed{18}", 18.0, True),  # empty and dotted boxes skipped
        ("\\boxed{1,234}", 1234.0, False),           # float() fails; the first number is 1
        ("\\boxed{\\$18}", 18.0, True),
        ("\\boxed{18.0}", 18.0, True),
        ("\\boxed{x} \\boxed{18}", 18.0, True),     # a box without a number is passed over
        ("\\boxed{18 - 3 = 15}", 15.0, False),      # the first number in the box
        ("\\boxed{\\frac{36}{2}}", 18.0, False),    # the box ends at the first '}': "\\frac{36"
        ("\\boxed{17} <answer>18</answer>", 18.0, False),  # the box wins over the answer tag
        ("<answer>The total is 3 times 6 = 18</answer>", 18.0, True),  # the tag's last number
        ("<answer>18", 18.0, False),                  # an unclosed tag is not read
        ("\\boxed{-3}", -3.0, True),
        ("no number", 18.0, False),
    ],
)
def test_gsm8k_scorer_is_d1s(generation, gold, ok):
    assert get_task("gsm8k").score(generation, {"question": "q", "ground_truth": gold})["correct"] is ok


def test_gsm8k_gold_is_d1s():
    task = get_task("gsm8k")
    assert task.gold({"answer": "16 - 3 - 4 = 9 ... #### 1,234"}) == 1234.0
    assert task.gold({"answer": "#### -3"}) is None  # d1's gold pattern has no sign: never scored correct
    assert not task.score("\\boxed{-3}", {"question": "q", "answer": "#### -3"})["correct"]


@pytest.mark.parametrize(
    "generation,gold,ok",
    [
        ("first \\boxed{1} then \\boxed{\\dfrac{3}{4}}", "\\frac{3}{4}", True),  # the last box
        ("\\boxed{\\frac{3}{4}} then \\boxed{1}", "\\frac{3}{4}", False),
        ("<answer>3/4</answer>", "\\frac{3}{4}", False),  # no box: d1 compares the whole generation
        ("3/4", "\\frac{3}{4}", True),                      # ... which here is just the answer
        ("\\boxed{} <answer>3/4</answer>", "\\frac{3}{4}", True),  # empty box: the answer tag
        ("\\boxed{0.5}", "\\frac12", True),
        ("\\boxed{\\frac{2}{4}}", "\\frac{1}{2}", False),  # no numeric comparison
        ("\\boxed{x = 5}", "5", True),
        ("\\boxed{xy = 5}", "5", False),                     # "xy " is 3 characters: kept
        ("\\boxed{x=5}", "5", True),
        ("\\boxed{50\\%}", "50", True),
        ("\\boxed{50%}", "50", False),                         # a bare % stays
        ("\\boxed{\\$10}", "10", True),
        ("\\boxed{$10}", "10", False),                         # a bare $ stays
        ("\\boxed{10 \\text{ cm}}", "10", True),
        ("\\boxed 5$ and more", "5", True),                    # "\\boxed " up to '$'
        ("\\boxed{\\left( 3, 4 \\right)}", "(3,4)", True),
        ("\\boxed{x/2}", "x/2", True),                         # int('x') raises: raw equality
        ("\\boxed{x/2}", "\\frac{x}{2}", False),
    ],
)
def test_math500_scorer_is_d1s(generation, gold, ok):
    assert get_task("math500").score(generation, {"problem": "p", "answer": gold})["correct"] is ok


def test_d1_generation_files_get_d1s_verdicts():
    """Items of d1's own baseline generation files, with the verdicts d1's parser gave them."""
    for name in ("gsm8k", "math500", "countdown", "sudoku"):
        data = json.loads((FIXTURES / "d1-generations" / f"{name}.json").read_text())
        task = get_task(name)
        for item in data["generations"]:
            s = task.score(item["generations"], task.from_d1(item))
            assert (s["correct_cells"] if name == "sudoku" else s["correct"]) == item["d1_verdict"], item


# d1's prompt construction (dllm-reasoning/d1 eval/gsm8k.py, math500.py, countdown.py, sudoku.py),
# transcribed: its system prompts as it writes them, and `create_prompt` for zero-shot evaluation.
D1_GSM_SYSTEM_PROMPT = """You are a math expert. You will be given a question to solve. Solve it step by step. Wrap the final answer in a \\boxed{}. 
Respond in the following format:
<reasoning>
Your reasoning here
</reasoning>
<answer>
\\boxed{...}
</answer>"""  # noqa: W291 - d1's trailing space
D1_MATH500_SYSTEM_PROMPT = """You are a math expert. You will be given a question to solve. Solve it step by step. Wrap the final answer in a \\boxed{}.
Respond in the following format:
<reasoning>
Your reasoning here
</reasoning>
<answer>
\\boxed{...}
</answer>" 
"""  # noqa: W291
D1_CTD_SYSTEM_PROMPT = (
    "Using only the provided numbers, create an arithmetic expression that evaluates to exactly the provided target number. You may use the operations +, -, *, and / as needed, but each number must be used exactly once. Think step-by-step. After reasoning, provide only your final expression inside \\boxed"
    + "{}"
    + " tags without including an equals sign or the target number. For example: \\boxed{a + b * c}"
    + """Respond in the following format:
<reasoning>
Your reasoning here
</reasoning>
<answer>
\\boxed{...}
</answer>"""
)
D1_SUDOKU_SYSTEM_PROMPT = """
Please solve the following 4x4 Sudoku puzzle. The puzzle is provided as a 16-character string reading left-to-right, top-to-bottom, where '0' represents empty cells.

Rules:
- Fill empty cells with digits 1-4
- Each row must contain digits 1-4 exactly once
- Each column must contain digits 1-4 exactly once
- Each 2x2 box must contain digits 1-4 exactly once

Important: Your solution must be a COMPLETE 16-character string with only the digits 1-4, representing your final solved grid.

Respond in this exact format:
<reasoning>
Your step-by-step solving process
</reasoning>
<answer>
[16-character solution string with no spaces or separators]
</answer>
"""
# LLaDA-8B-Instruct's chat template (Llama 3's), which trims each message.
LLADA_CHAT_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + "
    "message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)


def _d1_create_prompt(tokenizer, system_prompt, input_text):
    messages = [{"role": "user", "content": system_prompt + "\n\n" + input_text}]
    user_input = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return user_input + "<reasoning>"


def test_prompts_are_d1s(tmp_path):
    from dlmarch.prompts import encode_prompts
    from trainers.tasks import REASONING_PREFIX
    from trainers.tokenizer import build_char_tokenizer

    csv_file = tmp_path / "4x4_test_sudoku.csv"  # d1's test sets, as they ship
    csv_file.write_text("Puzzle,Solution\n3102200002100320,3142243142131324\n")
    cd_file = tmp_path / "countdown_cd3_test.jsonl"
    cd_file.write_text('{"input": "30,100,93", "output": "23"}\n')
    gsm = {"question": "Janet has 3 apples. How many?", "answer": "3 apples\n#### 3"}
    math500 = {"problem": "Compute $\\dfrac{1}{2}+\\dfrac{1}{2}$.", "answer": "1"}
    cases = [  # (task, our row, d1's system prompt, d1's question text)
        ("gsm8k", gsm, D1_GSM_SYSTEM_PROMPT, gsm["question"]),
        ("math500", math500, D1_MATH500_SYSTEM_PROMPT, math500["problem"]),
        ("countdown", get_task("countdown").load(cd_file)[0], D1_CTD_SYSTEM_PROMPT, "Numbers: [30, 100, 93]\nTarget: 23"),
        ("sudoku", get_task("sudoku").load(csv_file)[0], D1_SUDOKU_SYSTEM_PROMPT,
         "Solve the following Sudoku puzzle: 3102200002100320\n"),
    ]
    for template in (LLADA_CHAT_TEMPLATE, None):
        tok = build_char_tokenizer()
        if template:
            tok.chat_template = template
        for name, row, system_prompt, question in cases:
            task = get_task(name)
            d1 = _d1_create_prompt(tok, system_prompt, question)
            assert task.prompt_text(tok, row) == d1, name
            # what the evaluation feeds the model: the same string, tokenised without extra specials
            (ids,) = encode_prompts(tok, [task.messages(row)], True, REASONING_PREFIX)
            assert ids == tok(d1, add_special_tokens=False).input_ids, name


def test_bad_rows_name_file_and_line(tmp_path):
    from dlmarch.errors import DlmarchError

    bad = tmp_path / "s.csv"
    bad.write_text("Puzzle,Solution\n3102200002100320,3142243142131324\n31022000021003,3142243142131324\n")
    with pytest.raises(DlmarchError, match="s.csv: line 3: puzzle must be 16 digits"):
        get_task("sudoku").load(bad)
    bad = tmp_path / "c.jsonl"
    bad.write_text('{"input": "1,2", "output": "3"}\n{"numbers": [1]}\n')
    with pytest.raises(DlmarchError, match="c.jsonl: line 2: a countdown row needs"):
        get_task("countdown").load(bad)


def test_evaluate_command_writes_every_generation(tmp_path):
    from tests.helpers import tiny_model_dir

    model, tok = tiny_model_dir(tmp_path / "m")
    data = tmp_path / "gsm.jsonl"
    data.write_text("".join(json.dumps({"question": f"{i}+1?", "answer": f"#### {i + 1}"}) + "\n" for i in range(5)))
    r = subprocess.run([sys.executable, "-m", "trainers.evaluate", "--model", str(tmp_path / "m"), "--task", "gsm8k",
                        "--data", str(data), "--gen-length", "16", "--block-length", "8"], capture_output=True, text=True,
                       cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0, r.stderr
    # the default output is in the current directory, never inside the model directory
    rows = [json.loads(x) for x in (tmp_path / "eval-m-gsm8k.jsonl").read_text().splitlines()]
    assert len(rows) == 5 and all("generation" in x and "correct" in x for x in rows)
    assert not list((tmp_path / "m").glob("eval-*"))
    summary = json.loads((tmp_path / "eval-m-gsm8k.summary.json").read_text())
    assert summary["steps"] == 8 and summary["n"] == 5  # steps default to gen_length / 2
    bad = subprocess.run([sys.executable, "-m", "trainers.evaluate", "--model", str(tmp_path / "m"), "--task", "gsm8k"],
                         capture_output=True, text=True, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)})
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
