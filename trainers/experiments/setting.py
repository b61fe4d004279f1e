"""The experiments' setting: the plan every method shares, the tasks' rows and traces, the pretraining
mixture, and the stages every experiment starts from (data, untrained models, the pretrained base).

The base is a small LLaDA pretrained with LLaDA's objective (`trainers.pt`) on a broad synthetic mixture
of short texts (arithmetic, copying, reversing, sorting, counting, the missing number of a set) that
never shows a fine-tuning task's format: no grid, no target to reach, no <reasoning>/<answer> tags, no
chat turn. Fine-tuning then has a task to teach, as it has for the papers' pretrained models, instead of
re-reading rows the base already fits.
"""

from __future__ import annotations

import ast
import json
import random
from fractions import Fraction
from pathlib import Path

from dlmarch.atomic import atomic_file
from dlmarch.errors import DlmarchError

from ..toy import TAGS, Plan, evaluate_model, new_llada, new_llama, prompt_length, score, stage, write_data

TASKS = ("sudoku", "countdown")
GEN_LENGTH, BLOCK_LENGTH = 64, 32  # two d1 blocks: the trace, then the answer
# name -> (trainer module, its options)
METHODS = {"sft": ("sft", []), "gift": ("gift", []), "blockwise": ("blockwise", ["--block-size", str(BLOCK_LENGTH)]),
           "lift3": ("lift", ["--lift-variant", "lift3"]), "lift2": ("lift", ["--lift-variant", "lift2"])}
CHARS = "0123456789abcdefghijklmnopqrstuvwxyz" + "SNT :,.=+-*/()[]\n"  # every character of the rows (no <|unk|>)

# Measured on the 2-core CPU machine (docs/experiments.md): seeds 0-2 of every experiment from an empty
# directory 5746 s (one thread, beside other work); seeds 3-5 added afterwards 2771 s (two threads). Fine-tunes use a constant lr after a 5% warmup, so the checkpoint at each budget
# is the learning curve's point at that budget.
FULL = Plan(hidden=128, layers=4, train_rows=4000, test_rows=128, base_steps=600, method_steps=400, batch=32,
            base_lr=2e-3, method_lr=1e-3, seeds=(0, 1, 2, 3, 4, 5), pt_rows=20000, pt_steps=800, pt_lr=2e-3, pt_length=128,
            budgets=(100, 200, 400), l2d_flow_dim=32, l2d_lora_rank=16, rl_steps=30, rl_lr=2e-4,
            extra={"tasks": ["sudoku"], "l2d_main_steps": 150})
QUICK = Plan(hidden=32, layers=1, train_rows=200, test_rows=8, base_steps=8, method_steps=4, batch=8, base_lr=3e-3,
             method_lr=5e-4, seeds=(0, 1), pt_rows=200, pt_steps=4, pt_lr=3e-3, pt_length=64, budgets=(2, 4),
             l2d_flow_dim=16, l2d_lora_rank=4, rl_steps=2, rl_lr=2e-4, extra={"tasks": list(TASKS), "l2d_main_steps": 4})


# --- the fine-tuning tasks: the one place that knows their rows -----------------------------------------------


def task_setup(name: str):
    """(task, response): the Task (used through its public interface only: generate, messages, score,
    summarize, primary) and the training target of a generated row, a worked trace then the answer in
    d1's format. The prompt carries no system instruction (it would cost ~400 characters per row)."""
    from trainers.tasks import get_task

    if name == "sudoku":
        task = get_task("sudoku", with_system_prompt=False)
        trace = lambda r: sudoku_trace(r["puzzle"], r["solution"])  # noqa: E731
    elif name == "countdown":
        task = get_task("countdown", sizes=(3,), with_system_prompt=False)
        trace = lambda r: countdown_trace(r["solution"])  # noqa: E731
    else:
        raise DlmarchError(f"unknown task {name!r}; expected one of {TASKS}")
    return task, lambda r: f"<reasoning>{trace(r)}</reasoning><answer>{r['solution']}</answer>"


def sudoku_trace(puzzle: str, solution: str) -> str:
    """The grid with only the cells it fills: each empty cell's digit in its place, "." for a given
    one ("4..2.1....2.1...").

    Its digits sit at one offset from the puzzle in the prompt and the answer's at one offset from
    them, so copying is position to position, as in the demo. A trace of variable length before the
    answer (the empty cells by name, "a4 c2 ...", in reading order or in the order a solver fills
    forced cells first) kept a from-scratch model at chance: 26-27% of the cells after 1200 steps,
    its answers not even copying the given cells."""
    return "".join(s if p == "0" else "." for p, s in zip(puzzle, solution))


def countdown_trace(expression: str) -> str:
    """The expression's operations innermost first with their results: "12+5=17 17*3=51"."""
    ops = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/"}
    steps = []

    def fmt(v: Fraction) -> str:
        return str(v.numerator) if v.denominator == 1 else f"{v.numerator}/{v.denominator}"

    def ev(node) -> Fraction:
        if isinstance(node, ast.Constant):
            return Fraction(node.value)
        a, b = ev(node.left), ev(node.right)
        op = ops[type(node.op)]
        v = {"+": a + b, "-": a - b, "*": a * b, "/": a / b if b else Fraction(0)}[op]
        steps.append(f"{fmt(a)}{op}{fmt(b)}={fmt(v)}")
        return v

    ev(ast.parse(expression, mode="eval").body)
    return " ".join(steps)


# --- the pretraining mixture ------------------------------------------------------------------------------------


def _digits(rng: random.Random, lo: int, hi: int, alphabet: str = "123456789") -> str:
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(lo, hi)))


