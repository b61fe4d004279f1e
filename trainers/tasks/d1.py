"""d1's evaluation protocol: its prompts and the semantics of its answer parsers.

d1 (dllm-reasoning/d1, `eval/`) is the protocol GIFT and LIFT report on. Its scores come from
`eval/parse_and_get_acc.py` (with `eval/parser_helper.py`), run over the generation files of
`eval/eval.py`. Every function here reproduces the verdict of the d1 function named in its docstring
on any input, quirks included (a Countdown answer without `\\boxed{}` is read from the whole
generation; a MATH answer without one is the whole generation; `\\boxed{1,234}` is 1 on GSM8K).
Two things differ by construction, never in the verdict: no `eval` (Countdown expressions are
evaluated by walking their syntax tree with Python's own operators, so the values are eval's), and
nothing raises: an input that makes d1's code raise or hang is scored as d1 scores an exception
(wrong), not propagated; and every extraction runs in time linear in the generation. d1's patterns
`<answer>(.*?)</answer>`, `\\boxed{(.*?)}`, `([0-9+\\-*/() ]+)=[0-9. ]+` and
`<answer>.*?```\\s*([\\d\\s]+)```` backtrack quadratically on text a looping model writes (`<answer>`
repeated 32000 times took 100 s for one Sudoku verdict); each is replaced by a scan that finds the
match Python's `re` finds (the leftmost, with the same group), documented beside it and checked
against d1's parser on a fuzzed corpus (tests/trainers/test_scorer_speed.py).
"""

from __future__ import annotations

import ast
import math
import operator
import re

# ---------------------------------------------------------------------------------------------
# Item sets (eval/eval.py, eval/gsm8k.py)

D1_SUBSAMPLE = {"countdown": 256, "sudoku": 256}  # eval.py's num_evals; GSM8K and MATH-500: every row
D1_SEED = 42  # eval.py's init_seed(42), which seeds numpy before the dataset is built


def d1_items(rows: list, task: str) -> list:
    """The items d1 scores from one of its test files, in its order: for Countdown and Sudoku,
    `np.random.choice(len(rows), 256, replace=False)` right after `np.random.seed(42)` (GSM8KDataset's
    `subsample`, which the Sudoku and Countdown datasets inherit); other tasks, every row. A file with
    fewer rows than d1 draws (d1 asserts) is kept whole."""
    import numpy as np

    n = D1_SUBSAMPLE.get(task, -1)
    if n == -1 or len(rows) < n:
        return rows
    return [rows[int(i)] for i in np.random.RandomState(D1_SEED).choice(len(rows), n, replace=False)]


# ---------------------------------------------------------------------------------------------
# Prompts (eval/gsm8k.py, eval/math500.py, eval/countdown.py, eval/sudoku.py)

GSM8K_SYSTEM_PROMPT = (
    "You are a math expert. You will be given a question to solve. Solve it step by step. Wrap the final answer "
    "in a \\boxed{}. \nRespond in the following format:\n<reasoning>\nYour reasoning here\n</reasoning>\n"
    "<answer>\n\\boxed{...}\n</answer>"
)
# d1's MATH-500 prompt differs from GSM8K's: no space after "\boxed{}.", and a stray '" \n' at the end.
MATH500_SYSTEM_PROMPT = (
    "You are a math expert. You will be given a question to solve. Solve it step by step. Wrap the final answer "
    "in a \\boxed{}.\nRespond in the following format:\n<reasoning>\nYour reasoning here\n</reasoning>\n"
    "<answer>\n\\boxed{...}\n</answer>\" \n"
)
COUNTDOWN_SYSTEM_PROMPT = (
    "Using only the provided numbers, create an arithmetic expression that evaluates to exactly the provided target "
    "number. You may use the operations +, -, *, and / as needed, but each number must be used exactly once. Think "
    "step-by-step. After reasoning, provide only your final expression inside \\boxed{} tags without including an "
    "equals sign or the target number. For example: \\boxed{a + b * c}Respond in the following format:\n"
    "<reasoning>\nYour reasoning here\n</reasoning>\n<answer>\n\\boxed{...}\n</answer>"
)
SUDOKU_SYSTEM_PROMPT = (
    "\nPlease solve the following 4x4 Sudoku puzzle. The puzzle is provided as a 16-character string reading "
    "left-to-right, top-to-bottom, where '0' represents empty cells.\n\nRules:\n- Fill empty cells with digits 1-4\n"
    "- Each row must contain digits 1-4 exactly once\n- Each column must contain digits 1-4 exactly once\n"
    "- Each 2x2 box must contain digits 1-4 exactly once\n\nImportant: Your solution must be a COMPLETE 16-character "
    "string with only the digits 1-4, representing your final solved grid.\n\nRespond in this exact format:\n"
    "<reasoning>\nYour step-by-step solving process\n</reasoning>\n<answer>\n[16-character solution string with no "
    "spaces or separators]\n</answer>\n"
)


