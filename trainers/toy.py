"""What the toy pipelines share: `trainers.demo`, `trainers.ar_to_diffusion_demo`, `trainers.grpo_demo`
and `trainers.experiments` each build a character tokenizer, small models and task data, run training
stages in process, evaluate, and write into an output directory they claim. This module is those
steps, once; each pipeline is its plan and the order of its stages.

- `Plan`: the one hyper-parameter setting a pipeline shares between its methods.
- `new_llada` / `new_llama`, `write_data`, `prompt_length`: what a pipeline starts from;
  `sudoku_rows` / `sudoku_length`: the demos' Sudoku setting on them.
- `stage` / `grpo_stage`: `python -m trainers.<method>` in process; a finished stage is read back, an
  interrupted one resumed from its last checkpoint.
- `evaluate_model`: d1's protocol through the model's own sampler (every family), cached on disk.
- `claim_output`, `pipeline_main`: the output directory made ours before anything is written; the
  command's one-line errors and exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path

import torch

from dlmarch.atomic import atomic_file, write_json
from dlmarch.errors import DlmarchError, os_error_line
from dlmarch.outputs import Claim

TAGS = ("<reasoning>", "</reasoning>", "<answer>", "</answer>")  # one token each in the character tokenizers
GEN_LENGTH = 32  # the demos' canvas: a 4x4 Sudoku answer and its tags fit one d1 block
MARKER = ".dlmarch-demo"  # written into every demo and experiment output: --overwrite removes only what they made


@dataclass
class Plan:
    """A toy pipeline's one hyper-parameter setting: every method of a comparison shares it.

    base_*: the stage that teaches the task (or, in the AR -> diffusion demo, the causal model);
    method_*: every fine-tune. The experiments add a pretraining stage (pt_*), the budgets of the
    learning curves, L2D's sizes and the RL stage; the demos leave them at their defaults."""

    hidden: int
    layers: int
    train_rows: int
    test_rows: int
    base_steps: int
    method_steps: int
    batch: int
    base_lr: float
    method_lr: float
    seeds: tuple[int, ...] = (0,)
    pt_rows: int = 0  # pretraining texts (0: no pretraining stage)
    pt_steps: int = 0
    pt_lr: float = 0.0
    pt_length: int = 128
    budgets: tuple[int, ...] = ()  # fine-tuning steps at which the learning curves are read (the last = method_steps)
    l2d_flow_dim: int = 16
    l2d_lora_rank: int = 4
    rl_steps: int = 0
    rl_lr: float = 0.0
    extra: dict = field(default_factory=dict)

    def record(self) -> dict:
        """The fields every pipeline sets (those without a default): what a demo's results.json records."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.default is MISSING and f.default_factory is MISSING}


def new_llada(path: Path, tok, hidden: int, layers: int, seed: int) -> None:
    """A freshly initialised LLaDA (4 heads, SwiGLU of 3 x hidden) with the tokenizer, at `path`."""
    from dlmarch import LLaDAConfig, LLaDAModel

    torch.manual_seed(seed)
    cfg = LLaDAConfig(vocab_size=len(tok), hidden_size=hidden, num_layers=layers, num_heads=4, num_kv_heads=4,
                      intermediate_size=3 * hidden, mask_token_id=tok.mask_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id, max_position_embeddings=512)
    LLaDAModel(cfg).init_weights().save_pretrained(path)
    tok.save_pretrained(path)


def new_llama(path: Path, tok, hidden: int, layers: int, seed: int) -> None:
    """A freshly initialised Llama of new_llada's shape (4 heads, SwiGLU of 3 x hidden) with the tokenizer."""
    from dlmarch.models.causal import CausalLM, LlamaConfig

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, num_layers=layers, num_heads=4, num_kv_heads=4,
                      intermediate_size=3 * hidden, eos_token_id=tok.eos_token_id, max_position_embeddings=512)
    CausalLM(cfg).init_weights().save_pretrained(path)
    tok.save_pretrained(path)


# The Sudoku demo's --quick setting (`trainers.demo`); `trainers.grpo_demo` starts its RL from the same SFT.
SUDOKU_QUICK = Plan(hidden=64, layers=2, train_rows=1000, test_rows=64, base_steps=600, method_steps=100, batch=16,
                    base_lr=3e-3, method_lr=5e-4)


