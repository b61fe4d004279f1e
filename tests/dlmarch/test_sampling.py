"""LLaDA sampling: the reference's outputs exactly, batching, caches, and argument checks."""

import json
from types import SimpleNamespace

import pytest
import torch

from dlmarch import LLaDAModel, generate
from dlmarch import safetensors_io as st
from dlmarch.models import ModelOutput
from tests.helpers import LLADA_TINY

REF = st.load_file(LLADA_TINY / "reference.safetensors")
CALLS = json.loads((LLADA_TINY / "reference.json").read_text())["generate_calls"]


@pytest.fixture(scope="module")
def model():
    return LLaDAModel.from_pretrained(LLADA_TINY)


@pytest.mark.parametrize("name", list(CALLS))
def test_reference_calls_exactly(model, name):
    kw = dict(CALLS[name])
    am = torch.ones_like(REF["prompt"]) if name == "gen_cfg" else None  # as the reference was called
    out = generate(model, REF["prompt"], attention_mask=am, **kw)
    assert torch.equal(out, REF[name])


def test_guidance_without_attention_mask(model):
    kw = dict(CALLS["gen_cfg"])
    assert torch.equal(generate(model, REF["prompt"], **kw), REF["gen_cfg"])


def test_batch_of_different_lengths_equals_each_alone(model):
    g = torch.Generator().manual_seed(3)
    lengths = [5, 12, 9]
    prompts = [torch.randint(0, 140, (n,), generator=g) for n in lengths]
    P = max(lengths)
    batch = torch.full((3, P), 151)  # left padding with the pad (= EOS) id
    am = torch.zeros(3, P, dtype=torch.long)
    for i, p in enumerate(prompts):
        batch[i, P - len(p):] = p
        am[i, P - len(p):] = 1
    kw = dict(steps=16, gen_length=32, block_length=8)
    out = generate(model, batch, attention_mask=am, **kw)
    for i, p in enumerate(prompts):
        alone = generate(model, p[None], **kw)
        assert torch.equal(out[i, P:], alone[0, len(p):]), f"row {i}"


def test_sampling_is_reproducible_from_a_generator(model):
    kw = dict(steps=8, gen_length=16, block_length=8, temperature=1.0, remasking="random")
    a = generate(model, REF["prompt"], generator=torch.Generator().manual_seed(5), **kw)
    b = generate(model, REF["prompt"], generator=torch.Generator().manual_seed(5), **kw)
    c = generate(model, REF["prompt"], generator=torch.Generator().manual_seed(6), **kw)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_threshold_one_is_one_token_per_step(model):
    stats = {}
    ref = generate(model, REF["prompt"], steps=32, gen_length=32, block_length=8)
    out = generate(model, REF["prompt"], steps=32, gen_length=32, block_length=8, threshold=1.0, stats=stats)
    assert torch.equal(out, ref) and stats["nfe"] == 32


class _Recorder:
    """Proxies a model and records every call's canvas and cache."""

    def __init__(self, model):
        self.model, self.calls = model, []
        self.config, self.device = model.config, model.device

    def __call__(self, x, **kw):
        out = self.model(x, **kw)
        self.calls.append(dict(x=x.clone(), past_kv=kw.get("past_kv"), kv=out.kv))
        return out


def test_prefix_cache_holds_the_block_start_keys_and_values(model):
    rec = _Recorder(model)
    generate(rec, REF["prompt"], steps=16, gen_length=32, block_length=8, kv_cache=True)
    P = REF["prompt"].shape[1]
    start_canvas = None
    checked = 0
    for c in rec.calls:
        if c["past_kv"] is None:  # a block start: the full canvas
            start_canvas = c["x"]
            continue
        s = c["past_kv"][0][0].shape[2]
        assert (s - P) % 8 == 0  # the cache ends at a block boundary
        with torch.no_grad():
            recomputed = model(start_canvas, return_kv=True).kv
        for (k, v), (rk, rv) in zip(c["past_kv"], recomputed):
            torch.testing.assert_close(k, rk[:, :, :s], atol=1e-6, rtol=0)
            torch.testing.assert_close(v, rv[:, :, :s], atol=1e-6, rtol=0)
        checked += 1
    assert checked == 4 * 3  # 4 blocks, 3 cached steps each


def test_prefix_cache_with_one_step_per_block_is_the_reference(model):
    # The cache is only read from a block's second step on.
    kw = dict(steps=4, gen_length=32, block_length=8)
    assert torch.equal(generate(model, REF["prompt"], kv_cache=True, **kw), generate(model, REF["prompt"], **kw))