def user_message(system_prompt: str | None, question: str) -> str:
    """d1's `create_prompt` (zero-shot): the system prompt and the question in one user message."""
    return question if system_prompt is None else system_prompt + "\n\n" + question


# ---------------------------------------------------------------------------------------------
# parser_helper.py: boxed extraction and MATH normalisation


def last_boxed_only_string(text: str) -> str | None:
    """d1's `last_boxed_only_string`: the last `\\boxed{...}` with its braces, the text after the last
    `\\boxed ` up to a `$`, the whole text when there is no `\\boxed`/`\\fbox`, None when unbalanced."""
    if "\\boxed " in text:
        return "\\boxed " + text.split("\\boxed ")[-1].split("$")[0]
    start = text.rfind("\\boxed")
    if start < 0:
        start = text.rfind("\\fbox")
        if start < 0:
            return text
    depth = 0
    for i in range(start, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[start:i + 1]
    return None


def remove_boxed(s: str | None) -> str:
    """d1's `remove_boxed`; raises TypeError on None, as d1's does (its callers catch it)."""
    if "\\boxed " in s:
        if not s.startswith("\\boxed "):
            raise AssertionError("\\boxed inside, not at the start")  # d1 asserts here
        return s[len("\\boxed "):]
    if s.startswith("\\boxed{") and s.endswith("}"):
        return s[len("\\boxed{"):-1]
    return s


def boxed_answer(text: str) -> str | None:
    """`remove_boxed(last_boxed_only_string(text))` inside d1's try: None where that raises."""
    try:
        return remove_boxed(last_boxed_only_string(text))
    except (TypeError, AssertionError):
        return None


def _fix_fracs(s: str) -> str:
    parts = s.split("\\frac")
    out = parts[0]
    for sub in parts[1:]:
        out += "\\frac"
        if sub[0] == "{":  # IndexError on "...\\frac" at the end, as in d1 (is_equiv catches it)
            out += sub
            continue
        if len(sub) < 2:
            return s
        a, b, rest = sub[0], sub[1], sub[2:]
        out += "{" + a + "}" + ("{" + b + "}" + rest if b != "{" else b + rest)
    return out


def _remove_right_units(s: str) -> str:
    if "\\text{ " in s:
        left, right = s.split("\\text{ ")  # ValueError on two of them, where d1 asserts
        return left
    return s


def _fix_sqrt(s: str) -> str:
    if "\\sqrt" not in s:
        return s
    parts = s.split("\\sqrt")
    out = parts[0]
    for sub in parts[1:]:
        out += "\\sqrt" + sub if sub[0] == "{" else "\\sqrt{" + sub[0] + "}" + sub[1:]
    return out


def _fix_a_slash_b(s: str) -> str:
    parts = s.split("/")
    if len(parts) != 2:
        return s
    a, b = int(parts[0]), int(parts[1])  # ValueError propagates, as in d1 (only its assert is caught)
    return "\\frac{" + str(a) + "}{" + str(b) + "}" if s == f"{a}/{b}" else s


def strip_string(s: str) -> str:
    """d1's (Hendrycks') `strip_string`; raises where d1's raises."""
    s = s.replace("\n", "").replace("\\!", "").replace("\\\\", "\\")
    s = s.replace("tfrac", "frac").replace("dfrac", "frac").replace("\\left", "").replace("\\right", "")
    s = s.replace("^{\\circ}", "").replace("^\\circ", "").replace("\\$", "")
    s = _remove_right_units(s)
    s = s.replace("\\%", "")  # d1 also replaces "\%", the same two characters
    s = s.replace(" .", " 0.").replace("{.", "{0.")
    if not s:
        return s
    if s[0] == ".":
        s = "0" + s
    halves = s.split("=")
    if len(halves) == 2 and len(halves[0]) <= 2:
        s = halves[1]
    s = _fix_sqrt(s).replace(" ", "")
    s = _fix_fracs(s)
    if s == "0.5":
        s = "\\frac{1}{2}"
    return _fix_a_slash_b(s)


def is_equiv(a: str | None, b: str | None) -> bool:
    """d1's `is_equiv` for strings: normalised equality, raw equality where normalising raises."""
    if a is None or b is None:
        return a is None and b is None
    try:
        return strip_string(a) == strip_string(b)
    except Exception:  # noqa: BLE001 - d1 falls back to raw equality on any error
        return a == b


# ---------------------------------------------------------------------------------------------
# Linear-time equivalents of d1's backtracking patterns. Each returns what `re` returns for the
# pattern it names: the leftmost match, its group, or None.

_ANSWER, _END_ANSWER = "<answer>", "</answer>"


def first_answer(text: str) -> str | None:
    """`re.search(r"<answer>(.*?)</answer>", text, re.DOTALL).group(1)`, or None: the text between the
    first <answer> and the first </answer> after it (a later <answer> can only see fewer </answer>s,
    so when the first has none, none matches)."""
    start = text.find(_ANSWER)
    if start < 0:
        return None
    end = text.find(_END_ANSWER, start + len(_ANSWER))
    return None if end < 0 else text[start + len(_ANSWER):end]


def boxed_contents(text: str):
    """`re.findall(r"\\boxed{(.*?)}", text)`, lazily: for each `\\boxed{` left to right (skipping those
    inside a match), the text up to the first '}' when no newline comes before it ('.' stops at a
    newline). The next '}' and newline are found once and reused while they lie ahead: one pass."""
    n, pos, close, newline = len(text), 0, -1, -1
    while True:
        p = text.find("\\boxed{", pos)
        if p < 0:
            return
        s = p + len("\\boxed{")
        if close < s:
            close = text.find("}", s) % (n + 1)  # -1 (none) becomes n: past every start
        if newline < s:
            newline = text.find("\n", s) % (n + 1)
        if close == n:
            return  # no '}' after this start, so none after any later one
        if close < newline:
            yield text[s:close]
            pos = close + 1
        else:
            pos = p + 1


_EXPRESSION_RUN = re.compile(r"[0-9+\-*/() ]+")


def equation_left_side(expr: str) -> str | None:
    r"""`re.search(r"([0-9+\-*/() ]+)=[0-9. ]+", expr).group(1)`, or None. The group is a run of those
    characters that must end right before the '=' ('=' is not one of them), so the leftmost match
    starts a maximal run that is followed by '=' and a digit, '.' or space: one pass over the runs."""
    for m in _EXPRESSION_RUN.finditer(expr):
        j = m.end()
        if expr[j:j + 1] == "=" and expr[j + 1:j + 2] in tuple("0123456789. "):
            return m.group()
    return None


_DIGITS_OR_SPACE = re.compile(r"[\d\s]*")


def fenced_answer(text: str) -> str | None:
    r"""`re.search(r"<answer>.*?```\s*([\d\s]+)```", text, re.DOTALL).group(1)`, or None. After the
    first <answer> (later ones see a subset of the same text), the first ``` whose following run of
    digits and whitespace is non-empty and closed by ```; the group is that run without its leading
    whitespace (`\s*` is greedy), or its last character when it is all whitespace. A run holds no
    backtick, so the runs tried do not overlap: one pass."""
    start = text.find(_ANSWER)
    if start < 0:
        return None
    fence = text.find("```", start + len(_ANSWER))
    while fence >= 0:
        i = fence + 3
        j = _DIGITS_OR_SPACE.match(text, i).end()
        if j > i and text.startswith("```", j):
            run = text[i:j]
            return run.lstrip() or run[-1]
        # A fence cannot start inside a non-empty run (it holds no backtick); after an empty run the
        # next fence may overlap this one ("````12```").
        fence = text.find("```", j if j > i else fence + 1)
    return None


def answer_until(text: str, ends: tuple[str, ...]) -> str | None:
    """`re.search(rf"<answer>(.*?)(?:{'|'.join(map(re.escape, ends))})", text, re.DOTALL).group(1)`, or
    None: from the first <answer> to the nearest of `ends` after it."""
    start = text.find(_ANSWER)
    if start < 0:
        return None
    start += len(_ANSWER)
    found = [k for k in (text.find(e, start) for e in ends) if k >= 0]
    return text[start:min(found)] if found else None


# ---------------------------------------------------------------------------------------------
# parse_and_get_acc.py


def gsm8k_gold(answer: str) -> float | None:
    """d1's `Parser.extract_answer_gsm8k`: the number after '####' (no sign), or None."""
    m = re.search(r"####\s*\$?([\d,]+(?:\.\d+)?)", answer)
    return float(m.group(1).replace(",", "")) if m else None


def _float(s: str) -> float | None:
    try:
        return float(s)
    except (ValueError, OverflowError):
        return None


def gsm8k_answer(text: str) -> float | None:
    """d1's `parse_gsm_answers` extraction: the first `\\boxed{...}` (up to its first '}', on one line)
    that is not empty or dots and reads as a float or holds a number (its first); else the content of
    the first <answer>...</answer>, as a float or its last number."""
    for content in boxed_contents(text):  # re.findall(r"\\boxed{(.*?)}", text)
        content = content.strip()
        if content and content != "..." and not re.match(r"^\.+$", content):
            value = _float(content)
            if value is not None:
                return value
            numbers = re.findall(r"-?\d+\.?\d*", content)
            if numbers:
                return float(numbers[0])
    content = first_answer(text)  # re.search(r"<answer>(.*?)</answer>", text, re.DOTALL)
    if content and content.strip():
        content = content.strip()
        value = _float(content)
        if value is not None:
            return value
        numbers = re.findall(r"-?\d+\.?\d*", content)
        if numbers:
            return float(numbers[-1])
    return None


def math_answer(text: str) -> str | None:
    """d1's `parse_math_answers` extraction: the last boxed content (the whole text when there is no
    box), else, when that is empty or unbalanced, the first <answer> content."""
    answer = boxed_answer(text)
    if not answer:
        tagged = first_answer(text)
        if tagged is not None:
            answer = tagged.strip()
    return answer


def countdown_expression(text: str) -> str:
    """d1's `parse_countdown_answers` extraction: the last boxed content (the whole text when there is
    no box; the first <answer> content, else the whole text, when the box is unbalanced), LaTeX
    operators replaced, and the left side of the first "expression = number"."""
    try:
        expr = remove_boxed(last_boxed_only_string(text))
    except (TypeError, AssertionError):
        tagged = first_answer(text)
        expr = tagged.strip() if tagged is not None else text
    expr = expr.replace("\\div", "/").replace("\\times", "*").replace("\\cdot", "*")
    left = equation_left_side(expr)  # re.search(r"([0-9+\-*/() ]+)=[0-9. ]+", expr)
    return left.strip() if left is not None else expr


def uses_exactly(expr: str, numbers) -> bool:
    """d1's `validate_equation`: the integers written in expr are the given numbers, as multisets."""
    try:
        return sorted(int(n) for n in re.findall(r"\d+", expr)) == sorted(numbers)
    except (ValueError, TypeError):
        return False


_BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
           ast.FloorDiv: operator.floordiv, ast.Pow: operator.pow}
