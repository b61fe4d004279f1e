"""`python -m conversions to-diffusion CAUSAL_DIR DST --style dream|llada [--mask-token-id N]`

A causal Llama/Qwen2 checkpoint (HF or native) -> a native bidirectional masked-diffusion model to
fine-tune, with the same weights:

- `--style dream`: a `DreamModel`, as Dream 7B was initialised from Qwen2.5 (Ye et al., 2025): the
  head stays autoregressive (logits[:, i] predicts token i+1), so run with a causal mask the new
  model gives the causal model's logits. Dream's layout has q/k/v biases; a Llama source gets zero
  biases there (which change nothing). An o or MLP bias cannot be expressed and is refused.
- `--style llada`: an `LLaDAModel` (logits[:, i] predicts token i itself, so the head has to be
  re-trained to unshift; the blocks are kept). LLaDA rotates RoPE in fp32 (its reference does).

The mask token: `--mask-token-id N` names an existing row (e.g. a reserved token of the tokenizer),
kept as it is. Without it, a mask token the source's tokenizer already defines (inside the
vocabulary) is used, so that the tokenizer and config.json agree and the trainers accept the pair;
otherwise a row is appended at id = vocab_size: its input embedding is the mean of
the embedding rows (a point inside the cloud of real tokens rather than an outlier), and an untied
head gets the mean head row (the mask token's logit is then the average logit, well below the
likely tokens). The tokenizer files are copied unchanged; the samplers read the id from
config.json's `mask_token_id`.

Bad input (a checkpoint that is not Llama/Qwen2, an id out of range, a bias the style cannot hold,
an existing DST without --overwrite, a DST that is, contains or lies inside the source) is one line on
stderr, exit status 2, nothing written. DST goes through the same guard as `import`/`export`.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import torch

from dlmarch.checkpoint import build_on_meta, write_native
from dlmarch.atomic import atomic_directory
from dlmarch.config import TransformerConfig
from dlmarch.models.llada import LLaDAConfig
from dlmarch.registry import load_pretrained
from dlmarch.errors import ConfigError
from dlmarch.models import CausalLM, DreamModel, LLaDAModel
from dlmarch.models.dream import DreamConfig

from .hf import Report, check_destination, replaceable

STYLES = ("dream", "llada")
# Fields of the shared config carried over as they are; the family decides the rest.
_NOT_CARRIED = {"vocab_size", "qkv_bias", "rope_in_fp32", "attn_backend", "hf_extra"}


def diffusion_config(cfg: TransformerConfig, style: str, vocab_size: int, mask_token_id: int, where: str):
    """The bidirectional family's config for a causal config's weights."""
    common = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(TransformerConfig) if f.name not in _NOT_CARRIED}
    common.update(vocab_size=vocab_size, mask_token_id=mask_token_id)
    if style == "dream":
        if cfg.out_bias or cfg.mlp_bias:
            raise ConfigError(f"{where}: Dream's layout holds q/k/v biases only; this model has an "
                              f"{'o' if cfg.out_bias else 'MLP'} projection bias")
        return DreamConfig(qkv_bias=True, **common)
    if (cfg.out_bias or cfg.mlp_bias) and not (cfg.qkv_bias and cfg.out_bias and cfg.mlp_bias):
        raise ConfigError(f"{where}: LLaDA's config holds q/k/v biases alone or biases everywhere, not this mix")
    return LLaDAConfig(qkv_bias=cfg.qkv_bias, **common)


def with_mask_row(weight: torch.Tensor) -> torch.Tensor:
    """(V, C) -> (V + 1, C): the new last row is the mean of the others (computed in fp32)."""
    return torch.cat([weight, weight.float().mean(0, keepdim=True).to(weight.dtype)])


def tokenizer_mask_id(src: Path, vocab_size: int) -> int | None:
    """The mask token id of the tokenizer stored with the source, if it has one inside the vocabulary."""
    try:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(src, local_files_only=True, trust_remote_code=False)
    except Exception:  # no tokenizer files (a bare native checkpoint): nothing to agree with
        return None
    mask = tok.mask_token_id
    return mask if mask is not None and 0 <= mask < vocab_size else None


def to_diffusion(src: str | Path, dst: str | Path, style: str, mask_token_id: int | None = None,
                 overwrite: bool = False) -> Report:
    t0 = time.time()
    src, dst = Path(src), Path(dst)
    if style not in STYLES:
        raise ConfigError(f"--style must be one of {STYLES}, found {style!r}")
    check_destination(dst, {"source": src}, overwrite, [src])  # before anything is read or written
    causal = load_pretrained(src)
    if type(causal) is not CausalLM:
        raise ConfigError(f"{src}: a {causal.config.family} checkpoint; to-diffusion takes a causal Llama or Qwen2 one")
    cfg = causal.config
    V = cfg.vocab_size
    if mask_token_id is not None and not 0 <= mask_token_id < V:
        raise ConfigError(f"--mask-token-id {mask_token_id} is outside the vocabulary [0, {V}) of {src}")
    if mask_token_id is None:
        mask_token_id = tokenizer_mask_id(src, V)
    append = mask_token_id is None
    new_cfg = diffusion_config(cfg, style, V + append, V if append else mask_token_id, str(src))

    state = causal.state_dict()
    if append:
        state["wte.weight"] = with_mask_row(state["wte.weight"])
        if "lm_head.weight" in state:
            state["lm_head.weight"] = with_mask_row(state["lm_head.weight"])
    cls = DreamModel if style == "dream" else LLaDAModel
    model = build_on_meta(cls, new_cfg)
    expected = model.state_dict()
    for name, meta in expected.items():  # q/k/v biases a Llama source lacks: zero, i.e. no change
        if name not in state and name.endswith(("q_proj.bias", "k_proj.bias", "v_proj.bias")):
            state[name] = torch.zeros(meta.shape, dtype=state["wte.weight"].dtype)
    model.load_state_dict(state, strict=True, assign=True)
    nbytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    with atomic_directory(dst, overwrite=overwrite, check=replaceable([src]), needed=nbytes) as tmp:
        write_native(model, tmp, source=src)
    return Report(new_cfg.family, len(expected), len(list(dst.glob("*.safetensors"))), nbytes, time.time() - t0)


__all__ = ["to_diffusion", "diffusion_config", "with_mask_row", "STYLES"]
