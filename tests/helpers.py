"""Tiny models and fixtures shared by the tests."""

from __future__ import annotations

from pathlib import Path

import torch

from dlmarch import LLaDAConfig, LLaDAModel

FIXTURES = Path(__file__).parent / "fixtures"
LLADA_TINY = FIXTURES / "llada-tiny"
L2D_TINY = FIXTURES / "l2d-tiny-llama-lora"


def tiny_llada_config(**kw) -> LLaDAConfig:
    base = dict(vocab_size=64, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2,
                intermediate_size=48, mask_token_id=60, eos_token_id=61, pad_token_id=61,
                max_position_embeddings=512, rope_theta=10000.0)
    base.update(kw)
    return LLaDAConfig(**base)


def tiny_llada(seed: int = 0, **kw) -> LLaDAModel:
    torch.manual_seed(seed)
    model = LLaDAModel(tiny_llada_config(**kw)).init_weights(std=0.2)
    # Random norms too, so that a test notices a norm weight read from the wrong place.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or name == "ln_f.weight":
                p.uniform_(0.5, 1.5)
    return model.eval()


def hf_llama(tmp: Path, *, qwen2: bool = False, tied: bool = False, rope_scaling=None, seed: int = 0):
    """A tiny random transformers Llama/Qwen2 saved to tmp; returns (hf_model, path)."""
    import transformers

    torch.manual_seed(seed)
    kw = dict(vocab_size=96, hidden_size=64, intermediate_size=112, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=tied, rms_norm_eps=1e-5)
    if qwen2:
        cfg = transformers.Qwen2Config(**kw, rope_theta=1e6)
        model = transformers.Qwen2ForCausalLM(cfg)
    else:
        cfg = transformers.LlamaConfig(**kw, rope_theta=5e5, rope_scaling=rope_scaling)
        model = transformers.LlamaForCausalLM(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
            elif name.endswith("bias"):
                p.normal_(0, 0.5)
    model.eval()
    model.save_pretrained(tmp)
    return model, tmp


def make_task(tmp: Path, n: int = 256, seed: int = 0, model_seed: int = 0, task: str = "reverse",
              init_std: float = 0.02, **model_kw) -> tuple[Path, Path]:
    """A tiny LLaDA with a character tokenizer, saved natively, and a JSONL of a string task
    ("reverse" or "copy"). Returns (model_dir, data_path)."""
    import json
    import random

    from trainers.tokenizer import build_char_tokenizer

    tok = build_char_tokenizer("abcdefgh", pad_to=8)
    kw = dict(vocab_size=len(tok), mask_token_id=tok.mask_token_id, eos_token_id=tok.eos_token_id,
              pad_token_id=tok.pad_token_id, hidden_size=64, intermediate_size=128, num_heads=4, num_kv_heads=4)
    kw.update(model_kw)
    torch.manual_seed(model_seed)
    model = LLaDAModel(tiny_llada_config(**kw)).init_weights(std=init_std)
    model_dir = tmp / "model"
    model.save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    rng = random.Random(seed)
    data = tmp / f"{task}.jsonl"
    with open(data, "w") as f:
        for _ in range(n):
            s = "".join(rng.choice("abcdefgh") for _ in range(rng.randint(3, 8)))
            f.write(json.dumps({"prompt": s, "response": s[::-1] if task == "reverse" else s}) + "\n")
    return model_dir, data


def tiny_model_dir(path: Path):
    """A tiny random LLaDA with the full character tokenizer, saved to `path` as the command-line
    tools expect a model directory. Returns (model, tokenizer)."""
    from trainers.tokenizer import build_char_tokenizer

    tok = build_char_tokenizer(pad_to=8)
    model = tiny_llada(vocab_size=len(tok), mask_token_id=tok.mask_token_id, eos_token_id=tok.eos_token_id,
                       pad_token_id=tok.pad_token_id)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return model, tok


def random_examples(seed: int = 0, n: int = 4, eos: int = 61) -> list:
    """n training examples of random ids below 59: a prompt of 2-5 tokens, a response of 3-8 and its EOS."""
    from trainers.data import Example

    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        P, R = int(torch.randint(2, 6, (1,), generator=g)), int(torch.randint(3, 9, (1,), generator=g))
        ids = torch.randint(0, 59, (P + R,), generator=g).tolist() + [eos]
        out.append(Example(ids, P, i + 1))
    return out
