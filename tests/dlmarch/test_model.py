"""Model invariances and input checks."""

import pytest
import torch

from dlmarch import CausalLM, LlamaConfig
from tests.helpers import tiny_llada


def test_left_padding_and_batch_mates_do_not_change_a_row():
    model = tiny_llada()
    g = torch.Generator().manual_seed(0)
    row = torch.randint(0, 60, (1, 11), generator=g)
    other = torch.randint(0, 60, (1, 15), generator=g)
    with torch.no_grad():
        alone = model(row).logits[0]
        batch = torch.full((2, 15), 61)
        batch[0, 4:] = row[0]
        batch[1] = other[0]
        am = torch.ones(2, 15, dtype=torch.long)
        am[0, :4] = 0
        out = model(batch, attention_mask=am).logits
    torch.testing.assert_close(out[0, 4:], alone, atol=1e-5, rtol=0)
    with torch.no_grad():
        torch.testing.assert_close(out[1], model(other).logits[0], atol=1e-5, rtol=0)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("backend", ["sdpa", "flex"])
def test_packed_row_equals_documents_alone(causal, backend):
    if causal:
        torch.manual_seed(0)
        cfg = LlamaConfig(vocab_size=64, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2,
                          intermediate_size=48, attn_backend=backend)
        model = CausalLM(cfg).init_weights(std=0.2).eval()
    else:
        model = tiny_llada(attn_backend=backend)
    g = torch.Generator().manual_seed(1)
    docs = [torch.randint(0, 60, (n,), generator=g) for n in (7, 5, 9)]
    filler = 3
    ids = torch.cat(docs + [torch.full((filler,), 61)])[None]
    doc_ids = torch.cat([torch.full((len(d),), i) for i, d in enumerate(docs)] + [torch.full((filler,), -1)])[None]
    with torch.no_grad():
        packed = model(ids, doc_ids=doc_ids).logits[0]
        start = 0
        for d in docs:
            alone = model(d[None]).logits[0]
            torch.testing.assert_close(packed[start:start + len(d)], alone, atol=1e-5, rtol=0)
            start += len(d)


def test_kv_cache_prefix_equals_full_forward():
    model = tiny_llada()
    ids = torch.randint(0, 60, (2, 14))
    am = torch.ones(2, 14, dtype=torch.long)
    am[1, :3] = 0
    with torch.no_grad():
        full = model(ids, attention_mask=am, return_kv=True)
        prefix = [(k[:, :, :9], v[:, :, :9]) for k, v in full.kv]
        tail = model(ids[:, 9:], attention_mask=am, past_kv=prefix).logits
    torch.testing.assert_close(tail, full.logits[:, 9:], atol=1e-5, rtol=0)


class _Boom(Exception):
    pass


@pytest.mark.parametrize(
    "make,match",
    [
        (lambda: torch.tensor([[1, 2, 64]]), "outside \\[0, 64\\)"),
        (lambda: torch.tensor([[1, -1, 3]]), "token id -1"),
        (lambda: torch.tensor([[1.0, 2.0]]), "dtype torch.float32"),
        (lambda: torch.tensor([1, 2, 3]), "rank 1"),
        (lambda: torch.zeros(1, 513, dtype=torch.long), "longer than the configured maximum"),
        (lambda: torch.zeros(1, 0, dtype=torch.long), "empty"),
    ],
)
def test_bad_input_refused_before_compute(make, match):
    model = tiny_llada()

    def boom(*a, **k):
        raise _Boom

    model.wte.forward = boom  # any compute would hit this first
    with pytest.raises(ValueError, match=match):
        model(make())


def test_attention_mask_shape_checked():
    model = tiny_llada()
    with pytest.raises(ValueError, match="attention_mask must have shape"):
        model(torch.zeros(2, 5, dtype=torch.long), attention_mask=torch.ones(2, 4))


def test_flops_per_token_counts_every_matmul():
    cfg = tiny_llada().config
    seq = 100
    layer_weights = 32 * 32 + 2 * 32 * 16 + 32 * 32 + 3 * 32 * 48  # q, k+v (2 kv heads of 8), o, mlp
    head_weights = 32 * 64
    matmuls = 2 * (2 * layer_weights + head_weights)  # 2 FLOPs per multiply-accumulate, 2 layers
    attn = 4 * 2 * seq * 4 * 8  # 4 * layers * seq * heads * head_dim (bidirectional: full sequence)
    assert cfg.flops_per_token(seq, training=False) == matmuls + attn
    assert cfg.flops_per_token(seq) == 3 * (matmuls + attn)
