"""Left-to-right decoding of a causal LM (Llama, Qwen2): greedy or sampled, with a key/value cache.

What `transformers`' `generate` does for these models with `do_sample` off (greedy) or on
(temperature, then top-k, then top-p, as its logits warpers apply them), on our model class, so that
every family decodes through `dlmarch.sampling` (the dispatcher is `dlmarch.sampling.sampler_for`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .dream import top_k_filter, top_p_filter


@torch.no_grad()
def generate_causal(model, prompt: Tensor, attention_mask: Tensor | None = None, max_new_tokens: int = 128, *,
                    temperature: float = 0.0, top_p: float | None = None, top_k: int | None = None,
                    eos_token_id: int | list[int] | None = None, generator: torch.Generator | None = None) -> Tensor:
    """Prompt (B, P) [+ left-padding mask (B, P)] -> (B, P + n), n <= max_new_tokens.

    temperature 0: the argmax; > 0: one draw from softmax(filtered logits / temperature) with
    `generator`. Rows that emitted an `eos_token_id` are filled with it (the first of a list), and
    decoding stops when every row has.
    """
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be at least 1, found {max_new_tokens}")
    device = model.device
    stops = [] if eos_token_id is None else [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id)
    ids = prompt.to(device)
    am = None if attention_mask is None else attention_mask.to(device).long()
    out = model(ids, am, return_kv=True, logits_at=slice(-1, None))
    tokens, done = [ids], torch.zeros(ids.shape[0], dtype=torch.bool, device=device)
    stop_ids = torch.tensor(stops, device=device)
    for i in range(max_new_tokens):
        logits = out.logits[:, -1].float()
        if temperature > 0:
            logits = logits / temperature
            if top_k is not None:
                logits = top_k_filter(logits, top_k)
            if top_p is not None and top_p < 1:
                logits = top_p_filter(logits, top_p)
            nxt = torch.multinomial(logits.softmax(-1), 1, generator=generator)[:, 0]
        else:
            nxt = logits.argmax(-1)
        if stops:
            nxt = torch.where(done, torch.full_like(nxt, stops[0]), nxt)
            done = done | torch.isin(nxt, stop_ids)
        tokens.append(nxt[:, None])
        if i + 1 == max_new_tokens or bool(done.all()):
            break
        if am is not None:
            am = torch.cat([am, torch.ones_like(am[:, :1])], 1)
        out = model(nxt[:, None], am, past_kv=out.kv, return_kv=True)
    return torch.cat(tokens, 1)


__all__ = ["generate_causal"]
