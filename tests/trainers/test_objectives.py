"""Objectives against direct transcriptions of the method cards."""

import math

import pytest
import torch
import torch.nn.functional as F

from tests.helpers import random_examples, tiny_llada
from trainers.data import pack_rows, packed_batch, pad_batch
from trainers.objectives.gift import entropy_from_logits, gift, token_rates
from trainers.objectives.sft import sft, sft_loss

MASK, EOS = 60, 61


def examples(seed=0, n=4):
    return random_examples(seed, n, EOS)


def card2_loss(model, ids, response, masked, p_row, normaliser):
    """Card 2 written out row by row with full logits."""
    noisy = torch.where(masked, MASK, ids)
    logits = model(noisy).logits
    B = ids.shape[0]
    ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids.reshape(-1), reduction="none").view(B, -1)
    terms = torch.where(masked, ce / p_row[:, None], torch.zeros_like(ce))
    if normaliser == "answer_length":
        return sum(terms[i].sum() / response[i].sum() for i in range(B)) / B
    if normaliser == "response":
        return terms.sum() / response.sum()
    return terms.sum() / masked.sum()


@pytest.mark.parametrize("normaliser", ["answer_length", "response", "masked"])
def test_sft_loss_is_card_2(normaliser):
    model = tiny_llada()
    batch = pad_batch(examples(), EOS, "train")
    g = torch.Generator().manual_seed(1)
    masked = batch.loss_mask & (torch.rand(batch.input_ids.shape, generator=g) < 0.5)
    p = torch.tensor([0.3, 0.5, 0.7, 0.9])
    out = sft_loss(model, batch, masked, p, mask_id=MASK, normaliser=normaliser)
    want = card2_loss(model, batch.input_ids, batch.loss_mask, masked, p, normaliser)
    torch.testing.assert_close(out.loss_sum / out.denom, want, atol=1e-5, rtol=1e-5)


def test_sft_prompt_stays_clean_and_rate_follows_t():
    model = tiny_llada()
    batch = pad_batch(examples(n=4) * 50, EOS, "train")
    seen = {}

    def spy(x, **kw):
        seen["x"] = x
        return model(x, **kw)

    spy.training = True
    sft(spy, batch, torch.Generator().manual_seed(0), mask_id=MASK)
    x = seen["x"]
    prompt = ~batch.loss_mask & (batch.seg >= 0)
    assert not (x[prompt] == MASK).any()
    frac = (x[batch.loss_mask] == MASK).float().mean()
    assert 0.4 < frac < 0.6  # E[p] = 0.5


@pytest.mark.parametrize("objective", [sft, gift])
def test_packed_and_padded_batches_give_the_same_loss(objective):
    model = tiny_llada()
    ex = examples(n=6)
    padded = pad_batch(ex, EOS, "exclude")
    packed = packed_batch(pack_rows(ex, 24), 24, EOS)
    assert packed.input_ids.shape[0] < padded.input_ids.shape[0]
    a = objective(model, padded, torch.Generator().manual_seed(3), mask_id=MASK)
    b = objective(model, packed, torch.Generator().manual_seed(3), mask_id=MASK)
    assert a.denom == b.denom
    torch.testing.assert_close(a.loss_sum, b.loss_sum, atol=1e-5, rtol=1e-5)


def test_gift_entropy_and_rates_on_hand_made_logits():
    V = 8
    uniform = torch.zeros(V)
    peaked = torch.tensor([10.0] + [0.0] * (V - 1))
    middle = torch.tensor([2.0, 1.0] + [0.0] * (V - 2))
    H = entropy_from_logits(torch.stack([uniform, peaked, middle]))
    assert math.isclose(H[0], math.log(V), rel_tol=1e-6)
    assert 0 < H[1] < H[2] < H[0]
    beta = H.sqrt()
    t = torch.full((3,), 0.4)
    # beta_i = beta_ref gives t_i = t
    torch.testing.assert_close(token_rates(t, beta, beta), t)
    # higher entropy, higher rate
    rates = token_rates(t, beta, beta.mean())
    assert rates[1] < rates[2] < rates[0]
    # the formula
    torch.testing.assert_close(rates, 1 - (1 - t) ** (beta / beta.mean()))


