"""Parity with code someone else wrote: transformers' Llama/Qwen2 and the LLaDA reference fixture."""

import json
import subprocess
import sys

import pytest
import torch

from dlmarch import AutoModel, CausalLM, LLaDAModel
from dlmarch import safetensors_io as st
from tests.helpers import LLADA_TINY, hf_llama

LLAMA3_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 32}

CASES = {
    "llama-gqa-untied": dict(),
    "llama-tied": dict(tied=True),
    "llama3-rope-scaling": dict(rope_scaling=LLAMA3_ROPE),
    "qwen2-bias-untied": dict(qwen2=True),
    "qwen2-bias-tied": dict(qwen2=True, tied=True),
}


def _ids(vocab, B=3, L=33, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (B, L), generator=g)


@pytest.mark.parametrize("case", list(CASES))
def test_import_gives_transformers_logits(tmp_path, case):
    hf, path = hf_llama(tmp_path / "hf", **CASES[case])
    ids = _ids(hf.config.vocab_size)
    with torch.no_grad():
        want = hf(ids).logits
        ours = CausalLM.from_pretrained(path)
        got = ours(ids).logits
    assert ours.config.family == ("qwen2" if CASES[case].get("qwen2") else "llama")
    assert (ours.lm_head is None) == bool(CASES[case].get("tied"))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


@pytest.mark.parametrize("case", ["llama-gqa-untied", "qwen2-bias-tied"])
def test_cli_import_export_reloads_in_transformers(tmp_path, case):
    import transformers

    hf, path = hf_llama(tmp_path / "hf", **CASES[case])
    run = [sys.executable, "-m", "conversions"]
    subprocess.run(run + ["import", str(path), str(tmp_path / "native")], check=True, capture_output=True)
    subprocess.run(run + ["export", str(tmp_path / "native"), str(tmp_path / "out")], check=True, capture_output=True)
    ids = _ids(hf.config.vocab_size, seed=2)
    native = AutoModel.from_pretrained(tmp_path / "native")
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    with torch.no_grad():
        want = hf(ids).logits
        torch.testing.assert_close(native(ids).logits, want, atol=1e-5, rtol=0)
        assert torch.equal(back(ids).logits, want)  # same weights, same code: identical
    # Every tensor survives the round trip bit for bit.
    a = st.load_file(path / "model.safetensors")
    b = st.load_file(tmp_path / "out" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_llada_fixture_logits():
    ref = st.load_file(LLADA_TINY / "reference.safetensors")
    model = LLaDAModel.from_pretrained(LLADA_TINY)
    with torch.no_grad():
        torch.testing.assert_close(model(ref["input_ids"]).logits, ref["logits"], atol=1e-5, rtol=0)
        got = model(ref["input_ids"], attention_mask=ref["attention_mask"]).logits
    torch.testing.assert_close(got, ref["logits_masked"], atol=1e-5, rtol=0)


@pytest.mark.parametrize("backend", ["sdpa", "flex"])
def test_llada_fixture_every_backend(backend):
    ref = st.load_file(LLADA_TINY / "reference.safetensors")
    model = LLaDAModel.from_pretrained(LLADA_TINY, attn_backend=backend)
    with torch.no_grad():
        got = model(ref["input_ids"], attention_mask=ref["attention_mask"]).logits
    torch.testing.assert_close(got, ref["logits_masked"], atol=1e-5, rtol=0)


def test_llada_import_export_bit_exact(tmp_path):
    from conversions.hf import export_hf, import_hf

    import_hf(LLADA_TINY, tmp_path / "native")
    export_hf(tmp_path / "native", tmp_path / "hf")
    a = st.load_file(LLADA_TINY / "model.safetensors")
    b = st.load_file(tmp_path / "hf" / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k].view(-1).view(torch.uint8), b[k].view(-1).view(torch.uint8)), k
    # bit-exact but for auto_map, which names the reference repository's code when the directory does
    # not carry it (so that transformers can load the export; conversions.hf.remote_code_map)
    from conversions.hf import remote_code_map

    want = json.loads((LLADA_TINY / "config.json").read_text())
    want["auto_map"] = remote_code_map(want["auto_map"], "llada", set())
    assert json.loads((tmp_path / "hf" / "config.json").read_text()) == want


def test_dtype_cast_and_resharding(tmp_path):
    from conversions.hf import export_hf, import_hf

    rep = import_hf(LLADA_TINY, tmp_path / "native", dtype="bf16", max_shard_size=100_000)
    assert rep.shards > 1 and (tmp_path / "native" / "model.safetensors.index.json").exists()
    model = AutoModel.from_pretrained(tmp_path / "native")
    assert model.dtype == torch.bfloat16
    export_hf(tmp_path / "native", tmp_path / "hf", dtype="fp32")
    ref = st.load_file(LLADA_TINY / "model.safetensors")
    back = AutoModel.from_pretrained(tmp_path / "hf")
    for (name, p) in back.state_dict().items():
        assert p.dtype == torch.float32
    torch.testing.assert_close(back.wte.weight, ref["model.transformer.wte.weight"].bfloat16().float())


def test_save_pretrained_sharded_roundtrip(tmp_path):
    from tests.helpers import tiny_llada

    model = tiny_llada()
    model.save_pretrained(tmp_path / "m", max_shard_size=20_000)
    assert (tmp_path / "m" / "model.safetensors.index.json").exists()
    again = LLaDAModel.from_pretrained(tmp_path / "m")
    ids = torch.randint(0, 60, (2, 9))
    with torch.no_grad():
        assert torch.equal(model(ids).logits, again(ids).logits)
    assert again.config == model.config