def write_data(data: Path, task, train: list[dict], test: list[dict], response) -> None:
    """data/train.jsonl ({"messages"}: the task's prompt and `response(row)` as the assistant turn)
    and data/test.jsonl (the rows themselves)."""
    data.mkdir(parents=True, exist_ok=True)
    with open(data / "train.jsonl", "w") as f:
        for r in train:
            f.write(json.dumps({"messages": task.messages(r) + [{"role": "assistant", "content": response(r)}]}) + "\n")
    with open(data / "test.jsonl", "w") as f:
        for r in test:
            f.write(json.dumps(r) + "\n")


def prompt_length(task, model_dir: Path, rows: list[dict]) -> int:
    """The longest prompt of `rows` in tokens, as the sampler encodes them (chat template, generation prompt)."""
    from dlmarch.prompts import encode_prompts
    from dlmarch.tokenizers import load_tokenizer

    prompts = encode_prompts(load_tokenizer(model_dir), [task.messages(r) for r in rows], True)
    return max(len(p) for p in prompts)


def sudoku_rows(out: Path, plan: Plan, seed: int, new_model=None):
    """The demos' Sudoku setting (4x4 puzzles with unique solutions, train and test disjoint): tokenizer, untrained model (`new_model(path, tok, hidden, layers, seed)`, default a LLaDA) at
    out/init, train/test JSONL at out/data. Returns (task, test rows)."""
    from trainers.tasks import get_task
    from trainers.tokenizer import build_char_tokenizer

    task = get_task("sudoku", with_system_prompt=False)  # the instruction costs ~400 characters per row
    test = task.generate(plan.test_rows, seed + 999)
    held_out = {r["puzzle"] for r in test}
    train = [r for r in task.generate(plan.train_rows + plan.test_rows, seed + 1) if r["puzzle"] not in held_out]
    write_data(out / "data", task, train[: plan.train_rows], test, task.response)
    if not (out / "init" / "config.json").exists():
        tok = build_char_tokenizer("0123456789 :Sudokpzle", words=TAGS, pad_to=8)
        (new_model or new_llada)(out / "init", tok, plan.hidden, plan.layers, seed)
    return task, test


def sudoku_length(task, init: Path) -> int:
    """The prompt (all Sudoku prompts have one length) + "<reasoning>" + the sampler's canvas: training
    rows padded (with trained EOS) to exactly the sequence the sampler decodes. "<reasoning>" is the
    response's first token in training and the prompt's last at evaluation (d1's protocol appends it),
    so the canvas covers the response's tokens after it; a row one token shorter would teach the model
    to end its answer one position before the canvas does."""
    return prompt_length(task, init, [{"puzzle": "0" * 16}]) + 1 + GEN_LENGTH


def finished(out: Path) -> dict | None:
    """The summary of a stage that finished earlier (summary.json and model/), else None."""
    if (out / "summary.json").exists() and (out / "model" / "config.json").exists():
        return json.loads((out / "summary.json").read_text())
    return None


def run_stage(method: str, out: Path, args: list[str], resume: bool) -> dict:
    """`python -m trainers.<method> ARGS --output OUT` in process (resumed from its last checkpoint
    when `resume` and OUT exists); returns its summary."""
    args = [*args, "--output", str(out)]
    if resume and out.exists():
        args.append("--resume")
    rc = importlib.import_module(f"trainers.{method}").main(args)
    if rc != 0:
        raise DlmarchError(f"the {method} stage failed (exit {rc}); see {out}")
    return json.loads((out / "summary.json").read_text())