def test_gift_masks_and_weights_follow_card_4(monkeypatch):
    """With the probe's betas fixed, the mask is u < t_i and the loss sum_i CE_i / t_i / #masked."""
    import trainers.objectives.gift as G
    from trainers.objectives import common

    model = tiny_llada()
    batch = pad_batch(examples(n=3), EOS, "train")
    content = batch.answer  # the answers through their EOS; the rest of loss_mask is trained padding
    assert (batch.loss_mask & ~content).any()
    K = int(content.sum())
    beta = torch.linspace(0.1, 2.0, K)
    monkeypatch.setattr(G, "probe_betas", lambda *a: beta)
    out = gift(model, batch, torch.Generator().manual_seed(4), mask_id=MASK)
    # Replay the draws of the same generator.
    g = torch.Generator().manual_seed(4)
    t = torch.rand(batch.num_docs, generator=g)
    p = (1 - common.EPS) * t + common.EPS
    u = common.doc_uniform(batch, g, n=2)[0]
    rates = torch.zeros(batch.input_ids.shape)
    rates[content] = 1 - (1 - p[batch.seg[content]]) ** (beta / beta.mean())
    padding = batch.loss_mask & ~content
    rates[padding] = p[batch.seg[padding]]  # padding: the plain rate
    masked = batch.loss_mask & (u < rates)
    assert masked.any()
    logits = model(torch.where(masked, MASK, batch.input_ids)).logits
    ce = F.cross_entropy(logits[masked], batch.input_ids[masked], reduction="none")
    want = (ce / rates[masked]).sum() / masked.sum()
    assert out.denom == float(masked.sum())
    torch.testing.assert_close(out.loss_sum / out.denom, want, atol=1e-5, rtol=1e-5)


def test_gift_underflowing_rates_stay_finite_and_fall_back(monkeypatch):
    import trainers.objectives.gift as G

    model = tiny_llada()
    batch = pad_batch(examples(n=2), EOS, "train")
    K = int(batch.answer.sum())
    # beta_i / beta_ref huge for all but one token: t_i underflows to 0 there; 1/t_i must never be taken.
    beta = torch.full((K,), 1e-30)
    beta[0] = 1.0
    monkeypatch.setattr(G, "probe_betas", lambda *a: beta)
    out = gift(model, batch, torch.Generator().manual_seed(0), mask_id=MASK)
    assert math.isfinite(float(out.loss_sum.detach())) and math.isfinite(out.denom)
    # nothing masked by the entropy rates: the plain masked-diffusion SFT mask is used
    beta = torch.full((K,), 1.0)
    monkeypatch.setattr(G, "probe_betas", lambda *a: beta)
    monkeypatch.setattr(G, "token_rates", lambda t, b, r: torch.zeros_like(t))
    out = gift(model, batch, torch.Generator().manual_seed(0), mask_id=MASK)
    assert out.metrics["fallback"] == 1.0 and out.denom > 0 and math.isfinite(float(out.loss_sum.detach()))


def test_gift_amortised_probe_reuses_betas_between_probe_epochs():
    from trainers.objectives.gift import GIFTObjective

    model = tiny_llada()
    ex = examples(n=4)
    calls = []

    def counting(x, **kw):
        calls.append(kw.get("logits_at").sum().item())
        return model(x, **kw)

    counting.training, counting.eval, counting.train = True, lambda: None, lambda mode=True: None
    obj = GIFTObjective(MASK, probe_every=3)
    exact = GIFTObjective(MASK, probe_every=1)
    for epoch in range(5):
        b = pad_batch(ex, EOS, "train")
        b.epoch = epoch
        calls.clear()
        a = obj(counting, b, torch.Generator().manual_seed(epoch))
        probed = len(calls) == 2  # probe + training pass
        assert probed == (epoch % 3 == 0), epoch
        if epoch % 3 == 0:  # a probe epoch: exactly the paper's GIFT
            e = exact(model, b, torch.Generator().manual_seed(epoch))
            torch.testing.assert_close(a.loss_sum, e.loss_sum)
        obj.sync()
    assert set(obj.state_dict()) == {str(e.line) for e in ex}
    fresh = GIFTObjective(MASK, probe_every=3)
    fresh.load_state_dict(obj.state_dict())
    b = pad_batch(ex, EOS, "train")
    b.epoch = 4
    torch.testing.assert_close(fresh(model, b, torch.Generator().manual_seed(9)).loss_sum,
                               obj(model, b, torch.Generator().manual_seed(9)).loss_sum)
