"""The transformer language model shared by every family: embeddings, blocks, final norm, LM head.

LLaDA runs it with a bidirectional mask, Llama/Qwen2 with a causal one; the config decides. The
attention mask is built once per forward (`build_mask`) and handed to every block.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from ..checkpoint import save_native
from ..config import TransformerConfig
from ..errors import ConfigError
from ..family import load_transformer
from ..layers import Block, RMSNorm, Rope, rope_tables
from ..attention import compute_dtype, resolve_backend
from ..masks import AttentionMask

KVCache = list  # per layer: (k, v), each (B, Hkv, T, D), post-RoPE


@dataclass
class ModelOutput:
    """logits (B, L, V) (or (B, K, V) with `logits_at`); kv: per-layer keys/values when asked for;
    hidden: the last block's output before the final norm (B, L, C) when asked for; mask: the
    attention mask the forward built or was given (its q.pos are the positions used), for callers
    that attend into the same keys (L2D's diffusion path)."""

    logits: Tensor | None
    kv: KVCache | None = None
    hidden: Tensor | None = None
    mask: AttentionMask | None = None


def positions_from_docs(doc_ids: Tensor) -> Tensor:
    """Positions that restart at 0 at every document boundary of a packed row. (B, L) -> (B, L)."""
    B, L = doc_ids.shape
    idx = torch.arange(L, device=doc_ids.device).expand(B, L)
    start = torch.ones_like(doc_ids, dtype=torch.bool)
    start[:, 1:] = doc_ids[:, 1:] != doc_ids[:, :-1]
    first = torch.where(start, idx, torch.zeros_like(idx)).cummax(dim=1).values
    return idx - first


def memory_of(device: torch.device) -> int | None:
    """Bytes of memory of a device: the machine's RAM for the CPU, the card's for CUDA; None when unknown."""
    try:
        if device.type == "cpu":
            return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        if device.type == "cuda":
            return torch.cuda.get_device_properties(device).total_memory
    except (ValueError, OSError, RuntimeError, AssertionError):
        pass
    return None


def check_fits(n_params: int, what: str, device: torch.device | None = None) -> None:
    """Refuse to build `n_params` parameters on `device` (default: the current default device) when they
    cannot fit in its memory at the default dtype: the allocation would fail (or the machine swap to a
    halt) before any other check. Building on the meta device (loading) costs nothing and is never refused."""
    device = torch.device(device) if device is not None else torch.get_default_device()
    if device.type == "meta":
        return
    dtype = torch.get_default_dtype()
    need, have = n_params * dtype.itemsize, memory_of(device)
    if have is not None and need > have:
        raise ConfigError(f"{what} has {n_params:,} parameters, {need / 2**30:,.1f} GiB in {dtype} on {device}, "
                          f"which has {have / 2**30:,.1f} GiB; is the config right?")


class TransformerLM(nn.Module):
    """wte -> blocks -> ln_f -> lm_head. Native parameter names: `wte`, `blocks.N.*`, `ln_f`, `lm_head`."""

    config_class = TransformerConfig
    families: tuple = ()  # the `Family` records this class loads; set by each family module

    # --- the model protocol (docs/architecture.md): what samplers, evaluation and the loop ask a model ----
    # kind: "masked-diffusion" (a mask predictor: LLaDA, Dream), "causal" (Llama, Qwen2) or "l2d".
    kind: str = "causal"
    # logits[:, i] scores token i + 1 (an autoregressive head: causal models, Dream) rather than token i.
    shifted_logits: bool = True
    # The name of its sampler in dlmarch.sampling (`dlmarch.sampling.sampler_for` dispatches on it).
    sampler: str = "generate_causal"
    # Its likelihood estimator in dlmarch.likelihood (`estimator_for` dispatches on it): "causal" (exact),
    # "llada" (LLaDA's Monte Carlo ELBO) or "dream" (Dream's Monte Carlo ELBO, shifted logits).
    likelihood: str = "causal"
    # config.json's `decoding` entry as loaded (the defaults our trainers record for its sampler).
    decoding: dict | None = None

    def __init__(self, config: TransformerConfig):
        super().__init__()
        if not isinstance(config, self.config_class):
            raise TypeError(f"{type(self).__name__} needs a {self.config_class.__name__}, got {type(config).__name__}")
        self.config = config
        check_fits(config.num_params(), f"a {config.family} model of hidden_size {config.hidden_size}, "
                                        f"{config.num_layers} layers and a vocabulary of {config.vocab_size}")
        c = config.hidden_size
        self.wte = nn.Embedding(config.vocab_size, c)
        self.blocks = nn.ModuleList(self.make_block(i) for i in range(config.num_layers))
        self.ln_f = RMSNorm(c, config.rms_norm_eps)
        self.lm_head = None if config.tie_word_embeddings else nn.Linear(c, config.vocab_size, bias=False)
        self.gradient_checkpointing = False

    # None: RoPE frequencies in fp32 whatever the model's dtype (the rope_tables `freq_dtype`).
    rope_freq_dtype = None

    def make_block(self, layer: int) -> nn.Module:
        """Block `layer` (families whose layers differ, such as mixtures of experts, override this)."""
        return Block(self.config)

    # --- conveniences -----------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.wte.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.wte.weight.dtype

    @property
    def mask_rule(self) -> str:
        return "causal" if self.config.causal else "bidirectional"

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def flops_per_token(self, seq_len: int, training: bool = True) -> float:
        return self.config.flops_per_token(seq_len, training)

    def head(self, h: Tensor) -> Tensor:
        """LM head on final hidden states (already normed)."""
        weight = self.wte.weight if self.lm_head is None else self.lm_head.weight
        return F.linear(h, weight)

    def init_weights(self, std: float = 0.02, generator: torch.Generator | None = None) -> "TransformerLM":
        """Normal(0, std) matrices and embeddings, zero biases, unit norms (for models trained from scratch)."""
        for name, p in self.named_parameters():
            if name.endswith("norm.weight") or name == "ln_f.weight":
                nn.init.ones_(p)
            elif name.endswith(".bias"):
                nn.init.zeros_(p)
            else:
                with torch.no_grad():
                    p.normal_(0.0, std, generator=generator)
        return self

    # --- inputs -------------------------------------------------------------------------------------
    def check_inputs(self, input_ids: Tensor, attention_mask: Tensor | None, past_len: int, positions: Tensor | None):
        """ValueError on ids of the wrong type, rank or range, or a sequence past the configured maximum,
        before any compute."""
        if not isinstance(input_ids, Tensor):
            raise ValueError(f"input_ids must be a torch.Tensor, found {type(input_ids).__name__}")
        if input_ids.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"input_ids must be int64 or int32 token ids, found dtype {input_ids.dtype}")
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must have shape (batch, length), found rank {input_ids.dim()} {tuple(input_ids.shape)}")
        B, L = input_ids.shape
        if B == 0 or L == 0:
            raise ValueError(f"input_ids is empty: shape {tuple(input_ids.shape)}")
        if attention_mask is not None and tuple(attention_mask.shape) != (B, past_len + L):
            raise ValueError(
                f"attention_mask must have shape {(B, past_len + L)} (cached + new tokens), found {tuple(attention_mask.shape)}"
            )
        if torch.compiler.is_compiling():
            return  # value checks read the data (a graph break); eager runs do them
        lo, hi = int(input_ids.min()), int(input_ids.max())
        if lo < 0 or hi >= self.config.vocab_size:
            bad = lo if lo < 0 else hi
            raise ValueError(f"input_ids contains token id {bad}, outside [0, {self.config.vocab_size}) of this model's vocabulary")
        last = past_len + L if positions is None else int(positions.max()) + 1
        if last > self.config.max_position_embeddings:
            raise ValueError(
                f"sequence of {last} positions is longer than the configured maximum "
                f"max_position_embeddings={self.config.max_position_embeddings}"
            )

    def build_mask(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        *,
        position_ids: Tensor | None = None,
        doc_ids: Tensor | None = None,
        past_len: int = 0,
    ) -> tuple[Tensor, AttentionMask | None]:
        """Positions (B, L) of the new tokens and the mask of this forward (None when nothing is hidden).

        attention_mask (B, past_len + L): 1 for tokens, 0 for padding (hidden as keys).
        doc_ids (B, L): packed documents; positions restart per document unless given.
        """
        B, L = input_ids.shape
        device = input_ids.device
        if position_ids is None:
            if doc_ids is not None:
                position_ids = positions_from_docs(doc_ids)
            else:
                position_ids = torch.arange(past_len, past_len + L, device=device).expand(B, L)
        valid = None
        if attention_mask is not None and not bool(attention_mask.all()):
            valid = attention_mask.bool()
        if valid is None and doc_ids is None and past_len == 0 and not self.config.causal:
            return position_ids, None
        if past_len == 0:
            mask = AttentionMask.self_attention(self.mask_rule, position_ids, doc_ids=doc_ids, valid=valid)
            return position_ids, mask
        if doc_ids is not None:
            raise ValueError("packed documents (doc_ids) cannot be combined with a key/value cache")
        kv_pos = torch.arange(past_len + L, device=device).expand(B, past_len + L)
        full = AttentionMask.self_attention(self.mask_rule, kv_pos, valid=valid)
        return position_ids, full.with_queries(past_len)

    # --- forward ------------------------------------------------------------------------------------
    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        *,
        position_ids: Tensor | None = None,
        doc_ids: Tensor | None = None,
        mask: AttentionMask | None = None,
        past_kv: KVCache | None = None,
        return_kv: bool = False,
        logits_at: Tensor | slice | None = None,
        output_hidden: bool = False,
        compute_logits: bool = True,
    ) -> ModelOutput:
        """input_ids (B, L) -> ModelOutput.

        attention_mask: (B, past + L), 0 = padding.     doc_ids: (B, L) packed documents.
        mask:           a prebuilt AttentionMask (objectives with block patterns); its query positions
                        are used unless position_ids are given.
        past_kv:        cached keys/values of the first `past` positions; return_kv: return this
                        forward's keys/values (cache included) per layer.
        logits_at:      the positions whose logits are wanted: a slice, a (B, K) index (logits (B, K, V)),
                        or a boolean (B, L) selection (logits (K, V) of the selected tokens, in order).
        """
        past_len = 0 if past_kv is None else past_kv[0][0].shape[2]
        self.check_inputs(input_ids, attention_mask, past_len, position_ids)
        if mask is None:
            position_ids, mask = self.build_mask(
                input_ids, attention_mask, position_ids=position_ids, doc_ids=doc_ids, past_len=past_len
            )
        elif position_ids is None:
            position_ids = mask.q.pos
        x = self.wte(input_ids)
        rope = rope_tables(self.config, position_ids, self.rope_freq_dtype)
        # Under bf16 autocast x (an embedding) is fp32 but q/k/v are bf16: the backend is chosen for those.
        backend = resolve_backend(self.config.attn_backend, mask, x.device, compute_dtype(x))
        x, kv = self.run_blocks(x, rope, mask, backend, past_kv=past_kv, return_kv=return_kv)
        logits = None
        if compute_logits:
            h = x
            if isinstance(logits_at, slice):
                h = x[:, logits_at]
            elif logits_at is not None and logits_at.dtype == torch.bool:
                h = x[logits_at]
            elif logits_at is not None:
                h = x.gather(1, logits_at[..., None].expand(-1, -1, x.shape[-1]))
            logits = self.head(self.ln_f(h))
        return ModelOutput(logits=logits, kv=kv, hidden=x if output_hidden else None, mask=mask)

    def run_blocks(
        self,
        x: Tensor,
        rope: Rope,
        mask: AttentionMask | None,
        backend: str,
        *,
        past_kv: KVCache | None = None,
        return_kv: bool = False,
    ) -> tuple[Tensor, KVCache | None]:
        kv_out = [] if return_kv else None
        for i, block in enumerate(self.blocks):
            past = None if past_kv is None else past_kv[i]
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                x, present = checkpoint(block, x, rope, mask, backend, past_kv=past, use_reentrant=False)
            else:
                x, present = block(x, rope, mask, backend, past_kv=past)
            if kv_out is not None:
                kv_out.append(present)
        return x, kv_out

    @property
    def family(self):
        """This model's `Family` record (config, key table, HF model_type)."""
        return next(f for f in self.families if f.name == self.config.family)

    @property
    def token_config(self) -> TransformerConfig:
        """The config that holds the token ids (an L2D model's is its main path's)."""
        return self.config

    @property
    def mask_token_id(self) -> int | None:
        return getattr(self.config, "mask_token_id", None)

    @property
    def stop_token_ids(self) -> list[int]:
        """The ids that end an answer: EOS, then EoT where the config knows one."""
        cfg = self.token_config
        return [i for i in (cfg.eos_token_id, getattr(cfg, "eot_token_id", None)) if i is not None]

    def trainable(self) -> nn.Module:
        """The module an optimizer, LoRA and FSDP see: the whole model."""
        return self

    # --- checkpoints ------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path: str | Path, dtype: torch.dtype | None = None, device=None, *,
                        config_json: dict | None = None, **config_overrides):
        """Load an HF directory of a supported family (converted on the fly) or a native one.

        The model is built on the meta device and every tensor is assigned as it is read, so a large
        checkpoint never exists twice in memory. `config_overrides` (e.g. attn_backend='flex') replace
        config fields. `config_json`: the directory's config.json when the caller has read it already
        (`dlmarch.registry.load_pretrained`), so that it is not read again.
        """
        families = [f for f in cls.families if issubclass(f.model_class, cls)]
        if not families:
            raise TypeError(f"{cls.__name__} is not a model family; load with its family's class or dlmarch.AutoModel")
        return load_transformer(path, families, dtype=dtype, device=device, config_json=config_json,
                                **config_overrides)

    def save_pretrained(self, path: str | Path, max_shard_size: int = 5 * 2**30, decoding: dict | None = None) -> None:
        """Write a native checkpoint (config.json + safetensors, sharded with an index when large),
        atomically: a temporary directory renamed at the end. `decoding`: how the model should be
        sampled (config.json's `decoding`, read by `dlmarch.sampling.options`)."""
        save_native(self, path, max_shard_size=max_shard_size, extra={"decoding": decoding} if decoding else None)