@pytest.mark.parametrize("cfg_scale", [0.0, 1.5])
def test_block_causal_cache_equals_its_uncached_computation(model, cfg_scale):
    am = torch.ones_like(REF["prompt"])
    am[1, :3] = 0
    kw = dict(steps=16, gen_length=32, block_length=8, block_causal=True, cfg_scale=cfg_scale, attention_mask=am)
    s1, s2 = {}, {}
    cached = generate(model, REF["prompt"], kv_cache=True, stats=s1, **kw)
    uncached = generate(model, REF["prompt"], kv_cache=False, stats=s2, **kw)
    assert torch.equal(cached, uncached)
    assert s1["nfe"] == 16 + 1 + 3  # steps + prompt + each finished block but the last


class _Scripted:
    """A fake mask predictor returning fixed logits, to test the sampler's choices by hand."""

    def __init__(self, logits):
        self.logits = logits
        self.config = SimpleNamespace(mask_token_id=9, eos_token_id=7, eot_token_id=8, vocab_size=10)
        self.device = torch.device("cpu")

    def __call__(self, x, attention_mask=None, logits_at=None, **_):
        return ModelOutput(logits=self.logits[: x.shape[0], logits_at])


def test_confidence_order_with_and_without_eos_eot_flag():
    logits = torch.full((1, 4, 10), -5.0)
    logits[0, 1, 7], logits[0, 2, 8], logits[0, 3, 2] = 5.0, 4.9, 3.0
    prompt = torch.tensor([[1]])

    def first_committed(**kw):
        rec = []

        class Spy(_Scripted):
            def __call__(self, x, **k):
                rec.append(x.clone())
                return super().__call__(x, **k)

        generate(Spy(logits), prompt, steps=3, gen_length=3, block_length=3, **kw)
        # After the first step exactly one position is filled; rec[1] is the canvas seen by step 2.
        return int((rec[1][0, 1:] != 9).nonzero()[0])

    assert first_committed() == 0  # EOS, the most confident, goes first
    assert first_committed(confidence_eos_eot_inf=True) == 2  # EOS and EoT deferred: token 2 first


def test_logits_eos_inf_never_emits_eos():
    logits = torch.full((1, 4, 10), -5.0)
    logits[0, 1:, 7] = 5.0
    logits[0, 1:, 3] = 1.0
    out = generate(_Scripted(logits), torch.tensor([[1]]), steps=3, gen_length=3, block_length=3, logits_eos_inf=True)
    assert out[0, 1:].tolist() == [3, 3, 3]


@pytest.mark.parametrize(
    "kw,match",
    [
        (dict(gen_length=30, block_length=8), "gen_length \\(30\\) is not a multiple of block_length \\(8\\)"),
        (dict(steps=6, gen_length=32, block_length=8), "steps \\(6\\) is not divisible by the number of blocks \\(4"),
        (dict(prompt=torch.tensor([[1, 150, 2]])), "prompt contains the mask token id 150 \\(row 0, position 1\\)"),
        (dict(prompt=torch.zeros(1, 0, dtype=torch.long)), "prompt is empty"),
        (dict(remasking="top_p"), "remasking must be one of"),
        (dict(threshold=1.5), "threshold must be in"),
        (dict(attention_mask=torch.ones(1, 3)), "attention_mask must have the prompt's shape"),
    ],
)
def test_arguments_that_cannot_work(model, kw, match):
    kw = dict(kw)
    prompt = kw.pop("prompt", REF["prompt"])
    with pytest.raises(ValueError, match=match):
        generate(model, prompt, **{"steps": 8, "gen_length": 16, "block_length": 8, **kw})


