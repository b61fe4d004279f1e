"""A LoRA adapter exported under the HF LLaDA module names, loaded by peft onto the HF LLaDA model."""

import json
import logging
import warnings

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from dlmarch import LLaDAModel
from dlmarch import safetensors_io as st
from tests.helpers import LLADA_TINY
from trainers.adapters import export_hf_adapter


# The HF LLaDA model (remote code, not in transformers), transcribed from the modeling_llada.py that
# ZHZisZZ/dllm vendors: its module tree (model.transformer.{wte, blocks.N.{attn_norm, q_proj, k_proj,
# v_proj, attn_out, ff_norm, ff_proj, up_proj, ff_out}, ln_f, ff_out}) and the forward of a "llama"
# block with RMS norms, rotary embeddings (rotate-half) and full (bidirectional) attention.
class _RMSNorm(nn.Module):
    def __init__(self, d, eps):
        super().__init__()
        self.weight, self.eps = nn.Parameter(torch.ones(d)), eps

    def forward(self, x):
        x = x.float()
        return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps))


class _Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        d, hd, kv = c["d_model"], c["d_model"] // c["n_heads"], c["n_kv_heads"]
        self.n_heads, self.n_kv, self.theta = c["n_heads"], kv, c["rope_theta"]
        self.attn_norm, self.ff_norm = _RMSNorm(d, c["rms_norm_eps"]), _RMSNorm(d, c["rms_norm_eps"])
        self.q_proj, self.k_proj, self.v_proj = nn.Linear(d, d, False), nn.Linear(d, kv * hd, False), nn.Linear(d, kv * hd, False)
        self.attn_out = nn.Linear(d, d, False)
        self.ff_proj, self.up_proj = nn.Linear(d, c["mlp_hidden_size"], False), nn.Linear(d, c["mlp_hidden_size"], False)
        self.ff_out = nn.Linear(c["mlp_hidden_size"], d, False)

    def rope(self, q, k):
        hs, T = q.shape[-1], q.shape[-2]
        inv_freq = 1.0 / (self.theta ** (torch.arange(0, hs, 2, dtype=torch.float) / hs))
        freqs = torch.einsum("i,j->ij", torch.arange(T, dtype=torch.float), inv_freq)
        pos = torch.cat((freqs, freqs), dim=-1)
        sin, cos = pos.sin()[None, None], pos.cos()[None, None]

        def rotate_half(x):
            x1, x2 = x.view(*x.shape[:-1], 2, hs // 2).unbind(dim=-2)
            return torch.cat((-x2, x1), dim=-1)

        return q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin

    def forward(self, x):
        B, T, C = x.shape
        h = self.attn_norm(x)
        q = self.q_proj(h).view(B, T, self.n_heads, -1).transpose(1, 2)
        k = self.k_proj(h).view(B, T, self.n_kv, -1).transpose(1, 2)
        v = self.v_proj(h).view(B, T, self.n_kv, -1).transpose(1, 2)
        q, k = self.rope(q, k)
        rep = self.n_heads // self.n_kv
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        att = F.scaled_dot_product_attention(q, k, v, is_causal=False).transpose(1, 2).reshape(B, T, C)
        x = x + self.attn_out(att)
        h = self.ff_norm(x)
        return x + self.ff_out(F.silu(self.ff_proj(h)) * self.up_proj(h))


class _Transformer(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.wte = nn.Embedding(c["embedding_size"], c["d_model"])
        self.blocks = nn.ModuleList(_Block(c) for _ in range(c["n_layers"]))
        self.ln_f = _RMSNorm(c["d_model"], c["rms_norm_eps"])
        self.ff_out = nn.Linear(c["d_model"], c["embedding_size"], False)


class _Model(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.transformer = _Transformer(c)


class HFLLaDA(nn.Module):
    """LLaDAModelLM's module tree and forward (logits only)."""

    def __init__(self, c):
        super().__init__()
        self.model = _Model(c)

    def forward(self, input_ids):
        t = self.model.transformer
        x = t.wte(input_ids)
        for block in t.blocks:
            x = block(x)
        return t.ff_out(t.ln_f(x))


def _hf_llada():
    model = HFLLaDA(json.loads((LLADA_TINY / "config.json").read_text()))
    model.load_state_dict(st.load_file(LLADA_TINY / "model.safetensors"))
    return model.eval()


def _lora_run(tmp_path):
    """What a LoRA run leaves: peft's adapter/ around our native modules, and the merged model."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    native = LLaDAModel.from_pretrained(LLADA_TINY)
    # "ff_out" is a block's MLP output here; in the HF tree it also names the LM head.
    peft_model = get_peft_model(native, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "attn_out",
                                                                                       "ff_out", "up_proj"]))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.2)  # peft starts B at zero; a trained adapter is not
    peft_model.save_pretrained(tmp_path / "adapter")
    return peft_model.merge_and_unload().eval()


def _load_with_peft(hf, adapter_dir, caplog):
    from peft import PeftModel

    caplog.clear()
    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.WARNING):
        warnings.simplefilter("always")
        model = PeftModel.from_pretrained(hf, adapter_dir).eval()
    messages = [str(w.message) for w in caught] + [r.getMessage() for r in caplog.records]
    return model, [m for m in messages if "missing" in m.lower() or "unexpected" in m.lower()]


def test_the_transcription_is_hf_llada():
    ref = st.load_file(LLADA_TINY / "reference.safetensors")
    with torch.no_grad():
        torch.testing.assert_close(_hf_llada()(ref["input_ids"]), ref["logits"], atol=1e-5, rtol=0)


def test_hf_adapter_through_peft_gives_the_merged_models_logits(tmp_path, caplog):
    ids = st.load_file(LLADA_TINY / "reference.safetensors")["input_ids"]
    merged = _lora_run(tmp_path)
    with torch.no_grad():
        want, base = merged(ids).logits, _hf_llada()(ids)
    assert (want - base).abs().max() > 1e-2  # the adapter changes the logits

    # Today's adapter/: peft finds none of its keys on the HF model and runs the base model.
    model, complaints = _load_with_peft(_hf_llada(), tmp_path / "adapter", caplog)
    assert complaints  # peft's missing-keys warning
    with torch.no_grad():
        torch.testing.assert_close(model(ids), base, atol=1e-5, rtol=0)

    export_hf_adapter(tmp_path / "adapter", tmp_path / "adapter-hf", "llada", str(LLADA_TINY))
    cfg = json.loads((tmp_path / "adapter-hf" / "adapter_config.json").read_text())
    assert cfg["base_model_name_or_path"] == str(LLADA_TINY)
    assert "model.transformer.blocks.1.ff_out" in cfg["target_modules"]
    assert "model.transformer.ff_out" not in cfg["target_modules"]  # the LM head stays as it is
    model, complaints = _load_with_peft(_hf_llada(), tmp_path / "adapter-hf", caplog)
    assert complaints == []
    assert not hasattr(model.base_model.model.model.transformer.ff_out, "lora_A")
    with torch.no_grad():
        torch.testing.assert_close(model(ids), want, atol=1e-4, rtol=0)


def test_export_refuses_an_unknown_family(tmp_path):
    from dlmarch.errors import CheckpointError

    _lora_run(tmp_path)
    with pytest.raises(CheckpointError, match="family"):
        export_hf_adapter(tmp_path / "adapter", tmp_path / "x", "gpt2", "base")
    assert not (tmp_path / "x").exists()


def test_a_lora_run_with_export_hf_writes_the_hf_adapter(tmp_path, caplog):
    from conversions.hf import export_hf
    from tests.helpers import make_task
    from trainers.sft import main

    model_dir, data = make_task(tmp_path, n=64, init_std=0.1)
    out = tmp_path / "run"
    assert main(["--model", str(model_dir), "--data", str(data), "--output", str(out), "--max-steps", "3",
                 "--lora-rank", "4", "--lora-targets", "q_proj", "ff_out", "--export-hf", "--max-length", "32",
                 "--batch-size", "8", "--lr", "3e-2", "--no-progress"]) == 0
    cfg = json.loads((out / "adapter-hf" / "adapter_config.json").read_text())
    assert cfg["base_model_name_or_path"] == str(model_dir)
    export_hf(model_dir, tmp_path / "base-hf")  # the run's base in the HF layout, for the transcription
    hf = HFLLaDA(json.loads((tmp_path / "base-hf" / "config.json").read_text()))
    hf.load_state_dict(st.load_file(tmp_path / "base-hf" / "model.safetensors"))
    ids = torch.randint(0, 16, (2, 12))
    with torch.no_grad():
        base = hf.eval()(ids)
    model, complaints = _load_with_peft(hf, out / "adapter-hf", caplog)  # peft wraps hf's modules in place
    assert complaints == []
    with torch.no_grad():
        want = LLaDAModel.from_pretrained(out / "model")(ids).logits
        assert (want - base).abs().max() > 1e-3  # training moved the adapter off its zero start
        torch.testing.assert_close(model(ids), want, atol=1e-4, rtol=0)
