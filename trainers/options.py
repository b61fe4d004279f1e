"""Options shared by every `python -m trainers.<method>`, and YAML config files whose values the
command-line flags override."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import yaml

from dlmarch.config import read_text
from dlmarch.errors import DlmarchError

from .sources import add_options as add_source_options, is_dataset_folder
from .data import EOS_PADS


def common_parser(prog: str, description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=description,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--config", help="YAML file of option values (option names as keys); flags override it")
    g = p.add_argument_group("run")
    g.add_argument("--model", help="model directory: HF (LLaDA, Llama, Qwen2) or native, with its tokenizer")
    g.add_argument("--data", help="training data: rows of {prompt, response} or {messages} in a JSONL, parquet, arrow or "
                                  "CSV file, a datasets save_to_disk folder, or a hub dataset id in the local cache")
    g.add_argument("--output", help="run directory: checkpoints, metrics.jsonl, loss.png, the final model")
    g.add_argument("--resume", action="store_true", help="continue the run in --output from its last checkpoint")
    g.add_argument("--overwrite", action="store_true", help="replace a run already in --output")
    g.add_argument("--seed", type=int, default=0)
    g = p.add_argument_group("schedule")
    g.add_argument("--max-steps", type=int, default=None, help="optimizer steps (default: --epochs worth)")
    g.add_argument("--epochs", type=float, default=1.0)
    g.add_argument("--batch-size", type=int, default=4, help="micro-batch size per process (rows)")
    g.add_argument("--grad-accum", type=int, default=1)
    g.add_argument("--lr", type=float, default=1e-5)
    g.add_argument("--schedule", choices=["cosine", "linear", "constant"], default="cosine")
    g.add_argument("--warmup-steps", type=int, default=None, help="default: 3%% of the steps")
    g.add_argument("--min-lr-ratio", type=float, default=0.0, help="final lr / peak lr")
    g.add_argument("--weight-decay", type=float, default=0.0)
    g.add_argument("--adam-betas", type=float, nargs=2, default=(0.9, 0.95))
    g.add_argument("--clip", type=float, default=1.0, help="gradient norm clipping (0 = off)")
    g = p.add_argument_group("data")
    add_source_options(g)
    g.add_argument("--max-length", type=int, default=1024)
    g.add_argument("--over-long", choices=["drop", "truncate"], default="drop", help="rows longer than --max-length")
    g.add_argument("--skip-bad-rows", action="store_true", help="skip and count malformed rows instead of stopping")
    g.add_argument("--pack", action="store_true", help="pack several rows per --max-length sequence (needs --eos-pad exclude)")
    g.add_argument("--eos-pad", choices=EOS_PADS, default="train",
                   help="train on EOS padding (LLaDA), hide it (exclude), or train it hidden from attention (hidden: Dream's "
                        "recipe)")
    g.add_argument("--response-cutoff", choices=["none", "batch"], default="none",
                   help="batch: cut every response of a micro-batch to one of its response lengths, drawn per batch "
                        "(Dream's per-batch cutoff)")
    g.add_argument("--pad-to", choices=["batch", "max"], default="batch", help="pad rows to the batch's longest or --max-length")
    g.add_argument("--no-chat-template", action="store_true", help="plain prompt + response even if the tokenizer has a template")
    g.add_argument("--render-full-conversation", action="store_true",
                   help="response = the rest of the whole conversation rendered by the chat template (d1, LIFT), "
                        "template tail included; default: the answer + EOS (LLaDA's SFT guideline)")
    g = p.add_argument_group("model")
    g.add_argument("--lora-rank", type=int, default=0, help="0 = full fine-tuning")
    g.add_argument("--lora-alpha", type=float, default=None, help="default: 2 x rank")
    g.add_argument("--lora-dropout", type=float, default=0.0)
    g.add_argument("--lora-targets", nargs="+", default=["q_proj", "k_proj", "v_proj"])
    g.add_argument("--dtype", choices=["fp32", "bf16"], default=None,
                   help="parameter dtype (default: fp32; bf16 for a frozen LoRA base on GPU)")
    g.add_argument("--bf16", choices=["auto", "on", "off"], default="auto", help="bf16 autocast (auto: on GPU)")
    g.add_argument("--grad-checkpointing", action="store_true", help="recompute each block in the backward pass")
    g.add_argument("--attn-backend", choices=["auto", "sdpa", "flex", "flash"], default=None)
    g.add_argument("--device", default=None)
    g.add_argument("--distributed", choices=["ddp", "fsdp"], default="ddp", help="under torchrun")
    g = p.add_argument_group("output")
    g.add_argument("--save-every", type=int, default=500, help="checkpoint every N steps (and at the end)")
    g.add_argument("--keep", type=int, default=2, help="checkpoints kept")
    g.add_argument("--log-every", type=int, default=1,
                   help="metrics.jsonl row (and, without a terminal or with --no-progress, a console line) every N steps")
    g.add_argument("--print-every", type=int, default=None,
                   help="console line every N steps without a progress bar (default: --log-every, at most ~100 a run)")
    g.add_argument("--report-to", choices=["tensorboard", "wandb", "none"], default=None,
                   help="experiment tracker (default: tensorboard when installed; wandb reads WANDB_* variables)")
    g.add_argument("--eval-data", help="held-out rows (any --data form): validation loss on fixed noise")
    g.add_argument("--eval-every", type=int, default=None, help="validation every N steps (default: at the end only)")
    g.add_argument("--export-hf", action="store_true", help="also write the final model in its HF layout")
    g.add_argument("--no-progress", action="store_true", help="plain log lines instead of a progress bar")
    return p


def parse(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> argparse.Namespace:
    """Flags over the YAML file over the defaults.

    A YAML value goes through what its flag's text would: the same type conversion, the same
    choices, the same ranges, so a file can hold nothing a command line could not. Every error is
    one line naming the file and the key (or the flag).
    """
    first, _ = parser.parse_known_args(argv)
    if first.config:
        path = Path(first.config)
        parser.set_defaults(**_yaml_values(parser, path))
    args = parser.parse_args(argv)
    missing = [n for n in ("model", "data", "output") if getattr(args, n, None) is None]
    if missing:
        parser.error("missing " + ", ".join(f"--{m}" for m in missing) + " (on the command line or in --config)")
    actions = {a.dest: a for a in parser._actions}
    for dest, value in vars(args).items():
        problem = _not_finite(value) or _out_of_range(actions[dest], value)
        if problem:
            raise DlmarchError(f"{_flag(actions[dest])} {problem}")
    _check_paths(args)
    return args


def _yaml_values(parser: argparse.ArgumentParser, path: Path) -> dict:
    """{dest: value} of a YAML option file, each value converted and checked like its flag's text."""
    try:
        values = yaml.safe_load(read_text(path, "YAML file")) or {}
    except RecursionError:
        raise DlmarchError(f"{path}: invalid YAML (nested too deeply)") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise DlmarchError(f"{path}: invalid YAML{where}") from None
    if not isinstance(values, dict):
        raise DlmarchError(f"{path}: expected a mapping of option names to values")
    actions = {a.dest: a for a in parser._actions}
    out = {}
    for key, value in values.items():
        dest = str(key).replace("-", "_")
        if dest not in actions or dest in ("help", "config"):
            raise DlmarchError(f"{path}: unknown option {key!r}")
        where = f"{path}: {key}"
        try:
            out[dest] = _convert(actions[dest], value)
        except _Invalid as e:
            raise DlmarchError(f"{where}: {e}") from None
        problem = _not_finite(out[dest]) or _out_of_range(actions[dest], out[dest])
        if problem:
            raise DlmarchError(f"{where} {problem}")
    return out


