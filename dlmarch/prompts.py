"""Prompts for sampling and evaluation: reading a prompts file, encoding prompts (with the
tokenizer's chat template), left padding a batch, decoding an answer up to its end token.
One public module for the sampler's CLI, evaluation, the lm-eval integration, the demo and the
benchmarks."""

from __future__ import annotations

import contextlib
import signal
import threading

import torch

from .config import jsonl_rows
from .errors import DlmarchError

# A chat template is code from the model directory, run on every prompt. transformers renders it in
# jinja2's immutable sandbox (no attribute escapes, ranges capped); these bound what the sandbox
# does not: the time of one rendering (nested loops) and the size of its text.
TEMPLATE_SECONDS = 10.0
TEMPLATE_MAX_CHARS = 1 << 24  # 16M characters: far beyond any model's context


class ChatTemplateError(DlmarchError):
    """A chat template that raised, tried to leave the sandbox, ran too long or wrote too much."""


def read_prompts(path: str) -> list:
    """Prompts of a JSONL file: each row a string under "prompt", or chat "messages" (objects with a
    string role and a string content; the assistant's are dropped)."""
    out = []
    for n, row, error in jsonl_rows(path):
        if error:
            raise DlmarchError(error)
        if isinstance(row, dict) and isinstance(row.get("prompt"), str):
            out.append(row["prompt"])
        elif isinstance(row, dict) and isinstance(row.get("messages"), list) and row["messages"]:
            for i, m in enumerate(row["messages"]):
                if not isinstance(m, dict):
                    raise DlmarchError(f"{path}: line {n}: messages[{i}] must be an object, found {type(m).__name__}")
                for key in ("role", "content"):
                    if not isinstance(m.get(key), str):
                        found = "nothing" if key not in m else f"{m[key]!r}"[:40]
                        raise DlmarchError(f"{path}: line {n}: messages[{i}].{key} must be a string, found {found}")
            out.append([m for m in row["messages"] if m["role"] != "assistant"])
        else:
            raise DlmarchError(f"{path}: line {n}: expected {{\"prompt\": str}} or {{\"messages\": [...]}}")
    if not out:
        raise DlmarchError(f"{path}: no prompts")
    return out


class _TooLong(Exception):
    pass


@contextlib.contextmanager
def _time_limit(seconds: float):
    """Raise _TooLong in the block after `seconds` (SIGALRM: the main thread of a Unix process only,
    and only when no one else's alarm is set, which is left alone; elsewhere the block runs unbounded)."""
    if (threading.current_thread() is not threading.main_thread() or not hasattr(signal, "setitimer")
            or signal.getitimer(signal.ITIMER_REAL)[0] > 0):
        yield
        return

    def on_alarm(signum, frame):
        raise _TooLong

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def render_chat(tokenizer, messages: list[dict], add_generation_prompt: bool = False) -> str:
    """`tokenizer.apply_chat_template(messages, tokenize=False)` (transformers' sandboxed jinja2),
    bounded in time and size; any failure is one ChatTemplateError line naming the template's model."""
    name = getattr(tokenizer, "name_or_path", "") or "the tokenizer"
    try:
        with _time_limit(TEMPLATE_SECONDS):
            text = tokenizer.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, tokenize=False)
    except _TooLong:
        raise ChatTemplateError(f"the chat template failed: it did not finish in {TEMPLATE_SECONDS:g} s "
                                f"(template of {name})") from None
    except RecursionError:
        raise ChatTemplateError(f"the chat template failed: it recursed too deeply (template of {name})") from None
    except Exception as e:  # noqa: BLE001 - the template is the model directory's code: any error is its error
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ChatTemplateError(f"the chat template failed: {reason} (template of {name})") from None
    if not isinstance(text, str):
        raise ChatTemplateError(f"the chat template failed: it rendered a {type(text).__name__}, not text (template of {name})")
    if len(text) > TEMPLATE_MAX_CHARS:
        raise ChatTemplateError(f"the chat template failed: it rendered {len(text):,} characters, more than "
                                f"{TEMPLATE_MAX_CHARS:,} (template of {name})")
    return text

def encode_prompts(tokenizer, prompts: list, chat_template: bool, suffix: str = "") -> list[list[int]]:
    """Token ids of each prompt, through the chat template (with its generation prompt) when the
    tokenizer has one and `chat_template` is on."""
    ids = []
    for p in prompts:
        use_template = chat_template and getattr(tokenizer, "chat_template", None)
        if use_template:
            msgs = p if isinstance(p, list) else [{"role": "user", "content": p}]
            text = render_chat(tokenizer, msgs, add_generation_prompt=True)
        else:
            text = p if isinstance(p, str) else "\n".join(m["content"] for m in p)
        ids.append(tokenizer(text + suffix, add_special_tokens=not use_template).input_ids)
    return ids

def left_pad(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    P = max(len(r) for r in rows)
    ids = torch.full((len(rows), P), pad_id, dtype=torch.long)
    am = torch.zeros(len(rows), P, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, P - len(r):] = torch.tensor(r, dtype=torch.long)
        am[i, P - len(r):] = 1
    return ids, am

def cut_at_eos(ids: list[int], eos_ids, keep_eos: bool = False) -> tuple[list[int], int]:
    """The one "cut at EOS": (ids up to the first EOS/EoT, that EOS kept with keep_eos; the number of
    tokens before it, the answer's effective length)."""
    for i, t in enumerate(ids):
        if t in eos_ids:
            return ids[:i + 1] if keep_eos else ids[:i], i
    return ids, len(ids)


def decode(tokenizer, ids: torch.Tensor, eos_ids: list[int]) -> str:
    """Text of generated ids, cut at the first EOS/EoT, special tokens skipped."""
    return tokenizer.decode(cut_at_eos(ids.tolist(), eos_ids)[0], skip_special_tokens=True)

__all__ = ["read_prompts", "render_chat", "ChatTemplateError", "encode_prompts", "left_pad", "cut_at_eos", "decode"]