_UNARY = {ast.UAdd: operator.pos, ast.USub: operator.neg}
_MAX_POW_BITS = 1 << 16  # an int power past this is astronomically far from any target; d1's eval would hang


def _pow(a, b):
    if type(a) is int and type(b) is int and b > 0 and abs(a) > 1 and b * math.log2(abs(a)) > _MAX_POW_BITS:
        return math.inf if a > 0 or b % 2 == 0 else -math.inf
    return operator.pow(a, b)


def countdown_value(expr: str):
    """d1's `evaluate_equation` (the copy in parse_and_get_acc.py): the value Python's eval gives an
    expression of digits, + - * / ( ) . and whitespace, or inf where d1's eval raises. Evaluated
    without eval and without recursion: the parser is Python's, each operation Python's operator."""
    if not re.match(r"^[\d+\-*/().\s]+$", expr):
        return math.inf
    try:
        tree = ast.parse(expr.strip(), mode="eval").body
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return math.inf
    values: list = []
    stack: list = [(tree, False)]
    try:
        while stack:  # post-order walk: a 3000-term expression needs no Python recursion
            node, ready = stack.pop()
            if isinstance(node, ast.Constant):
                if type(node.value) not in (int, float):
                    return math.inf  # `...`: d1's eval returns Ellipsis and its caller's arithmetic fails
                values.append(node.value)
            elif isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
                if not ready:
                    stack += [(node, True), (node.right, False), (node.left, False)]
                else:
                    b, a = values.pop(), values.pop()
                    values.append(_pow(a, b) if isinstance(node.op, ast.Pow) else _BINARY[type(node.op)](a, b))
            elif isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
                if not ready:
                    stack += [(node, True), (node.operand, False)]
                else:
                    values.append(_UNARY[type(node.op)](values.pop()))
            else:
                return math.inf  # a call "2(3)" or a tuple "()": eval raises or the caller's arithmetic does
    except (ArithmeticError, ValueError, TypeError, MemoryError):
        return math.inf
    return values[0]