class _Invalid(Exception):
    pass


def _convert(action: argparse.Action, value):
    """A YAML value as its flag would have produced it."""
    if action.nargs == 0:  # store_true / store_false
        if not isinstance(value, bool):
            raise _Invalid(f"expected true or false, found {value!r}")
        return value
    if action.nargs in (None, "?"):
        if value is None and action.default is None:
            return None
        return _convert_one(action, value)
    if not isinstance(value, list):
        n = action.nargs if isinstance(action.nargs, int) else "one or more"
        raise _Invalid(f"expected a list of {n} values, found {value!r}")
    if isinstance(action.nargs, int) and len(value) != action.nargs:
        raise _Invalid(f"expected a list of {action.nargs} values, found {len(value)}")
    if action.nargs == "+" and not value:
        raise _Invalid("expected at least one value")
    return [_convert_one(action, v) for v in value]


def _convert_one(action: argparse.Action, value):
    if isinstance(value, (dict, list)) or value is None:
        raise _Invalid(f"expected a single value, found {value!r}")
    choices = action.choices
    if isinstance(value, bool):
        # YAML 1.1 reads on/off/yes/no as booleans; where the flag's choices are on/off, that is what
        # the file meant. Anywhere else a boolean is not a value the flag's text could give.
        if choices is not None and "on" in choices and "off" in choices:
            return "on" if value else "off"
        raise _Invalid(f"expected {'one of ' + ', '.join(map(str, choices)) if choices else 'a value'}, found {value!r}")
    text = value if isinstance(value, str) else str(value)
    if action.type is not None:
        try:
            converted = action.type(text)
        except (TypeError, ValueError, argparse.ArgumentTypeError):
            name = getattr(action.type, "__name__", "")
            raise _Invalid(f"invalid {name} value: {value!r}") from None
    else:
        converted = text
    if choices is not None and converted not in choices:
        raise _Invalid(f"invalid choice {converted!r} (choose from {', '.join(map(str, choices))})")
    return converted


