"""Every mask pattern: our dense form, SDPA and FlexAttention against a reference written here with
plain loops and a naive softmax, from the rules' definitions."""

import math

import pytest
import torch

from dlmarch.attention import attend
from dlmarch.masks import AttentionMask

B, H, HKV, D = 2, 4, 2, 16


def loop_mask(rule, q, kv, B, Lq, Lk):
    """allowed[b][i][j] straight from the definitions (independent of dlmarch.masks.allowed)."""
    out = torch.zeros(B, Lq, Lk, dtype=torch.bool)
    for b in range(B):
        for i in range(Lq):
            for j in range(Lk):
                if kv.get("valid") is not None and not kv["valid"][b][j]:
                    # A padding query under a causal rule sees its own position (never an empty row).
                    own = rule != "bidirectional" and q.get("valid") is not None and not q["valid"][b][i] \
                        and kv["pos"][b][j] == q["pos"][b][i]
                    if not own:
                        continue
                if q.get("doc") is not None and q["doc"][b][i] != kv["doc"][b][j]:
                    continue
                if rule == "causal" and kv["pos"][b][j] > q["pos"][b][i]:
                    continue
                if rule == "block_causal":
                    qc, kc = bool(q["clean"][b][i]), bool(kv["clean"][b][j])
                    qb, kb = int(q["block"][b][i]), int(kv["block"][b][j])
                    if not qc and not kc:
                        ok = qb == kb
                    elif not qc and kc:
                        ok = kb < qb
                    elif qc and kc:
                        ok = kb <= qb
                    else:
                        ok = False
                    if not ok:
                        continue
                out[b, i, j] = True
    return out


def naive_attention(q, k, v, allowed):
    k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
    v = v.repeat_interleave(q.shape[1] // v.shape[1], dim=1)
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    scores = scores.masked_fill(~allowed[:, None], float("-inf"))
    return scores.softmax(-1) @ v


def patterns():
    L = 12
    pos = torch.arange(L).expand(B, L)
    valid = torch.ones(B, L, dtype=torch.bool)
    valid[1, :4] = False  # row 1 left-padded by 4
    doc = torch.tensor([[0] * 5 + [1] * 4 + [-1] * 3, [0] * 7 + [1] * 5])
    doc_pos = torch.tensor([list(range(5)) + list(range(4)) + list(range(3)), list(range(7)) + list(range(5))])
    # Two-copy block-causal: noisy copy of 8 response tokens (blocks 1, 2) + clean copy of the
    # full row (prompt = block 0, then blocks 1, 2).
    blk = torch.tensor([1, 1, 1, 1, 2, 2, 2, 2] + [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2]).expand(B, -1)
    clean = torch.tensor([False] * 8 + [True] * 12).expand(B, -1)
    bpos = torch.tensor(list(range(4, 12)) + list(range(12))).expand(B, -1)
    out = {
        "bidirectional+padding": ("bidirectional", dict(pos=pos, valid=valid)),
        "causal+padding": ("causal", dict(pos=pos, valid=valid)),
        "packed-bidirectional": ("bidirectional", dict(pos=doc_pos, doc=doc)),
        "packed-causal": ("causal", dict(pos=doc_pos, doc=doc)),
        "block-causal-two-copies": ("block_causal", dict(pos=bpos, block=blk, clean=clean)),
    }
    return out


def make(rule, meta):
    return AttentionMask.self_attention(rule, meta["pos"], doc_ids=meta.get("doc"), valid=meta.get("valid"),
                                        block_ids=meta.get("block"), clean=meta.get("clean"))


@pytest.mark.parametrize("name", list(patterns()))
def test_backends_agree_with_loop_reference(name):
    rule, meta = patterns()[name]
    mask = make(rule, meta)
    L = meta["pos"].shape[1]
    want_mask = loop_mask(rule, meta, meta, B, L, L)
    assert torch.equal(mask.dense()[:, 0], want_mask)
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(B, h, L, D, generator=g) for h in (H, HKV, HKV))
    want = naive_attention(q, k, v, want_mask)
    for backend in ("sdpa", "flex"):
        torch.testing.assert_close(attend(q, k, v, mask, backend), want, atol=1e-5, rtol=0, msg=f"{backend} on {name}")


@pytest.mark.parametrize("rule", ["bidirectional", "causal"])
def test_cached_queries_see_cached_keys(rule):
    """A forward over the tail of a canvas (keys of the head from a cache) sees what the full mask says."""
    L, start = 10, 6
    pos = torch.arange(L).expand(B, L)
    valid = torch.ones(B, L, dtype=torch.bool)
    valid[0, :2] = False
    full = AttentionMask.self_attention(rule, pos, valid=valid)
    tail = full.with_queries(start)
    meta = dict(pos=pos, valid=valid)
    want_mask = loop_mask(rule, {"pos": pos[:, start:]}, meta, B, L - start, L)
    assert torch.equal(tail.dense()[:, 0], want_mask)
    g = torch.Generator().manual_seed(1)
    q = torch.randn(B, H, L - start, D, generator=g)
    k, v = torch.randn(B, HKV, L, D, generator=g), torch.randn(B, HKV, L, D, generator=g)
    for backend in ("sdpa", "flex"):
        torch.testing.assert_close(attend(q, k, v, tail, backend), naive_attention(q, k, v, want_mask), atol=1e-5, rtol=0)


def test_varlen_segments():
    _, meta = patterns()["packed-causal"]
    valid = torch.ones(B, 12, dtype=torch.bool)
    valid[1, 10:] = False
    mask = AttentionMask.self_attention("causal", meta["pos"], doc_ids=meta["doc"], valid=valid)
    idx, cu, max_len = mask.varlen()
    assert cu.tolist() == [0, 5, 9, 12, 19, 22]
    assert max_len == 7 and idx.numel() == 22


def test_flash_refused_without_flash_attn():
    from dlmarch.attention import flash_available, resolve_backend

    if flash_available():
        pytest.skip("flash-attn is installed here")
    with pytest.raises(RuntimeError, match="flash-attn"):
        resolve_backend("flash", None, torch.device("cpu"), torch.float32)
