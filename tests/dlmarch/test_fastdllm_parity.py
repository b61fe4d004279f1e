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


# --- Dream: Fast-dLLM's block, cache and threshold decoding ------------------------------------------------


class FastDLLMDream:
    """What Fast-dLLM's Dream (dream/model/modeling_dream.py) gives `_sample`: a full forward with its cache,
    a prefix-cached forward on x[:, s:], and a dual-cached forward on the block whose new keys replace the
    block's cached ones (`replace_position`), written with our model's cache; attention does not depend on
    the order of the keys, which carry their RoPE positions."""

    def __init__(self, model):
        self.model = model

    def __call__(self, x, past_key_values=None, use_cache=True, dual_cache=False, replace_position=None, start=0):
        B, n = x.shape
        pos = torch.arange(start, start + n).expand(B, n)
        if past_key_values is None:
            out = self.model(x, return_kv=True)
            return out.logits, out.kv
        if dual_cache:
            s, e = start, start + n
            past = [(torch.cat([k[:, :, :s], k[:, :, e:]], 2), torch.cat([v[:, :, :s], v[:, :, e:]], 2))
                    for k, v in past_key_values]
            return self.model(x, past_kv=past, position_ids=pos).logits, None
        return self.model(x, past_kv=past_key_values, position_ids=pos).logits, None


def fast_dllm_dream_sample(model, input_ids, max_length, mask_token_id, steps, eps, block_length, dual_cache, alg,
                           threshold):
    """NVlabs/Fast-dLLM dream/model/generation_utils_block.py DreamGenerationMixin._sample, transcribed for
    one unpadded row at temperature 0 (no top-p/top-k), alg 'confidence_threshold' or the entropy schedule."""
    from dlmarch.sampling.dream import sample_tokens

    self = FastDLLMDream(model)
    x = F.pad(input_ids, (0, max_length - input_ids.shape[1]), value=mask_token_id)
    gen_length = max_length - input_ids.shape[1]
    num_blocks = gen_length // block_length
    steps_per_block = steps // num_blocks
    timesteps = torch.linspace(1, eps, steps_per_block + 1)
    for num_block in range(num_blocks):
        current_block_start = input_ids.shape[1] + num_block * block_length
        current_block_end = current_block_start + block_length
        logits, past_key_values = self(x)
        logits = torch.cat([logits[:, :1], logits[:, :-1]], dim=1)
        confidence, x0 = sample_tokens(logits.reshape(-1, logits.shape[-1]), 0.0, None, None, "maskgit_plus")
        x[:, current_block_start] = x0.view(x.shape)[:, current_block_start]
        if not dual_cache:
            past_key_values = [(k[:, :, :current_block_start], v[:, :, :current_block_start]) for k, v in past_key_values]
        i = 1
        while True:
            if dual_cache:
                mask_index = x[:, current_block_start:current_block_end] == mask_token_id
                logits, _ = self(x[:, current_block_start:current_block_end], past_key_values=past_key_values,
                                 dual_cache=True, start=current_block_start)
            else:
                mask_index = x[:, current_block_start:] == mask_token_id
                logits, _ = self(x[:, current_block_start:], past_key_values=past_key_values, start=current_block_start)
            logits = torch.cat([logits[:, :1], logits[:, :-1]], dim=1)
            span = x[:, current_block_start:current_block_end] if dual_cache else x[:, current_block_start:]
            if alg == "confidence_threshold":
                mask_logits = logits[mask_index]
                confidence, x0 = sample_tokens(mask_logits, 0.0, None, None, "maskgit_plus")
                x_ = torch.zeros_like(span) + mask_token_id
                full_confidence = torch.full_like(span, -torch.inf, dtype=logits.dtype)
                x_[mask_index] = x0.clone()
                full_confidence[mask_index] = confidence
                full_confidence[:, block_length:] = -torch.inf
                current_transfer_tokens = int((x[:, current_block_start:current_block_end] == mask_token_id).sum())
                selected_confidence, select_index = torch.topk(full_confidence, current_transfer_tokens)
                transfer_index = torch.zeros_like(x_, dtype=torch.bool)
                transfer_index[0, select_index[0]] = True
                for k in range(1, current_transfer_tokens):
                    if selected_confidence[0, k] < threshold:
                        transfer_index[0, select_index[0, k]] = False
                span[transfer_index] = x_[transfer_index]
            else:
                if i == steps_per_block:
                    break
                t = timesteps[i]
                s = timesteps[i + 1]
                mask_index[:, block_length:] = False
                mask_logits = logits[mask_index]
                confidence, x0 = sample_tokens(mask_logits, 0.0, None, None, "entropy")
                num_mask_token = mask_index.sum() / mask_index.shape[0]
                number_transfer_tokens = int(num_mask_token * (1 - s / t)) if i < steps_per_block - 1 else int(num_mask_token)
                full_confidence = torch.full_like(span, -torch.inf, dtype=logits.dtype)
                full_confidence[mask_index] = confidence
                full_confidence[:, block_length:] = -torch.inf
                if number_transfer_tokens > 0:
                    _, transfer_index = torch.topk(full_confidence, number_transfer_tokens)
                    x_ = torch.zeros_like(span) + mask_token_id
                    x_[mask_index] = x0.clone()
                    row_indices = torch.arange(x.size(0)).unsqueeze(1).expand_as(transfer_index)
                    span[row_indices, transfer_index] = x_[row_indices, transfer_index]
                i += 1
            if (x[:, current_block_start:current_block_end] == mask_token_id).sum() == 0:
                break
    return x


@pytest.fixture(scope="module")
def dream_tiny():
    from dlmarch import AutoModel
    from tests.helpers import FIXTURES

    return AutoModel.from_pretrained(FIXTURES / "dream-tiny")


@pytest.mark.parametrize("kv_cache", ["prefix", "dual"])
@pytest.mark.parametrize("threshold", [None, 0.9, 0.5])
def test_dream_cache_and_threshold_are_fast_dllms(dream_tiny, kv_cache, threshold):
    from dlmarch import generate_dream

    for seed in range(3):
        prompt = torch.randint(0, 150, (1, 5), generator=torch.Generator().manual_seed(seed))
        ours = generate_dream(dream_tiny, prompt, max_new_tokens=16, steps=8, temperature=0.0, top_k=None,
                              alg="entropy", kv_cache=kv_cache, threshold=threshold, block_length=8)
        want = fast_dllm_dream_sample(dream_tiny, prompt.clone(), 21, dream_tiny.config.mask_token_id, 8, 1e-3, 8,
                                      kv_cache == "dual", "confidence_threshold" if threshold else "entropy", threshold)
        assert torch.equal(ours, want), (seed, ours[:, 5:].tolist(), want[:, 5:].tolist())
