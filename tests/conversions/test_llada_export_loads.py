"""A LLaDA --export-hf directory that transformers loads (AutoModel, trust_remote_code) and that gives our
logits: with the reference's code copied from the source when the source had it, else through an
`auto_map` naming the reference hub repository's code, resolved here from a fake hub cache offline.
The code transformers runs is the transcription of the HF LLaDA model in tests/trainers/test_adapters.py."""

from __future__ import annotations

import inspect
import json
import shutil

import pytest
import torch

from conversions.hf import export_hf, import_hf
from dlmarch import LLaDAModel
from tests.dlmarch.test_hub import fake_hub_cache
from tests.helpers import LLADA_TINY
from tests.trainers import test_adapters as ref

CONFIGURATION = '''from transformers import PretrainedConfig


class LLaDAConfig(PretrainedConfig):
    model_type = "llada"
'''

MODELING = '''import torch
from torch import nn
from torch.nn import functional as F
from transformers import PreTrainedModel
from transformers.modeling_outputs import CausalLMOutput

from .configuration_llada import LLaDAConfig


''' + "\n\n".join(inspect.getsource(c) for c in (ref._RMSNorm, ref._Block, ref._Transformer, ref._Model)) + '''

class LLaDAModelLM(PreTrainedModel):
    config_class = LLaDAConfig
    base_model_prefix = "model"

    def __init__(self, config):
        super().__init__(config)
        self.model = _Model(config.to_dict())
        self.post_init()

    def _init_weights(self, module):
        pass

    def forward(self, input_ids, **kwargs):
        t = self.model.transformer
        x = t.wte(input_ids)
        for block in t.blocks:
            x = block(x)
        return CausalLMOutput(logits=t.ff_out(t.ln_f(x)))
'''


def write_code(d):
    (d / "configuration_llada.py").write_text(CONFIGURATION)
    (d / "modeling_llada.py").write_text(MODELING)


def exported(tmp_path, src):
    import_hf(src, tmp_path / "native")
    export_hf(tmp_path / "native", tmp_path / "model-hf")
    return tmp_path / "model-hf"


def our_logits(ids):
    with torch.no_grad():
        return LLaDAModel.from_pretrained(LLADA_TINY).eval()(ids).logits


IDS = torch.tensor([[3, 17, 42, 5, 9, 11]])


def test_code_from_the_source_travels_and_loads(tmp_path):
    transformers = pytest.importorskip("transformers")
    src = tmp_path / "src"
    shutil.copytree(LLADA_TINY, src)
    write_code(src)
    hf = exported(tmp_path, src)
    for name in ("configuration_llada.py", "modeling_llada.py"):
        assert (hf / name).read_bytes() == (src / name).read_bytes()
    cfg = json.loads((hf / "config.json").read_text())
    assert cfg["auto_map"]["AutoModel"] == "modeling_llada.LLaDAModelLM"
    model = transformers.AutoModel.from_pretrained(hf, trust_remote_code=True).eval()
    with torch.no_grad():
        torch.testing.assert_close(model(IDS).logits, our_logits(IDS), atol=1e-5, rtol=0)


def test_without_code_auto_map_names_the_reference_repository(tmp_path):
    transformers = pytest.importorskip("transformers")
    hf = exported(tmp_path, LLADA_TINY)
    assert not list(hf.glob("*.py"))
    cfg = json.loads((hf / "config.json").read_text())
    assert cfg["auto_map"] == {"AutoConfig": "GSAI-ML/LLaDA-8B-Instruct--configuration_llada.LLaDAConfig",
                               "AutoModel": "GSAI-ML/LLaDA-8B-Instruct--modeling_llada.LLaDAModelLM",
                               "AutoModelForCausalLM": "GSAI-ML/LLaDA-8B-Instruct--modeling_llada.LLaDAModelLM"}
    code = tmp_path / "reference-code"
    code.mkdir()
    write_code(code)
    cache = tmp_path / "hub"
    fake_hub_cache(cache, "GSAI-ML/LLaDA-8B-Instruct", code)
    model = transformers.AutoModel.from_pretrained(hf, trust_remote_code=True, cache_dir=str(cache),
                                                   local_files_only=True).eval()
    with torch.no_grad():
        torch.testing.assert_close(model(IDS).logits, our_logits(IDS), atol=1e-5, rtol=0)
