"""Fast-dLLM's decoding (NVlabs/Fast-dLLM) against transcriptions of its code: LLaDA's threshold decoding
on a bf16 model (float64 confidences)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dlmarch.sampling.llada import generate, get_num_transfer_tokens
from tests.helpers import tiny_llada

MASK = 60


def fast_dllm_transfer_index(logits, mask_index, x, num_transfer_tokens, threshold):
    """NVlabs/Fast-dLLM llada/generate.py get_transfer_index, temperature 0, 'low_confidence', transcribed."""
    x0 = torch.argmax(logits, dim=-1)
    p = F.softmax(logits.to(torch.float64), dim=-1)
    x0_p = torch.squeeze(torch.gather(p, dim=-1, index=torch.unsqueeze(x0, -1)), -1)
    x0 = torch.where(mask_index, x0, x)
    confidence = torch.where(mask_index, x0_p, -np.inf)
    transfer_index = torch.zeros_like(x0, dtype=torch.bool)
    if threshold is not None:
        num_transfer_tokens = mask_index.sum(dim=1, keepdim=True)
    for j in range(confidence.shape[0]):
        _, select_index = torch.topk(confidence[j], k=int(num_transfer_tokens[j]))
        transfer_index[j, select_index] = True
        if threshold is not None:
            for k in range(1, int(num_transfer_tokens[j])):
                if confidence[j, select_index[k]] < threshold:
                    transfer_index[j, select_index[k]] = False
    return x0, transfer_index


def fast_dllm_generate(model, prompt, steps, gen_length, block_length, mask_id, threshold):
    """NVlabs/Fast-dLLM llada/generate.py generate (no cache), transcribed."""
    x = torch.full((prompt.shape[0], prompt.shape[1] + gen_length), mask_id, dtype=torch.long)
    x[:, :prompt.shape[1]] = prompt.clone()
    num_blocks = gen_length // block_length
    steps = steps // num_blocks
    for num_block in range(num_blocks):
        s, e = prompt.shape[1] + num_block * block_length, prompt.shape[1] + (num_block + 1) * block_length
        num_transfer_tokens = get_num_transfer_tokens(x[:, s:e] == mask_id, steps)
        i = 0
        while True:
            mask_index = x == mask_id
            logits = model(x).logits
            mask_index[:, e:] = 0
            x0, transfer_index = fast_dllm_transfer_index(logits, mask_index, x,
                                                          num_transfer_tokens[:, i] if threshold is None else None,
                                                          threshold)
            x[transfer_index] = x0[transfer_index]
            i += 1
            if (x[:, s:e] == mask_id).sum() == 0:
                break
    return x


@pytest.fixture(scope="module")
def bf16_llada():
    """A bf16 tiny LLaDA with near-uniform confidences (bf16 rounding ties them) that never predicts the
    mask id (Fast-dLLM's loop would not end on a committed mask)."""
    model = tiny_llada(0).to(torch.bfloat16)
    with torch.no_grad():
        model.lm_head.weight.mul_(0.5)
    head = model.head

    def no_mask_head(h):
        out = head(h)
        out[..., MASK] = -torch.inf
        return out

    model.head = no_mask_head
    return model


@pytest.mark.parametrize("threshold", [0.9, 0.7, 0.5])
def test_threshold_decoding_on_bf16_is_fast_dllms(bf16_llada, threshold):
    """Fast-dLLM takes confidences with a float64 softmax; in the logits' dtype (bf16) ties and rounding
    chose other tokens (8 of 10 rows agreed at 0.9)."""
    prompt = torch.randint(0, 59, (10, 6), generator=torch.Generator().manual_seed(0))
    ours = generate(bf16_llada, prompt, steps=16, gen_length=16, block_length=8, threshold=threshold)
    want = fast_dllm_generate(bf16_llada, prompt, 16, 16, 8, MASK, threshold)
    assert (ours == want).all(1).sum() == 10
