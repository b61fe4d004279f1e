"""Options shared by every `python -m trainers.<method>`, and YAML config files whose values the
command-line flags override."""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml

from dlmarch.errors import DlmarchError


def common_parser(prog: str, description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=description,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--config", help="YAML file of option values (option names as keys); flags override it")
    g = p.add_argument_group("run")
    g.add_argument("--model", help="model directory: HF (LLaDA, Llama, Qwen2) or native, with its tokenizer")
    g.add_argument("--data", help="training data, JSONL of {prompt, response} or {messages}")
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
    g.add_argument("--max-length", type=int, default=1024)
    g.add_argument("--over-long", choices=["drop", "truncate"], default="drop", help="rows longer than --max-length")
    g.add_argument("--skip-bad-rows", action="store_true", help="skip and count malformed rows instead of stopping")
    g.add_argument("--pack", action="store_true", help="pack several rows per --max-length sequence (needs --eos-pad exclude)")
    g.add_argument("--eos-pad", choices=["train", "exclude"], default="train",
                   help="train on EOS padding (LLaDA) or hide it")
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
    g.add_argument("--log-every", type=int, default=1)
    g.add_argument("--export-hf", action="store_true", help="also write the final model in its HF layout")
    g.add_argument("--no-progress", action="store_true")
    return p


def parse(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> argparse.Namespace:
    """Flags over the YAML file over the defaults. Unknown YAML keys are an error naming the file."""
    first, _ = parser.parse_known_args(argv)
    if first.config:
        path = Path(first.config)
        try:
            values = yaml.safe_load(path.read_text()) or {}
        except FileNotFoundError:
            raise DlmarchError(f"{path}: no such file") from None
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark else ""
            raise DlmarchError(f"{path}: invalid YAML{where}") from None
        if not isinstance(values, dict):
            raise DlmarchError(f"{path}: expected a mapping of option names to values")
        known = {a.dest for a in parser._actions}
        normalised = {}
        for k, v in values.items():
            dest = str(k).replace("-", "_")
            if dest not in known or dest in ("help", "config"):
                raise DlmarchError(f"{path}: unknown option {k!r}")
            normalised[dest] = v
        parser.set_defaults(**normalised)
    args = parser.parse_args(argv)
    missing = [n for n in ("model", "data", "output") if getattr(args, n, None) is None]
    if missing:
        parser.error("missing " + ", ".join(f"--{m}" for m in missing) + " (on the command line or in --config)")
    return args