def test_command_line(tmp_path):
    import subprocess
    import sys

    from tests.helpers import tiny_model_dir

    model, tok = tiny_model_dir(tmp_path / "m")
    (tmp_path / "p.jsonl").write_text('{"prompt": "hi"}\n{"messages": [{"role": "user", "content": "longer one"}]}\n')
    run = [sys.executable, "-m", "dlmarch.generate", "--model", str(tmp_path / "m"), "--gen-length", "16",
           "--block-length", "8", "--steps", "8"]
    r = subprocess.run(run + ["--prompts", str(tmp_path / "p.jsonl"), "--output", str(tmp_path / "o.jsonl")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    rows = [json.loads(x) for x in (tmp_path / "o.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(isinstance(x["output"], str) for x in rows)
    # The command line gives what the function gives for the chat-templated prompt.
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False)
    ids = torch.tensor([tok(text, add_special_tokens=False).input_ids])
    want = generate(model, ids, steps=8, gen_length=16, block_length=8, generator=torch.Generator().manual_seed(0))
    cut = want[0, ids.shape[1]:].tolist()
    cut = cut[: next((i for i, t in enumerate(cut) if t in (tok.eos_token_id, tok.convert_tokens_to_ids("<|eot|>"))), len(cut))]
    assert rows[0]["output"] == tok.decode(cut, skip_special_tokens=True)
    bad = subprocess.run(run + ["--prompts", str(tmp_path / "missing.jsonl")], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.startswith("error: ")
    from dlmarch.sampling.cli import main

    for cache in (["--kv-cache"], ["--kv-cache", "dual"]):
        assert main(run[3:] + ["--prompt", "hi", "--stop-at-eos"] + cache) == 0


def test_sampler_warns_when_it_does_not_match_the_training(tmp_path):
    from dlmarch.sampling.cli import sampler_warnings
    from trainers.record import TrainingRecord

    def record(method, **info):  # what a trainer writes into its model's config.json (trainers/record.py)
        decoding = TrainingRecord.of(method, info).decoding()
        (tmp_path / "config.json").write_text(json.dumps({"format": "dlmarch", "decoding": decoding}))

    record("blockwise", block_size=32, all_blocks=True)
    w = sampler_warnings(str(tmp_path), 16, False)
    assert any("block size 32" in x for x in w) and any("--block-causal" in x for x in w)
    assert sampler_warnings(str(tmp_path), 32, True) == []
    record("sft")
    assert any("--block-causal decodes --all-blocks models" in x for x in sampler_warnings(str(tmp_path), 32, True))


def _reference_generate(model, prompt, steps, gen_length, block_length, temperature=0.0, remasking="low_confidence",
                        mask_id=150):
    """ML-GSAI/LLaDA generate.py (commit b7e6c356), transcribed without guidance or the EOS flags: the
    model runs on the whole canvas at every step and every step draws its noise, whether or not the
    block still has masks."""
    import numpy as np
    import torch.nn.functional as F

    x = torch.full((prompt.shape[0], prompt.shape[1] + gen_length), mask_id, dtype=torch.long)
    x[:, :prompt.shape[1]] = prompt.clone()
    num_blocks = gen_length // block_length
    steps = steps // num_blocks
    for num_block in range(num_blocks):
        lo, hi = prompt.shape[1] + num_block * block_length, prompt.shape[1] + (num_block + 1) * block_length
        mask_num = (x[:, lo:hi] == mask_id).sum(dim=1, keepdim=True)
        num_transfer_tokens = torch.zeros(mask_num.size(0), steps, dtype=torch.int64) + mask_num // steps
        for i in range(mask_num.size(0)):
            num_transfer_tokens[i, :(mask_num % steps)[i]] += 1
        for i in range(steps):
            mask_index = x == mask_id
            logits = model(x).logits
            if temperature == 0:
                logits_with_noise = logits
            else:
                noise = torch.rand_like(logits.to(torch.float64), dtype=torch.float64)
                logits_with_noise = logits.to(torch.float64).exp() / (-torch.log(noise)) ** temperature
            x0 = torch.argmax(logits_with_noise, dim=-1)
            if remasking == "low_confidence":
                x0_p = torch.gather(F.softmax(logits, dim=-1), -1, x0[..., None]).squeeze(-1)
            else:
                x0_p = torch.rand((x0.shape[0], x0.shape[1]))
            x0_p[:, hi:] = -np.inf
            x0 = torch.where(mask_index, x0, x)
            confidence = torch.where(mask_index, x0_p, -np.inf)
            transfer_index = torch.zeros_like(x0, dtype=torch.bool)
            for j in range(confidence.shape[0]):
                _, select_index = torch.topk(confidence[j], k=num_transfer_tokens[j, i])
                transfer_index[j, select_index] = True
            x[transfer_index] = x0[transfer_index]
    return x


@pytest.mark.parametrize("remasking", ["low_confidence", "random"])
def test_more_steps_than_masks_draws_what_the_reference_draws(model, remasking):
    # steps = 2 x gen_length: each block is full halfway through its steps; the reference keeps
    # stepping (and drawing noise) to the end of the block, and so must we for later blocks to agree.
    # With 'random' the tiny model also commits the mask id itself (seed 11), which the reference
    # keeps decoding in later blocks.
    kw = dict(steps=32, gen_length=16, block_length=4, temperature=1.0, remasking=remasking)
    with torch.no_grad():
        torch.manual_seed(11)
        want = _reference_generate(model, REF["prompt"], **kw)
    torch.manual_seed(11)
    got = generate(model, REF["prompt"], **kw)
    assert torch.equal(got, want)
    got = generate(model, REF["prompt"], generator=torch.Generator().manual_seed(11), **kw)
    assert torch.equal(got, want)


class _EosAt:
    """Proxies a model and makes EOS overwhelmingly likely at one canvas position per row."""

    def __init__(self, model, positions):
        self.model, self.positions = model, positions
        self.config, self.device = model.config, model.device

    def __call__(self, x, **kw):
        out = self.model(x, **kw)
        at = kw.get("logits_at")
        for row, pos in enumerate(self.positions):
            if pos is not None and at.start <= pos < at.stop:
                out.logits[row, pos - at.start, self.config.eos_token_id] += 100.0
        return out


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_stop_at_eos_agrees_up_to_each_rows_first_eos(model, temperature):
    P = REF["prompt"].shape[1]
    eos = model.config.eos_token_id
    kw = dict(steps=16, gen_length=32, block_length=8, temperature=temperature)
    fake = _EosAt(model, [P + 2, P + 11])  # row 0 ends in block 0, row 1 in block 1: stop after block 1
    full = generate(fake, REF["prompt"], generator=torch.Generator().manual_seed(1), **kw)
    s = {}
    short = generate(fake, REF["prompt"], generator=torch.Generator().manual_seed(1), stop_at_eos=True, stats=s, **kw)
    for row in range(2):
        first = P + int((full[row, P:] == eos).nonzero()[0])
        assert first <= P + 11
        assert torch.equal(short[row, : first + 1], full[row, : first + 1])
    assert (short[:, P + 16:] == eos).all() and s["nfe"] == 2 * 4
    # One row without an EOS: nothing stops.
    fake = _EosAt(model, [P + 2, None])
    full = generate(fake, REF["prompt"], generator=torch.Generator().manual_seed(1), **kw)
    assert (full[1, P:] != eos).all()
    short = generate(fake, REF["prompt"], generator=torch.Generator().manual_seed(1), stop_at_eos=True, **kw)
    assert torch.equal(short, full)


def test_dual_cache_holds_the_block_start_prefix_and_suffix(model):
    rec = _Recorder(model)
    generate(rec, REF["prompt"], steps=16, gen_length=32, block_length=8, kv_cache="dual")
    P, L = REF["prompt"].shape[1], REF["prompt"].shape[1] + 32
    s, recomputed, checked = P - 8, None, 0
    for c in rec.calls:
        if c["past_kv"] is None:  # a block start: the full canvas
            s += 8
            with torch.no_grad():
                recomputed = model(c["x"], return_kv=True).kv
            continue
        assert c["x"].shape[1] == 8  # the block alone
        for (k, v), (rk, rv) in zip(c["past_kv"], recomputed):
            torch.testing.assert_close(k, torch.cat([rk[:, :, :s], rk[:, :, s + 8:]], 2), atol=1e-6, rtol=0)
            torch.testing.assert_close(v, torch.cat([rv[:, :, :s], rv[:, :, s + 8:]], 2), atol=1e-6, rtol=0)
        checked += 1
    assert s == L - 8 and checked == 4 * 3  # 4 blocks, 3 cached steps each


@pytest.mark.parametrize("cfg_scale", [0.0, 1.5])
def test_dual_cache_of_the_current_canvas_gives_the_full_forward(model, cfg_scale):
    # The cache's only approximation is its age: filled from the canvas being scored (left padding,
    # guidance), the block's logits are the full forward's.
    from dlmarch.sampling.llada import _Scorer

    P = REF["prompt"].shape[1]
    x = torch.cat([REF["prompt"], torch.randint(0, 140, (2, 24), generator=torch.Generator().manual_seed(0))], 1)
    x[:, P + 9: P + 13] = 150
    am = torch.ones_like(x)
    am[1, :3] = 0
    am[0, -3:] = 0  # hidden keys after the block too, so that the cache's key order matters
    score = _Scorer(model, (torch.arange(x.shape[1]) < P).expand(2, -1), am, cfg_scale, 150, [151], False)
    s, e = P + 8, P + 16
    full, kv = score(x, s, e, return_kv=True)
    dual = [(torch.cat([k[:, :, :s], k[:, :, e:]], 2), torch.cat([v[:, :, :s], v[:, :, e:]], 2)) for k, v in kv]
    cached, _ = score(x, s, e, past_kv=dual, dual=True)
    torch.testing.assert_close(cached, full, atol=1e-5, rtol=1e-5)


def test_dual_cache_with_one_step_per_block_is_the_reference(model):
    kw = dict(steps=4, gen_length=32, block_length=8)
    assert torch.equal(generate(model, REF["prompt"], kv_cache="dual", **kw), generate(model, REF["prompt"], **kw))
    with pytest.raises(ValueError, match="kv_cache must be one of"):
        generate(model, REF["prompt"], kv_cache="suffix", **kw)
