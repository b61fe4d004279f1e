"""Every family on every surface, generated from the registry (`dlmarch.registry.FAMILIES`): import/export,
forward, the generate command, trainers.evaluate, lm-eval generate_until / loglikelihood /
loglikelihood_rolling, and each trainer. For each family a surface either works (and gives what the
family's own sampler / estimator / transformers gives) or refuses in one line naming why. A family
added to the registry is checked here without touching this file (a wrapper family without an HF
layout of its own, as L2D, needs a tiny builder in `_build`)."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch

from dlmarch.registry import FAMILIES, load_pretrained
from dlmarch.sampling import DecodingOptions, sampler_for
from dlmarch.sampling.dispatch import family_name
from dlmarch.sampling.options import KV_CACHE

NAMES = sorted(FAMILIES)
PROMPT = "abc"
GEN = 4  # new tokens everywhere: tiny and fast


def _tokenizer():
    from trainers.tokenizer import build_char_tokenizer

    return build_char_tokenizer(pad_to=8)


def _build(name: str, root):
    """A tiny random model of family `name` with the character tokenizer, saved as a directory."""
    f = FAMILIES[name]
    tok = _tokenizer()
    if f.hf_model_type:  # a Transformer family: its config class with tiny sizes and the tokenizer's ids
        want = dict(vocab_size=len(tok), hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2,
                    intermediate_size=48, max_position_embeddings=1024, eos_token_id=tok.eos_token_id,
                    pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, mask_token_id=tok.mask_token_id,
                    # mixtures of experts: 4 experts of width 16, 2 per token, one shared expert,
                    num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16, shared_expert_intermediate_size=16,
                    moe_layer_freq=[0, 1])  # a dense first layer, then a MoE one
        names = {fl.name for fl in dataclasses.fields(f.config_class)}
        torch.manual_seed(0)
        model = f.model_class(f.config_class(**{k: v for k, v in want.items() if k in names})).init_weights(std=0.2)
        model.save_pretrained(root)
    elif name == "l2d":
        from dlmarch import L2DConfig, L2DModel

        main = _build("llama", root.parent / f"{root.name}-main")
        L2DModel.from_main(str(main), L2DConfig(flow_dim=16, time_hidden=32, flow_in_hidden=32, ode_steps=2,
                                                solver="euler"), seed=0).save_pretrained(root, main_path=main)
    else:
        pytest.fail(f"family {name}: no hf layout and no tiny builder in tests/test_surfaces.py::_build")
    tok.save_pretrained(root)
    return root


@pytest.fixture(scope="module")
def family_dir(tmp_path_factory):
    made = {}

    def get(name):
        if name not in made:
            made[name] = _build(name, tmp_path_factory.mktemp("families") / name)
        return made[name]

    return get


def _one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def _direct(model, tok, options: DecodingOptions, prompts=(PROMPT,)) -> list[str]:
    """What the family's own sampler gives (the dispatcher's call, alone per prompt)."""
    from dlmarch.prompts import decode

    sampler = sampler_for(model)
    opts = sampler.resolve(model, options)
    out = []
    for p in prompts:
        ids = torch.tensor([tok(p).input_ids])
        x = sampler(model, ids, torch.ones_like(ids), opts, generator=torch.Generator().manual_seed(opts.seed))
        out.append(decode(tok, x[0, ids.shape[1]:], model.stop_token_ids))
    return out


# A valid value of every decoding option (to show that one a sampler does not take is refused).
SAMPLE_VALUES = dict(gen_length="4", block_length="4", steps="4", temperature="0.5", seed="3", cfg_scale="1",
                     remasking="random", kv_cache="prefix", threshold="0.9", block_causal=True, stop_at_eos=True,
                     logits_eos_inf=True, confidence_eos_eot_inf=True, alg="origin", alg_temp="0.1", eps="0.01",
                     top_p="0.9", top_k="5", solver="euler", ode_steps="2")


def test_every_decoding_option_has_a_sample_value():
    assert set(SAMPLE_VALUES) == set(DecodingOptions.names())
    assert KV_CACHE == ("none", "prefix", "dual")


@pytest.mark.parametrize("name", NAMES)
def test_forward_import_export(name, family_dir, tmp_path, capsys):
    from conversions.__main__ import main

    src = family_dir(name)
    model = load_pretrained(src).eval()
    ids = torch.tensor([[5, 6, 7, 8]])
    if model.kind == "l2d":  # its diffusion path takes x_t and t; at t = 0 (x_t = 0) it is the main path's
        x_t = torch.zeros(1, 4, model.config.flow_dim)
        torch.testing.assert_close(model(ids, x_t=x_t, t=torch.zeros(1)).logits, model.main(ids).logits)
        model = model.main
    logits = model(ids).logits
    assert logits.shape == (1, 4, model.token_config.vocab_size) and torch.isfinite(logits).all()
    rc = main(["export", str(src), str(tmp_path / "hf")])
    err = capsys.readouterr().err
    if not FAMILIES[name].hf_model_type:  # no HF layout of its own: refused, one line naming why
        assert rc == 2 and "no single HF layout" in _one_line(err)
        return
    assert rc == 0, err
    back = load_pretrained(tmp_path / "hf").eval()
    torch.testing.assert_close(back(ids).logits, logits)
    if name in ("llama", "qwen2"):  # transformers has these families: its forward is the reference
        import transformers

        hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
        with torch.no_grad():
            torch.testing.assert_close(hf(ids).logits, logits, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", NAMES)
def test_generate_command(name, family_dir, tmp_path, capsys):
    from dlmarch.sampling.cli import load_for_generation, main

    src = family_dir(name)
    out = tmp_path / "o.jsonl"
    rc = main(["--model", str(src), "--prompt", PROMPT, "--gen-length", str(GEN), "--no-chat-template",
               "--output", str(out)])
    assert rc == 0, capsys.readouterr().err
    model, tok = load_for_generation(str(src), None, "cpu")
    assert json.loads(out.read_text())["output"] == _direct(model, tok, DecodingOptions(gen_length=GEN))[0]
    # An option this family's sampler does not take: one line naming the family and the sampler.
    sampler = sampler_for(model)
    foreign = next(n for n in DecodingOptions.names() if n not in sampler.options and n != "seed")
    flag = ["--" + foreign.replace("_", "-")] + ([] if SAMPLE_VALUES[foreign] is True else [SAMPLE_VALUES[foreign]])
    capsys.readouterr()
    assert main(["--model", str(src), "--prompt", PROMPT, "--gen-length", str(GEN), *flag]) == 2
    line = _one_line(capsys.readouterr().err)
    assert f"{foreign} does not apply to a {family_name(model)} model" in line and sampler.name in line


@pytest.mark.parametrize("name", NAMES)
def test_evaluate_command(name, family_dir, tmp_path, capsys):
    from trainers.evaluate import main

    src = family_dir(name)
    out = tmp_path / "eval.jsonl"
    rc = main(["--model", str(src), "--task", "countdown", "--num", "2", "--gen-length", str(GEN), "--batch-size", "2", "--no-system-prompt",
               "--output", str(out)])
    assert rc == 0, capsys.readouterr().err
    summary = json.loads(out.with_suffix(".summary.json").read_text())
    model = load_pretrained(src)
    assert summary["n"] == 2 and summary["sampler"] == model.sampler and summary["gen_length"] == GEN


@pytest.mark.parametrize("name", NAMES)
def test_lm_eval_requests(name, family_dir):
    from types import SimpleNamespace

    from dlmarch.integrations.lm_eval import DlmarchLM
    from dlmarch.likelihood import estimator_for

    src = family_dir(name)
    # Dream's entropy order ties to within float noise on a random model, and batched matmuls round
    # differently (docs/decoding.md): its generations are compared one request per call.
    batch = 1 if load_pretrained(src).sampler == "generate_dream" else 2
    lm = DlmarchLM(pretrained=str(src), gen_length=GEN, mc_num=4, batch_size=2, gen_batch_size=batch)
    reqs = [SimpleNamespace(args=(p, {"until": ["zz"]})) for p in (PROMPT, "hgfed", "b")]
    got = lm.generate_until(reqs)
    # Sorted and batched by the harness's Collator, in the requests' order again; each as alone at temperature 0.
    assert got == _direct(lm.model, lm.tokenizer, DecodingOptions(gen_length=GEN), [r.args[0] for r in reqs])
    pairs = [("ab", "c"), ("h", " gg")]
    lls = lm.loglikelihood([SimpleNamespace(args=p) for p in pairs])
    assert all(math.isfinite(v) and v < 0 for v, _ in lls)
    estimator = estimator_for(lm.model)
    ctx, cont = lm.encode_pair(*pairs[0])
    if lm.model.likelihood == "causal":
        model = lm.model.main if lm.model.kind == "l2d" else lm.model
        assert lls[0][0] == pytest.approx(estimator(model, [(ctx, cont)])[0][0], abs=1e-5)
        rolling = lm.loglikelihood_rolling([SimpleNamespace(args=("abcab",))])
        assert len(rolling) == 1 and math.isfinite(rolling[0]) and rolling[0] < 0
    else:
        want = estimator(lm.model, torch.tensor(ctx), torch.tensor(cont), 4, 2, generator=torch.Generator().manual_seed(1234))
        assert lls[0][0] == pytest.approx(want, abs=1e-6)
        with pytest.raises(NotImplementedError, match="bound"):
            lm.loglikelihood_rolling([SimpleNamespace(args=("abcab",))])


TRAINERS = ("sft", "gift", "lift", "blockwise", "l2d", "ar")


@pytest.mark.parametrize("name", NAMES)
def test_trainers(name, family_dir, tmp_path, capsys):
    """Each trainer on each family: one step that works, or a one-line refusal (exit 2) before training."""
    import importlib

    src = family_dir(name)
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"prompt": p, "response": p[::-1]}) + "\n" for p in ("abc", "hgf", "de", "cab")))
    outcomes = {}
    for method in TRAINERS:
        out = tmp_path / method
        rc = importlib.import_module(f"trainers.{method}").main(
            ["--model", str(src), "--data", str(data), "--output", str(out), "--max-steps", "1", "--batch-size", "2",
             "--max-length", "32"])
        err = capsys.readouterr().err
        if rc == 0:
            assert (out / "model" / "config.json").exists(), err
            outcomes[method] = "works"
        else:
            assert rc == 2, err
            last = err.strip().splitlines()[-1]
            assert last.startswith("error: "), err
            outcomes[method] = last
            assert not out.exists() or not any(out.iterdir())
    kind = FAMILIES[name].model_class.kind
    # What each kind must be able to train: the masked-diffusion objectives on diffusion models, AR and
    # L2D on causal models.
    must = {"masked-diffusion": ("sft",), "causal": ("ar", "l2d"), "l2d": ()}[kind]
    assert all(outcomes[m] == "works" for m in must), outcomes
