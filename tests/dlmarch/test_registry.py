"""The family registry and the model protocol: every family's record agrees with its module, the
loaders dispatch through it, and the library has no global side effects the issue named."""

import importlib

import pytest
import torch

import dlmarch
from dlmarch import AutoModel, CausalLM, L2DModel, LLaDAModel
from dlmarch.registry import FAMILIES, HF_FAMILIES
from tests.helpers import L2D_TINY, LLADA_TINY


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_each_record_agrees_with_its_family_module(name):
    f = FAMILIES[name]
    assert f.name == name and f in f.model_class.families
    if f.hf_model_type:  # a Transformer family: its config and key table name the same family
        assert f.config_class.family == name and f.config_class._model_type == f.hf_model_type
        assert f.key_table.family == name and issubclass(f.config_class, f.model_class.config_class)
    assert f.model_class.kind in ("masked-diffusion", "causal", "l2d")
    # every family declares a sampler and a likelihood estimator the dispatchers know
    from dlmarch.likelihood import ESTIMATORS
    from dlmarch.sampling import SAMPLERS

    assert f.model_class.sampler in SAMPLERS and callable(getattr(dlmarch.sampling, f.model_class.sampler))
    assert f.model_class.likelihood in ESTIMATORS


def test_hf_model_types_are_unique():
    types = [f.hf_model_type for f in HF_FAMILIES.values()]
    assert len(types) == len(set(types))


def test_loaders_dispatch_through_the_registry():
    model = AutoModel.from_pretrained(LLADA_TINY)
    assert type(model) is LLaDAModel and model.family is FAMILIES["llada"]
    assert model.kind == "masked-diffusion" and not model.shifted_logits and model.mask_token_id == model.config.mask_token_id
    with pytest.raises(dlmarch.errors.ConfigError, match="model_type 'llada' is not supported"):
        CausalLM.from_pretrained(LLADA_TINY)  # a class loads only its own families


def test_l2d_answers_the_protocol_from_its_main_path():
    model = L2DModel.from_main(L2D_TINY / "base")
    assert model.kind == "l2d" and model.token_config is model.main.config and model.mask_token_id is None
    assert model.stop_token_ids == model.main.stop_token_ids


def test_from_main_with_a_seed_leaves_the_global_rng_alone():
    a = L2DModel.from_main(L2D_TINY / "base", seed=0)
    b = L2DModel.from_main(L2D_TINY / "base", seed=0)
    for (n, p), (_, q) in zip(a.diffusion_state_dict().items(), b.diffusion_state_dict().items()):
        assert torch.equal(p, q), n  # the seed alone fixes the diffusion path's initialisation
    torch.manual_seed(123)
    L2DModel.from_main(L2D_TINY / "base", seed=0)
    after_one = torch.get_rng_state()
    torch.manual_seed(123)
    L2DModel.from_main(L2D_TINY / "base", seed=7)
    assert torch.equal(torch.get_rng_state(), after_one)  # the seed does not reach the global generator


def test_importing_the_generate_command_does_not_rebind_the_function():
    with pytest.raises(ImportError, match="python -m dlmarch.generate"):
        importlib.import_module("dlmarch.generate")
    assert callable(dlmarch.generate) and dlmarch.generate is dlmarch.sampling.generate