def _equation(rng: random.Random) -> str:
    a, b = rng.randint(1, 60), rng.randint(1, 60)
    op = rng.choice("+-*")
    return f"{a}{op}{b}={eval(f'{a}{op}{b}')}"  # noqa: S307 - two integers and one operator of ours


def _chain(rng: random.Random) -> str:
    v, steps = rng.randint(1, 30), []
    for _ in range(rng.randint(2, 3)):
        b, op = rng.randint(1, 12), rng.choice("+-*")
        w = eval(f"{v}{op}{b}")  # noqa: S307
        steps.append(f"{v}{op}{b}={w}")
        v = w
    return " ".join(steps)


def _missing(rng: random.Random) -> str:
    n = rng.choice((4, 5, 9))
    items = list(range(1, n + 1))
    rng.shuffle(items)
    return f"missing {' '.join(map(str, items[1:]))}: {items[0]}"


MIXTURE = {  # kind -> a text of that kind; none has a fine-tuning task's format
    "equation": _equation,
    "chain": _chain,
    "copy": lambda rng: (lambda s: f"copy {s}: {s}")(_digits(rng, 3, 10)),
    "reverse": lambda rng: (lambda s: f"reverse {s}: {s[::-1]}")(_digits(rng, 3, 10)),
    "sort": lambda rng: (lambda s: f"sort {s}: {''.join(sorted(s))}")(_digits(rng, 3, 10, "1234")),
    "count": lambda rng: (lambda s, d: f"count {d} in {s}: {s.count(d)}")(_digits(rng, 4, 12, "1234"), rng.choice("1234")),
    "missing": _missing,
    "max": lambda rng: (lambda xs: f"max {' '.join(map(str, xs))}: {max(xs)}")([rng.randint(1, 99) for _ in range(3)]),
}


def mixture(n: int, seed: int) -> list[dict]:
    """n pretraining texts ({"text"}), the kinds in turn, each drawn from `seed`."""
    rng = random.Random(seed)
    kinds = list(MIXTURE.values())
    return [{"text": kinds[i % len(kinds)](rng)} for i in range(n)]


# --- the stages every experiment starts from ---------------------------------------------------------------------


def tokenizer():
    from trainers.tokenizer import build_char_tokenizer

    return build_char_tokenizer(CHARS, words=TAGS, pad_to=8)


def prepare(root: Path, name: str, plan: Plan, causal: bool = False, train_rows: int | None = None):
    """Data and an untrained model (LLaDA, or a Llama with causal=True) under root: data/train.jsonl
    (chat rows), data/rows.jsonl (the same rows as the task's, for RL), data/test.jsonl. Rows whose
    response does not fit the GEN_LENGTH canvas (with its EOS) are dropped, train and test alike;
    test prompts never occur in training. Returns (task, test rows, max_length = longest prompt + 1 +
    GEN_LENGTH)."""
    task, response = task_setup(name)
    tok = tokenizer()

    def fits(r):  # the response and its EOS fit the canvas
        return len(tok(response(r), add_special_tokens=False)["input_ids"]) < GEN_LENGTH

    n = train_rows or plan.train_rows
    key = lambda r: json.dumps(task.messages(r))  # noqa: E731
    test = [r for r in task.generate(plan.test_rows * 2, 999) if fits(r)][: plan.test_rows]
    held_out = {key(r) for r in test}
    train = [r for r in task.generate(n * 2, 1) if key(r) not in held_out and fits(r)][:n]
    write_data(root / "data", task, train, test, response)
    with open(root / "data" / "rows.jsonl", "w") as f:
        for r in train:
            f.write(json.dumps(r) + "\n")
    init = root / "init"
    if not (init / "config.json").exists():
        (new_llama if causal else new_llada)(init, tok, plan.hidden, plan.layers, 0)
    # + 1: "<reasoning>" opens the response in training and closes the prompt at evaluation
    return task, test, prompt_length(task, init, train + test) + 1 + GEN_LENGTH


def pretrained_base(out: Path, plan: Plan) -> Path:
    """The LLaDA every masked-diffusion fine-tune starts from: out/base/init (untrained), pretrained with
    `trainers.pt` on out/base/mixture.jsonl for plan.pt_steps steps of plan.batch rows of plan.pt_length
    tokens (cosine, warmup 5%, seed 0). Returns its model directory."""
    root = out / "base"
    root.mkdir(parents=True, exist_ok=True)
    texts = root / "mixture.jsonl"
    if not texts.exists():
        with atomic_file(texts) as f:  # read back as it is on a resume: never half written
            for r in mixture(plan.pt_rows, 0):
                f.write(json.dumps(r) + "\n")
    if not (root / "init" / "config.json").exists():
        new_llada(root / "init", tokenizer(), plan.hidden, plan.layers, 0)
    stage("pt", root / "init", root / "pretrained", texts, plan.pt_steps, plan.pt_lr, plan.batch, plan.pt_length, 0, True,
          ["--no-progress"])
    return root / "pretrained" / "model"


def mdm_score(name: str, model: Path, task, test: list[dict], root: Path, seed: int, **decoding) -> float:
    """A masked-diffusion model's score under d1's protocol on the experiments' canvas (GEN_LENGTH
    tokens; block length BLOCK_LENGTH and steps = GEN_LENGTH / 2 unless `decoding` says otherwise)."""
    decoding = {"gen_length": GEN_LENGTH, "block_length": BLOCK_LENGTH, **decoding}
    return score(evaluate_model(name, model, task, test, root, seed, **decoding))
