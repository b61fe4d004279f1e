"""One description of a batch's attention mask, and every backend's form of it derived from it.

A mask is a rule plus per-token metadata for the queries and for the keys (`Tokens`): positions,
document ids (packed rows), validity (padding), block ids and a clean/noisy flag (the two-copy
block-causal layout). `allowed(rule, q, kv)` is the single pure function that says whether a query
may see a key; the dense boolean mask evaluates it on a broadcast grid, the FlexAttention BlockMask
evaluates it per (query, key) index, and the flash-attn varlen form (cu_seqlens) is derived from the
same metadata for the rules it can express.

The mask is built once per batch and handed to every layer; each form is computed on first use and
cached on the object. The kernels that consume these forms live in dlmarch.attention.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import torch
from torch import Tensor

RULES = ("bidirectional", "causal", "block_causal")


@dataclass
class Tokens:
    """Per-token metadata of one side (queries or keys) of attention. Every field is (B, L).

    pos:   absolute position (RoPE index); the causal rule compares positions.
    doc:   document id; tokens of different documents never see each other.
    valid: False at padding: padding keys are hidden from every query (LLaDA's key-padding bias).
           Under a causal rule a left-padding query would then see nothing (a NaN row); it sees
           its own position instead. The filler at the end of a packed row is not padding but a
           document of its own (doc id -1) that nothing else sees.
    block: block id (block_causal rule).
    clean: True for the clean copy, False for the noisy copy (block_causal rule).
    """

    pos: Tensor
    doc: Tensor | None = None
    valid: Tensor | None = None
    block: Tensor | None = None
    clean: Tensor | None = None

    def _map(self, fn) -> "Tokens":
        return Tokens(**{k: (None if v is None else fn(v)) for k, v in self.__dict__.items()})

    def at(self, b, i) -> "Tokens":
        """Metadata of token i of row b (used inside FlexAttention's mask_mod)."""
        return self._map(lambda t: t[b, i])

    def unsqueeze(self, dim: int) -> "Tokens":
        return self._map(lambda t: t.unsqueeze(dim))

    def slice(self, start: int, stop: int | None = None) -> "Tokens":
        return self._map(lambda t: t[:, start:stop])

    @property
    def shape(self) -> torch.Size:
        return self.pos.shape


def allowed(rule: str, q: Tokens, kv: Tokens) -> Tensor:
    """Whether each query may attend to each key: the one definition of every mask we use.

    bidirectional: every key of the same document.
    causal:        keys at positions <= the query's position (same document).
    block_causal:  the two-copy layout of BD3-LM: a noisy query of block b sees the noisy keys of
                   block b and the clean keys of blocks < b; a clean query sees clean keys of blocks
                   <= b. Never does anything see a noisy key of another block.
    """
    terms = []
    if rule == "causal":
        terms.append(kv.pos <= q.pos)
    elif rule == "block_causal":
        noisy_same_block = ~q.clean & ~kv.clean & (kv.block == q.block)
        noisy_sees_clean_past = ~q.clean & kv.clean & (kv.block < q.block)
        clean_sees_clean = q.clean & kv.clean & (kv.block <= q.block)
        terms.append(noisy_same_block | noisy_sees_clean_past | clean_sees_clean)
    elif rule != "bidirectional":
        raise ValueError(f"unknown mask rule {rule!r}; expected one of {RULES}")
    if q.doc is not None and kv.doc is not None:
        terms.append(q.doc == kv.doc)
    if kv.valid is not None:
        if rule == "bidirectional" or q.valid is None:
            terms.append(kv.valid)
        else:
            terms.append(kv.valid | (~q.valid & (kv.pos == q.pos)))
    if not terms:
        terms.append((q.pos >= 0) & (kv.pos >= 0))
    out = terms[0]
    for t in terms[1:]:
        out = out & t
    return out


@dataclass(eq=False)
class AttentionMask:
    """Which keys each query sees, for a whole batch. q: (B, Lq) metadata, kv: (B, Lk)."""

    rule: str
    q: Tokens
    kv: Tokens
    _cache: dict = field(default_factory=dict, repr=False)

    def __post_init__(self):
        if self.rule not in RULES:
            raise ValueError(f"unknown mask rule {self.rule!r}; expected one of {RULES}")
        if self.rule == "block_causal" and (self.q.block is None or self.q.clean is None):
            raise ValueError("block_causal masks need block ids and clean flags for every token")

    # --- constructors ---------------------------------------------------------------------------------
    @classmethod
    def self_attention(
        cls,
        rule: str,
        positions: Tensor,
        *,
        doc_ids: Tensor | None = None,
        valid: Tensor | None = None,
        block_ids: Tensor | None = None,
        clean: Tensor | None = None,
    ) -> "AttentionMask":
        """Queries and keys are the same tokens."""
        tok = Tokens(pos=positions, doc=doc_ids, valid=valid, block=block_ids, clean=clean)
        return cls(rule, tok, tok)

    def with_queries(self, start: int, stop: int | None = None) -> "AttentionMask":
        """The same keys, only the queries in [start, stop): for a forward over the tail of a canvas
        whose earlier keys come from a cache."""
        return AttentionMask(self.rule, self.q.slice(start, stop), self.kv)

    # --- properties that let backends skip work -------------------------------------------------------
    @property
    def batch_size(self) -> int:
        return self.q.pos.shape[0]

    @property
    def is_self_attention(self) -> bool:
        return self.q is self.kv

    @functools.cached_property
    def hides_nothing(self) -> bool:
        """True when every query sees every key (no mask needed at all)."""
        return (
            self.rule == "bidirectional"
            and self.q.doc is None
            and (self.kv.valid is None or bool(self.kv.valid.all()))
        )

    @functools.cached_property
    def is_plain_causal(self) -> bool:
        """True when the mask equals SDPA's is_causal (square, aligned, nothing else)."""
        if self.rule != "causal" or self.q.doc is not None:
            return False
        if self.kv.valid is not None and not bool(self.kv.valid.all()):
            return False
        if self.q.pos.shape != self.kv.pos.shape:
            return False
        return bool((self.q.pos == self.kv.pos).all()) and bool(
            (self.q.pos[:, 1:] > self.q.pos[:, :-1]).all()
        )

    # --- backend forms ----------------------------------------------------------------------------------
    def dense(self) -> Tensor:
        """Boolean (B, 1, Lq, Lk): True where attention is allowed."""
        if "dense" not in self._cache:
            grid = allowed(self.rule, self.q.unsqueeze(-1), self.kv.unsqueeze(-2))
            B, Lq, Lk = self.q.pos.shape[0], self.q.pos.shape[1], self.kv.pos.shape[1]
            self._cache["dense"] = grid.expand(B, Lq, Lk).unsqueeze(1)
        return self._cache["dense"]

    def block_mask(self):
        """FlexAttention BlockMask evaluating `allowed` per (query, key) index."""
        if "block_mask" not in self._cache:
            from torch.nn.attention.flex_attention import create_block_mask

            rule, q, kv = self.rule, self.q, self.kv

            def mask_mod(b, h, q_idx, kv_idx):
                return allowed(rule, q.at(b, q_idx), kv.at(b, kv_idx))

            B, Lq, Lk = self.batch_size, self.q.pos.shape[1], self.kv.pos.shape[1]
            device = self.q.pos.device
            self._cache["block_mask"] = create_block_mask(
                mask_mod, B, None, Lq, Lk, device=device, _compile=device.type == "cuda"
            )
        return self._cache["block_mask"]

    @property
    def varlen_ok(self) -> bool:
        """flash-attn's varlen kernels express bidirectional or causal attention inside contiguous
        segments (documents, with padding removed) of the same tokens."""
        return self.is_self_attention and self.rule in ("bidirectional", "causal")

    def varlen(self) -> tuple[Tensor, Tensor, int]:
        """(indices of real tokens in the flattened batch, cu_seqlens int32, max segment length)."""
        if "varlen" not in self._cache:
            if not self.varlen_ok:
                raise ValueError(f"the {self.rule} mask has no flash-attn varlen form")
            B, L = self.q.pos.shape
            device = self.q.pos.device
            valid = self.q.valid if self.q.valid is not None else torch.ones(B, L, dtype=torch.bool, device=device)
            doc = self.q.doc if self.q.doc is not None else torch.zeros(B, L, dtype=torch.long, device=device)
            idx = valid.flatten().nonzero().squeeze(1)
            row = torch.arange(B, device=device).repeat_interleave(L)
            seg = (row * (int(doc.max()) + 2) + doc.flatten() + 1)[idx]
            starts = torch.ones_like(seg, dtype=torch.bool)
            starts[1:] = seg[1:] != seg[:-1]
            start_idx = starts.nonzero().squeeze(1)
            cu = torch.cat([start_idx, torch.tensor([seg.numel()], device=device)]).to(torch.int32)
            max_len = int((cu[1:] - cu[:-1]).max()) if cu.numel() > 1 else 0
            self._cache["varlen"] = (idx, cu, max_len)
        return self._cache["varlen"]


def pack_selected(select: Tensor) -> tuple[Tensor, Tensor]:
    """Each row's selected positions moved to the left, in order: (index (B, K), real (B, K)) with
    K the largest count of a row; real is False on the slots past a row's own count."""
    counts = select.sum(1)
    K = int(counts.max())
    index = torch.argsort((~select).to(torch.int8), dim=1, stable=True)[:, :K]
    real = torch.arange(K, device=select.device)[None] < counts[:, None]
    return index, real


__all__ = ["Tokens", "AttentionMask", "allowed", "pack_selected", "RULES"]
