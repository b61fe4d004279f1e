"""`python -m trainers.ar`: autoregressive SFT of a causal LM (Llama, Qwen2) on the shared loop.

Plain next-token cross-entropy on response tokens (full fine-tuning or LoRA with --lora-rank), the
baseline L2D is measured against. `generate_greedy` decodes such a model (greedy, KV cache).
"""

from __future__ import annotations

import sys

import torch

from .cli import run
from .objectives.ar import ar


def add_options(p):
    # A causal LM learns one EOS; padding is hidden and carries no loss.
    p.set_defaults(eos_pad="exclude")


def objective(ctx):
    if not getattr(ctx.model.config, "causal", False):
        raise ValueError(f"{ctx.args.model}: a {ctx.model.config.family} model is not causal; "
                         "autoregressive SFT trains Llama/Qwen2 decoders")
    return ar


def main(argv=None) -> int:
    return run("ar", __doc__, add_options, objective, argv, needs_mask=False)


@torch.no_grad()
def generate_greedy(model, prompt: torch.Tensor, attention_mask: torch.Tensor | None, max_new_tokens: int,
                    eos_token_id: int | None = None) -> torch.Tensor:
    """Prompt (B, P) [+ left-padding mask (B, P)] -> (B, P + n), n <= max_new_tokens, greedy with a KV
    cache; rows that emitted EOS are filled with it, and decoding stops when every row has."""
    device = next(model.parameters()).device
    ids = prompt.to(device)
    am = None if attention_mask is None else attention_mask.to(device).long()
    out = model(ids, am, return_kv=True, logits_at=slice(-1, None))
    tokens, done = [ids], torch.zeros(ids.shape[0], dtype=torch.bool, device=device)
    for i in range(max_new_tokens):
        nxt = out.logits[:, -1].argmax(-1)
        if eos_token_id is not None:
            nxt = torch.where(done, torch.full_like(nxt, eos_token_id), nxt)
            done = done | (nxt == eos_token_id)
        tokens.append(nxt[:, None])
        if i + 1 == max_new_tokens or bool(done.all()):
            break
        if am is not None:
            am = torch.cat([am, torch.ones_like(am[:, :1])], 1)
        out = model(nxt[:, None], am, past_kv=out.kv, return_kv=True)
    return torch.cat(tokens, 1)


if __name__ == "__main__":
    sys.exit(main())
