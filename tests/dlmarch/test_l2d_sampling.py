"""L2D's sampler against SakanaAI/L2D's own: the 12 seeded calls of `autoregressive_decode(lad=True)` in
tests/fixtures/l2d-tiny-guided (see its README and sampling.json's notes), token for token under the
same torch seed, with each call's options under the reference's names."""

import json
import subprocess
import sys

import pytest
import torch

import dlmarch.sampling.l2d as l2d_sampling
from dlmarch import L2DConfig, L2DModel, generate_l2d
from dlmarch import safetensors_io as st
from tests.helpers import FIXTURES, L2D_TINY

GUIDED = FIXTURES / "l2d-tiny-guided"
SAMPLING = json.loads((GUIDED / "sampling.json").read_text())
FLOW_KWARGS = json.loads((GUIDED / "l2d" / "flow_kwargs.json").read_text())
PAD = EOS = 2  # the fixture's tokenizer: pad = eos


@pytest.fixture(scope="module")
def guided(tmp_path_factory):
    dst = tmp_path_factory.mktemp("l2d-guided") / "native"
    r = subprocess.run([sys.executable, "-m", "conversions", "import", str(GUIDED / "l2d"), str(dst), "--base",
                        str(GUIDED / "base"), "--l2d-options", str(GUIDED / "l2d" / "flow_kwargs.json")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return L2DModel.from_pretrained(dst)


@pytest.mark.parametrize("call", SAMPLING["calls"], ids=[c["name"] for c in SAMPLING["calls"]])
def test_reference_sampler_call(guided, call, monkeypatch):
    model = guided
    # The solver, its tolerances, w and the x1 temperature schedule are model options in the reference.
    model.config = L2DConfig.from_reference({**FLOW_KWARGS, **call["model_options"]}, model.main.config.hidden_size)
    a = call["arguments"]
    seen = []  # the logits each token was decoded from
    decode = l2d_sampling._decode_token

    def recording(logits, *rest):
        seen.append(logits)
        return decode(logits, *rest)

    monkeypatch.setattr(l2d_sampling, "_decode_token", recording)
    ids = torch.tensor(call["padded_input_ids"])
    am = (ids != PAD).long()  # the reference's attention mask
    assert am.tolist() == call["attention_mask"]
    stats = {}
    torch.manual_seed(call["seed"])
    out = generate_l2d(model, ids, am, max_new_tokens=a["max_new_tokens"], ode_steps=a["ode_steps"],
                       temperature=a["temperature"], final_timestep=a["final_timestep"], class_label=a["class_labels"],
                       eos_token_id=EOS, stats=stats)
    rows = []
    for row in out[:, ids.shape[1]:].tolist():  # the reference's lists end at the eos
        rows.append(row[: row.index(EOS) + 1] if EOS in row else row)
    assert rows == call["output_ids"]
    # One batched pass per ODE evaluation (both guidance branches) plus the token's pass.
    guided_call = a["class_labels"][0] is not None
    per_token = [n // (2 if guided_call else 1) + 1 for n in call["model_velocity_calls_per_token"]]
    assert stats["diffusion_evaluations"] == sum(per_token[: stats["tokens"]])
    want = st.load_file(GUIDED / "sampling.safetensors")[f"{call['name']}.final_logits"]
    torch.testing.assert_close(torch.stack(seen), want, atol=2e-5, rtol=0)  # measured: under 6e-6


def test_adaptive_solver_through_torchdiffeq():
    pytest.importorskip("torchdiffeq")
    from dlmarch.registry import load_pretrained

    model = L2DModel.from_main(load_pretrained(L2D_TINY / "base"), L2DConfig(flow_dim=16, time_hidden=32,
                                                                              flow_in_hidden=32, lora_rank=4), seed=0)
    prompt = torch.randint(0, 100, (2, 5), generator=torch.Generator().manual_seed(0))
    stats = {}
    out = generate_l2d(model, prompt, max_new_tokens=3, solver="adaptive_heun", stats=stats, do_sample=False)
    # An untrained diffusion path leaves the base model's greedy tokens.
    with torch.no_grad():
        x = prompt
        for _ in range(3):
            x = torch.cat([x, model.main(x).logits[:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(out, x) and stats["main_calls"] == 3
    with pytest.raises(ValueError, match="unknown L2D solver 'adaptive'"):
        generate_l2d(model, prompt, max_new_tokens=1, solver="adaptive")


def test_x1_estimate_average_normalize_clamp():
    """estimate_x1 against a transcription of the reference's get_weighted_flow_representation_for_logits
    (SakanaAI/L2D flow_llms/base.py) for the 'average' estimate with its normalize / clamp options."""

    def reference(logits, table, temperature, normalize, clamp, rescale):
        probs = torch.softmax(logits.float() / temperature, dim=-1)
        if clamp:
            out = table[torch.argmax(torch.einsum("mv,vn,wn->mw", probs, table, table), dim=-1)]
        else:
            out = probs @ table
        if normalize and not clamp:
            out = torch.nn.functional.normalize(out, dim=-1) * rescale
        return out

    g = torch.Generator().manual_seed(0)
    logits, table = torch.randn(3, 50, generator=g) * 3, torch.randn(50, 8, generator=g)
    for normalize, clamp in ((False, False), (True, False), (False, True), (True, True)):
        got = l2d_sampling.estimate_x1(logits, table, "average", 0.7, None, normalize, clamp, 8**0.5)
        assert got.dtype == torch.float64
        assert torch.equal(got, reference(logits, table, 0.7, normalize, clamp, 8**0.5).double())


def test_guide_final_logits_is_an_option(guided):
    model = guided
    model.config = L2DConfig.from_reference({**FLOW_KWARGS, "nstep_guidance_parameter": 3.0}, 64)
    prompt = torch.tensor([[31, 8, 72, 56, 19, 90, 4]])
    kw = dict(max_new_tokens=6, solver="euler", class_label=[2], do_sample=False)
    a = generate_l2d(model, prompt, **kw)
    b = generate_l2d(model, prompt, guide_final_logits=True, **kw)
    assert a.shape == b.shape == (1, 13) and not torch.equal(a, b)


def test_torchdiffeq_solver_without_torchdiffeq_is_refused(guided, monkeypatch):
    monkeypatch.setitem(sys.modules, "torchdiffeq", None)  # as if not installed
    with pytest.raises(ImportError, match="L2D solver 'rk4' runs through torchdiffeq"):
        generate_l2d(guided, torch.tensor([[5, 6, 7]]), max_new_tokens=1, solver="rk4")