def stage(method: str, model: Path, out: Path, data: Path, steps: int, lr: float, batch: int, length: int,
          seed: int, resume: bool, extra: list[str] = ()) -> dict:
    """A fine-tuning stage: `steps` AdamW steps of `batch` rows padded to `length`, warmup 5% of the
    steps then the loop's default cosine decay (`extra` may change it), a checkpoint every quarter
    (at least every 50 steps). A finished stage is read back. Returns its summary."""
    done = finished(out)
    if done is not None:
        return done
    args = ["--model", str(model), "--data", str(data), "--max-steps", str(steps), "--batch-size", str(batch),
            "--lr", str(lr), "--max-length", str(length), "--pad-to", "max", "--warmup-steps", str(max(1, steps // 20)),
            "--save-every", str(max(50, steps // 4)), "--seed", str(seed), *extra]
    return run_stage(method, out, args, resume)


def grpo_stage(model: Path, out: Path, data: Path, steps: int, seed: int, resume: bool, extra: list[str] = ()) -> dict:
    """`python -m trainers.grpo --task sudoku` with d1's defaults scaled down to a toy: 4 prompts x a
    group of 8 per step, mu = 2, one block of 32 tokens, 16 diffusion steps, lr 2e-4, constant, full
    fine-tuning (`extra` overrides any of them)."""
    if (out / "summary.json").exists():
        return json.loads((out / "summary.json").read_text())
    args = ["--model", str(model), "--data", str(data), "--task", "sudoku", "--system-prompt", "none",
            "--max-steps", str(steps), "--batch-size", "4", "--num-generations", "8", "--num-iterations", "2",
            "--gen-length", "32", "--block-length", "32", "--steps", "16", "--lr", "2e-4", "--schedule", "constant",
            "--warmup-steps", "0", "--save-every", "20", "--seed", str(seed), "--no-progress", *extra]
    return run_stage("grpo", out, args, resume)


def evaluate_model(name: str, model, task, test: list[dict], out: Path, seed: int, **decoding) -> dict:
    """`trainers.evaluate.evaluate` under d1's protocol with the model's own sampler (greedy; masked
    diffusion: low-confidence remasking; `decoding`: gen_length, block_length, steps, or L2D's solver
    and ode_steps), batch 64.
    `model` is a directory or a loaded model (its tokenizer is then `decoding["tokenizer"]`). The
    summary is cached as out/eval-NAME.summary.json (generations beside it) and read back if present;
    it adds evaluations_per_token (L2D: the diffusion path's evaluations per generated token, the
    final read-out included)."""
    from dlmarch.sampling.cli import load_for_generation
    from trainers.evaluate import evaluate

    cached = out / f"eval-{name}.summary.json"
    if cached.exists():
        return json.loads(cached.read_text())
    tok = decoding.pop("tokenizer", None)
    if not hasattr(model, "forward"):
        model, tok = load_for_generation(str(model), None, None)
    stats: dict = {}
    summary, records = evaluate(model, tok, task, test, batch_size=64, seed=seed, stats=stats, progress=False, **decoding)
    tokens = stats.get("tokens", 0)
    summary = {**summary, "evaluations_per_token": stats.get("diffusion_evaluations", 0) / tokens if tokens else None}
    with atomic_file(out / f"eval-{name}.jsonl") as f:  # a kill never leaves half a cache to be read back
        for r in records:
            f.write(json.dumps(r) + "\n")
    write_json(cached, summary)
    return summary


def score(summary: dict) -> float:
    """The task's primary metric of an evaluation summary."""
    return float(summary[summary["primary"]])


def claim_output(out: Path, resume: bool, overwrite: bool, tool: str, writes: tuple[str, ...]) -> None:
    """Make `out` ours before anything is written (dlmarch.outputs.Claim): a non-empty `out` is
    continued with `resume`, cleared of what the tool wrote with `overwrite` only when it carries the
    marker a demo wrote there (never a directory of the user's, never a file the user added there),
    and refused otherwise."""
    Claim(out, MARKER, tool, writes).prepare(resume, overwrite)


def pipeline_main(run, argv=None) -> int:
    """A pipeline's command: `run(argv)` with the one-line error of a DlmarchError / OSError / bad
    value and exit status 2."""
    try:
        return run(argv)
    except DlmarchError as e:
        print(f"error: {str(e).splitlines()[0] if str(e) else type(e).__name__}", file=sys.stderr)
    except OSError as e:
        print(f"error: {os_error_line(e)}", file=sys.stderr)
    except ValueError as e:
        print(f"error: {str(e).splitlines()[0]}", file=sys.stderr)
    return 2


def pipeline_parser(prog: str, doc: str, default_output: str | None, quick_help: str) -> argparse.ArgumentParser:
    """The options every toy pipeline has: --output, --quick, --seed, --resume, --overwrite."""
    p = argparse.ArgumentParser(prog=prog, description=doc.split("\n\n")[0])
    p.add_argument("--output", default=default_output, required=default_output is None)
    p.add_argument("--quick", action="store_true", help=quick_help)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="keep finished stages, resume an interrupted one")
    p.add_argument("--overwrite", action="store_true", help="replace what this command wrote there before")
    return p