def at_least(low):
    return lambda v: None if v >= low else f"must be at least {low}, found {v}"


def positive(v):
    return None if v > 0 and math.isfinite(v) else f"must be a positive number, found {v}"


_at_least, _positive = at_least, positive


def limited(action: argparse.Action, rule) -> argparse.Action:
    """A method's option with its limit, checked like the shared ones (flag or YAML), kept beside its flag:
    `limited(g.add_argument("--block-size", type=int), at_least(1))`."""
    action.limit = rule
    return action


def fraction(v):
    return None if 0 <= v <= 1 else f"must be between 0 and 1, found {v}"


_fraction = fraction


def _probability(v):
    return None if 0 <= v < 1 else f"must be at least 0 and below 1, found {v}"


# Ranges of the shared counts and sizes that would otherwise fail deep inside a run (a division by zero, an
# empty batch) or do nothing silently (a zero learning rate). Keyed by dest; a method's own options carry
# their limit on their flag (`limited`).
RANGES = {
    "batch_size": _at_least(1), "grad_accum": _at_least(1), "max_steps": _at_least(1), "log_every": _at_least(1),
    "save_every": _at_least(1), "keep": _at_least(1), "max_length": _at_least(2), "warmup_steps": _at_least(0),
    "lora_rank": _at_least(0), "lr": _positive, "epochs": _positive, "lora_alpha": _positive,
    "clip": _at_least(0), "weight_decay": _at_least(0), "min_lr_ratio": _fraction, "lora_dropout": _probability,
    "adam_betas": _probability,
    # common options of trainers.pt's and every trainer's logging
    "eval_every": _at_least(1), "print_every": _at_least(1), "seed": lambda v: seed_problem(v),
}


def seed_problem(v: int) -> str | None:
    """A seed torch and every generator derived from it can take (64-bit: 2**70 overflows inside torch)."""
    return None if 0 <= v < 2**63 else f"must be between 0 and 2**63 - 1, found {v}"


def _out_of_range(action: argparse.Action, value) -> str | None:
    rule = getattr(action, "limit", None) or RANGES.get(action.dest)
    if rule is None or value is None:
        return None
    for v in value if isinstance(value, (list, tuple)) else [value]:
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            problem = rule(v)
            if problem:
                return problem
    return None


def _not_finite(value) -> str | None:
    """nan and inf pass every comparison-based range the wrong way (nan >= 0 is False, but so is nan < 0)."""
    for v in value if isinstance(value, (list, tuple)) else [value]:
        if isinstance(v, float) and not math.isfinite(v):
            return f"must be a finite number, found {v}"
    return None


def _flag(action: argparse.Action) -> str:
    return action.option_strings[-1] if action.option_strings else action.dest


def _check_paths(args: argparse.Namespace) -> None:
    """Paths that exist but are the wrong kind, before anything is loaded or written."""
    out, data = Path(args.output), Path(args.data)
    if out.exists() and not out.is_dir():
        raise DlmarchError(f"--output {out} is a file, not a directory")
    if data.is_dir() and not is_dataset_folder(data):
        raise DlmarchError(f"--data {data} is a directory, but not a datasets save_to_disk folder; "
                           f"pass a JSONL, parquet, arrow or CSV file")