def countdown_correct(value, target) -> bool:
    try:
        return target is not None and abs(value - target) < 1e-5
    except (TypeError, OverflowError):
        return False


D1_END_MARKERS = ("<|eot_id|>", "<|endoftext|>")  # LLaDA's EoT and EOS, as d1's decode writes them


def sudoku_patterns(end_markers: tuple[str, ...] = D1_END_MARKERS) -> tuple[str, ...]:
    """d1's five Sudoku patterns. d1 writes LLaDA's end tokens into two of them; `end_markers` lets
    a model with another tokenizer end its answer with its own (LLaDA's give d1's patterns exactly)."""
    end = "|".join(re.escape(m) for m in end_markers)
    return (
        r"<answer>.*?```\s*([\d\s]+)```",
        rf"<answer>(.*?)(?:{end}|</answer>)",
        rf"</answer>\s*(.*?)(?:{end}|$)",
        r"(\d{16})\s*</answer>",  # d1 writes r".*?(\d{16})\s*</answer>": the same first match, in linear time
        r"\b(\d{16})\b",
    )


def sudoku_puzzle(question: str) -> str | None:
    """d1's puzzle extraction from its question text ("Solve the following Sudoku puzzle: ...")."""
    if len(question) >= 16 and question[:16].isdigit():
        return question[:16]
    m = re.search(r"Sudoku puzzle: ([0-9]{16})", question)
    return m.group(1) if m else None


def sudoku_answer(text: str, end_markers: tuple[str, ...] = D1_END_MARKERS) -> str:
    """d1's `parse_sudoku_answers` extraction: the first of its five patterns with non-blank content,
    whitespace removed, padded with '0' or cut to 16 characters ("" when none matches)."""
    found = ""
    patterns = sudoku_patterns(end_markers)
    for k, pattern in enumerate(patterns):
        if k == 0:
            group = fenced_answer(text)  # patterns[0], in linear time
        elif k == 1:
            group = answer_until(text, (*end_markers, _END_ANSWER))  # patterns[1], in linear time
        else:  # the others are linear as they stand (the last three never backtrack past a line's worth)
            m = re.search(pattern, text, re.DOTALL)
            group = m.group(1) if m else None
        if group and group.strip():
            found = group.strip()
            break
    found = re.sub(r"\s", "", found)
    return found[:16].ljust(16, "0") if found else ""


def sudoku_cells(answer: str, puzzle: str, solution: str) -> tuple[int, int]:
    """(right empty cells, empty cells): d1's count over the puzzle's '0' cells."""
    empty = [i for i in range(16) if puzzle[i] == "0"]
    right = sum(1 for i in empty if answer[i] == solution[i]) if answer else 0
    return right, len(empty)
