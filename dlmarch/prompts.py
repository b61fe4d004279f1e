"""Prompts for sampling and evaluation: reading a prompts file, encoding prompts (with the
tokenizer's chat template), left padding a batch, decoding an answer up to its end token.
One public module for the sampler's CLI, evaluation, the lm-eval integration, the demo and the
benchmarks."""

from __future__ import annotations

import torch

from .config import jsonl_rows
from .errors import DlmarchError


def read_prompts(path: str) -> list:
    """Prompts of a JSONL file: each row a string under "prompt", or chat "messages"."""
    out = []
    for n, row, error in jsonl_rows(path):
        if error:
            raise DlmarchError(error)
        if isinstance(row, dict) and isinstance(row.get("prompt"), str):
            out.append(row["prompt"])
        elif isinstance(row, dict) and isinstance(row.get("messages"), list):
            out.append([m for m in row["messages"] if m.get("role") != "assistant"])
        else:
            raise DlmarchError(f"{path}: line {n}: expected {{\"prompt\": str}} or {{\"messages\": [...]}}")
    if not out:
        raise DlmarchError(f"{path}: no prompts")
    return out

def encode_prompts(tokenizer, prompts: list, chat_template: bool, suffix: str = "") -> list[list[int]]:
    """Token ids of each prompt, through the chat template (with its generation prompt) when the
    tokenizer has one and `chat_template` is on."""
    ids = []
    for p in prompts:
        use_template = chat_template and getattr(tokenizer, "chat_template", None)
        if use_template:
            msgs = p if isinstance(p, list) else [{"role": "user", "content": p}]
            text = tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
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

__all__ = ["read_prompts", "encode_prompts", "left_pad", "cut_at_eos", "decode"]
