"""L2D: the reference checkpoint, the frozen main path, the sampler, training."""

import json
import random
import shutil
import subprocess
import sys

import pytest
import torch

from dlmarch import CausalLM, L2DConfig, L2DModel, LlamaConfig, Qwen2Config, generate_l2d
from dlmarch import safetensors_io as st
from tests.helpers import L2D_TINY

REF = st.load_file(L2D_TINY / "reference.safetensors")


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    dst = tmp_path_factory.mktemp("l2d") / "native"
    r = subprocess.run([sys.executable, "-m", "conversions", "import", str(L2D_TINY / "l2d"), str(dst), "--base",
                        str(L2D_TINY / "base"), "--l2d-options", str(L2D_TINY / "l2d" / "flow_kwargs.json")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return dst


def test_reference_fixture(imported):
    model = L2DModel.from_pretrained(imported)
    with torch.no_grad():
        logits = model(REF["input_ids"], x_t=REF["x_t"], t=REF["t"]).logits
        torch.testing.assert_close(logits, REF["logits"], atol=1e-5, rtol=0)
        t0 = model(REF["input_ids"], x_t=REF["x_t"], t=torch.zeros(2)).logits
        assert torch.equal(t0, REF["base_logits"])
        torch.testing.assert_close(t0, REF["logits_t0"], atol=0, rtol=0)
        torch.testing.assert_close(model.flow_table(), REF["token_flow_table"], atol=1e-6, rtol=0)
        # Queries at a subset of positions give the same logits as computing every position.
        q = torch.zeros(2, 12, dtype=torch.bool)
        q[0, [2, 5, 11]] = True
        q[1, [0, 7]] = True
        t_tok = REF["t"][:, None].expand(2, 12)[q]
        sub = model(REF["input_ids"], x_t=REF["x_t"][q], t=t_tok, queries=q).logits
        torch.testing.assert_close(sub, REF["logits"][q], atol=1e-5, rtol=0)


def test_checkpoint_holds_only_the_diffusion_path(imported, tmp_path):
    model = L2DModel.from_pretrained(imported)
    names = set(st.read_header(imported / "model.safetensors")[0])
    assert not any(n.startswith("main.") or ".base." in n for n in names)
    assert "blocks.0.q_proj.A" in names and "out_mod.2.weight" in names
    model.save_pretrained(tmp_path / "again")
    again = L2DModel.from_pretrained(tmp_path / "again")
    with torch.no_grad():
        assert torch.equal(again(REF["input_ids"], x_t=REF["x_t"], t=REF["t"]).logits,
                           model(REF["input_ids"], x_t=REF["x_t"], t=REF["t"]).logits)


def test_saving_into_another_models_directory_is_refused_untouched(imported, tmp_path):
    """save_pretrained into the main path's own directory (or any directory holding a model that is not
    an L2D checkpoint) would replace its config.json and weights: refused, its files unchanged; an L2D
    checkpoint of ours is replaced as before."""
    from dlmarch.errors import ConfigError

    model = L2DModel.from_pretrained(imported)
    base = tmp_path / "base"
    model.main.save_pretrained(base)
    before = {p.name: p.read_bytes() for p in base.iterdir() if p.is_file()}
    with pytest.raises(ConfigError, match="not an L2DModel checkpoint"):
        model.save_pretrained(base, main_path=base)
    assert {p.name: p.read_bytes() for p in base.iterdir() if p.is_file()} == before
    model.save_pretrained(tmp_path / "l2d", main_path=base)
    model.save_pretrained(tmp_path / "l2d", main_path=base)  # our own checkpoint: replaced


def test_reference_import_refuses_a_different_base(tmp_path):
    from dlmarch.registry import load_pretrained

    base = load_pretrained(L2D_TINY / "base")
    with torch.no_grad():
        base.blocks[1].ff_out.weight.add_(1e-3)
    base.save_pretrained(tmp_path / "other")
    r = subprocess.run([sys.executable, "-m", "conversions", "import", str(L2D_TINY / "l2d"), str(tmp_path / "x"),
                        "--base", str(tmp_path / "other"), "--l2d-options", str(L2D_TINY / "l2d" / "flow_kwargs.json")],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "differs from the main path" in r.stderr and "mlp.down_proj" in r.stderr
    assert not (tmp_path / "x").exists()


# The reference's module names for the full-copy variant and for Qwen2 (q bias): written here from
# SakanaAI/L2D's flow_llms/{llama,qwen2}_components.py, to check that every name maps.
def reference_state_dict(model: L2DModel) -> dict:
    from dlmarch.registry import KEY_TABLES

    sd = {}
    for k, v in model.main.state_dict().items():
        sd[KEY_TABLES[model.main.config.family].hf_name(k)] = v
    theirs = {"q_proj": "self_attn.flow_q_proj", "attn_out": "self_attn.flow_o_proj", "ff_proj": "mlp.flow_gate_proj",
              "up_proj": "mlp.flow_up_proj", "ff_out": "mlp.flow_down_proj"}
    for k, v in model.diffusion_state_dict().items():
        parts = k.split(".")
        if parts[0] == "blocks":
            sd[f"model.layers.{parts[1]}.{theirs[parts[2]]}.{'.'.join(parts[3:])}"] = v
        elif parts[0] == "block_mod":
            sd[f"model.layers.{parts[1]}.modulation_head.mlp.{'.'.join(parts[2:])}"] = v
        else:
            prefix = {"out_mod": "modulation_head.mlp", "time_embed": "timestep_embedder.mlp",
                      "flow_embed": "flow_token_embedder.embedder.layers_module",
                      "flow_in": "flow_to_lm_encoder.embedder.layers_module"}[parts[0]]
            sd[f"model.{prefix}.{'.'.join(parts[1:])}"] = v
    return sd


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_reference_full_variant_imports(tmp_path, family):
    torch.manual_seed(0)
    cls = Qwen2Config if family == "qwen2" else LlamaConfig
    main = CausalLM(cls(vocab_size=50, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2,
                        intermediate_size=48)).init_weights(std=0.1)
    main.save_pretrained(tmp_path / "base")
    opts = {"base_params_to_freeze": "all", "flow_representation_dim": 8, "flow_representation_num_layers": 1,
            "flow_representation_rescaling": "mult", "noise_rescaling": 64.0, "flow_to_lm_translation_depth": 2,
            "flow_to_lm_hidden_size": 16, "flow_to_lm_timestep_rescaling": 1.0, "flow_to_lm_rescale_in_float32": True,
            "preserve_behavior_at_flow_start": True, "full_dit_modulation": True, "timestep_modulation_hidden_size": 16,
            "separate_flow_params": True, "separate_flow_params_with_lora": False}
    model = L2DModel.from_main(main, L2DConfig.from_reference(opts, 32))
    with torch.no_grad():
        for p in model.diffusion_state_dict().values():
            p.add_(torch.randn_like(p) * 0.05)  # away from the zero initialisation
    (tmp_path / "ref").mkdir()
    torch.save(reference_state_dict(model), tmp_path / "ref" / "pytorch_model.bin")
    (tmp_path / "opts.json").write_text(json.dumps(opts))
    from conversions.l2d_reference import import_l2d_reference

    import_l2d_reference(tmp_path / "ref", tmp_path / "native", base=tmp_path / "base", options=tmp_path / "opts.json")
    again = L2DModel.from_pretrained(tmp_path / "native")
    assert again.config.adapter == "full"
    if family == "qwen2":
        assert again.blocks[0].q_proj.bias is not None and again.blocks[0].attn_out.bias is None
    ids, x = torch.randint(0, 50, (2, 7)), torch.randn(2, 7, 8) * 10
    with torch.no_grad():
        a = model(ids, x_t=x, t=torch.tensor([0.3, 0.8])).logits
        assert torch.equal(again(ids, x_t=x, t=torch.tensor([0.3, 0.8])).logits, a)
        assert not torch.allclose(a, main(ids).logits)


def test_reference_import_of_a_tied_base(tmp_path):
    """Llama-3.2-1B/3B and Qwen2.5-0.5B..3B tie the head to the embedding; the reference's pickle (a
    torch.save of the whole state dict) holds the shared tensor under both of its names."""
    torch.manual_seed(1)
    main = CausalLM(LlamaConfig(vocab_size=50, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2,
                                intermediate_size=48, tie_word_embeddings=True)).init_weights(std=0.1)
    main.save_pretrained(tmp_path / "base")
    opts = {"base_params_to_freeze": "all", "flow_representation_dim": 8, "flow_representation_num_layers": 1,
            "flow_representation_rescaling": "mult", "noise_rescaling": 64.0, "flow_to_lm_hidden_size": 16,
            "flow_to_lm_timestep_rescaling": 1.0, "timestep_modulation_hidden_size": 16, "full_dit_modulation": True,
            "separate_flow_params": True, "separate_flow_params_with_lora": True, "flow_lora_rank": 4}
    model = L2DModel.from_main(main, L2DConfig.from_reference(opts, 32))
    with torch.no_grad():
        for p in model.diffusion_state_dict().values():
            p.add_(torch.randn_like(p) * 0.05)
    sd = reference_state_dict(model)
    sd["lm_head.weight"] = sd["model.embed_tokens.weight"]  # one storage, two names
    (tmp_path / "ref").mkdir()
    torch.save(sd, tmp_path / "ref" / "pytorch_model.bin")
    (tmp_path / "opts.json").write_text(json.dumps(opts))
    r = subprocess.run([sys.executable, "-m", "conversions", "import", str(tmp_path / "ref"), str(tmp_path / "native"),
                        "--base", str(tmp_path / "base"), "--l2d-options", str(tmp_path / "opts.json")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    again = L2DModel.from_pretrained(tmp_path / "native")
    ids, x = torch.randint(0, 50, (2, 7)), torch.randn(2, 7, 8) * 10
    with torch.no_grad():
        assert torch.equal(again(ids, x_t=x, t=torch.tensor([0.3, 0.8])).logits,
                           model(ids, x_t=x, t=torch.tensor([0.3, 0.8])).logits)
    # A head that is not the embedding is not this tied base's.
    sd["lm_head.weight"] = sd["model.embed_tokens.weight"] + 1e-3
    torch.save(sd, tmp_path / "ref" / "pytorch_model.bin")
    r = subprocess.run([sys.executable, "-m", "conversions", "import", str(tmp_path / "ref"), str(tmp_path / "bad"),
                        "--base", str(tmp_path / "base"), "--l2d-options", str(tmp_path / "opts.json")],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "'lm_head.weight' differs from the main path" in r.stderr
    assert not (tmp_path / "bad").exists()


# --- a fresh diffusion path -------------------------------------------------------------------------------


def fresh(adapter="lora", **kw):
    from dlmarch.registry import load_pretrained

    main = load_pretrained(L2D_TINY / "base")
    return L2DModel.from_main(main, L2DConfig(flow_dim=16, time_hidden=32, flow_in_hidden=32, lora_rank=4,
                                              adapter=adapter, **kw), seed=0)


@pytest.mark.parametrize("adapter", ["lora", "full"])
def test_fresh_model_gives_the_base_logits_for_any_t(adapter):
    model = fresh(adapter)
    ids = REF["input_ids"]
    with torch.no_grad():
        base = model.main(ids).logits
        for t in (torch.zeros(2), torch.rand(2), torch.rand(2, 12), torch.ones(2)):
            x = torch.randn(2, 12, 16) * 30
            assert torch.equal(model(ids, x_t=x, t=t).logits, base)


def test_main_path_gets_no_gradient_and_no_update(tmp_path):
    model = fresh()
    before = {k: v.clone() for k, v in model.main.state_dict().items()}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    assert not any(p.requires_grad for p in model.main.parameters())
    main_ids = model.main_parameter_ids()
    assert all(id(p) not in main_ids for g in opt.param_groups for p in g["params"])
    ids = REF["input_ids"]
    for step in range(3):
        targets = torch.randint(0, 100, (2, 12))
        t = model.training_times((2, 12))
        logits = model(ids, x_t=model.noisy_targets(targets, t), t=t).logits
        torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten()).backward()
        assert all(p.grad is None for p in model.main.parameters())
        opt.step()
        opt.zero_grad()
    assert all(torch.equal(v, model.main.state_dict()[k]) for k, v in before.items())
    assert not any(id(p) in main_ids for p in opt.state)  # no optimizer state for the main path
    with torch.no_grad():  # trained: the diffusion path now matters
        assert not torch.equal(model(ids, x_t=torch.randn(2, 12, 16), t=torch.full((2,), 0.7)).logits, model.main(ids).logits)


# --- sampling --------------------------------------------------------------------------------------------------


class _Counter:
    def __init__(self, module):
        self.n, self.orig = 0, module.forward
        module.forward = self

    def __call__(self, *a, **k):
        self.n += 1
        return self.orig(*a, **k)


@pytest.mark.parametrize("solver,steps,evals", [("euler", 2, 1), ("midpoint", 8, 14), ("heun2", 8, 13)])
def test_main_path_runs_once_per_generated_token(imported, solver, steps, evals):
    model = L2DModel.from_pretrained(imported)
    counter = _Counter(model.main)
    stats = {}
    prompt = torch.randint(0, 100, (2, 5))
    out = generate_l2d(model, prompt, max_new_tokens=7, solver=solver, ode_steps=steps, stats=stats)
    assert out.shape == (2, 12) and torch.equal(out[:, :5], prompt)
    assert counter.n == stats["main_calls"] == 7
    if evals is not None:
        assert stats["diffusion_evaluations"] == 7 * (evals + 1)  # + the final pass at t = 1


def test_one_step_greedy_sampling_is_deterministic(imported):
    model = L2DModel.from_pretrained(imported)
    prompt = torch.randint(0, 100, (3, 4))
    a = generate_l2d(model, prompt, max_new_tokens=6, solver="euler", ode_steps=2, generator=torch.Generator().manual_seed(1))
    b = generate_l2d(model, prompt, max_new_tokens=6, solver="euler", ode_steps=2, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b)


def test_fresh_model_samples_the_base_models_greedy_decoding():
    model = fresh()
    prompt = torch.randint(0, 100, (2, 5))
    out = generate_l2d(model, prompt, max_new_tokens=6, generator=torch.Generator().manual_seed(0))
    x = prompt
    with torch.no_grad():
        for _ in range(6):
            x = torch.cat([x, model.main(x).logits[:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(out, x)


def test_left_padded_batch_equals_rows_alone(imported):
    model = L2DModel.from_pretrained(imported)
    g = torch.Generator().manual_seed(4)
    rows = [torch.randint(3, 100, (n,), generator=g) for n in (3, 6)]
    batch = torch.zeros(2, 6, dtype=torch.long)
    am = torch.zeros(2, 6, dtype=torch.long)
    for i, r in enumerate(rows):
        batch[i, 6 - len(r):], am[i, 6 - len(r):] = r, 1
    out = generate_l2d(model, batch, am, max_new_tokens=5, solver="euler", ode_steps=2)
    for i, r in enumerate(rows):
        alone = generate_l2d(model, r[None], max_new_tokens=5, solver="euler", ode_steps=2)
        assert torch.equal(out[i, 6:], alone[0, len(r):])


def test_guidance_on_a_class_label():
    model = fresh(num_classes=3)
    with torch.no_grad():
        for p in model.diffusion_state_dict().values():
            p.add_(torch.randn_like(p) * 0.1)
    prompt = torch.randint(0, 100, (2, 4))
    kw = dict(max_new_tokens=4, solver="euler", ode_steps=2)
    cond = generate_l2d(model, prompt, class_label=1, guidance=1.0, **kw)
    assert cond.shape == (2, 8)
    plain = generate_l2d(model, prompt, class_label=1, guidance=1.0, **kw)
    assert torch.equal(cond, plain)
    with pytest.raises(ValueError, match="guidance needs a class_label"):
        generate_l2d(model, prompt, guidance=2.0, **kw)


# --- training ---------------------------------------------------------------------------------------------------


def test_training_lowers_the_loss_and_leaves_the_main_path(tmp_path):
    import statistics

    from trainers.l2d import main as train
    from trainers.tokenizer import build_char_tokenizer

    tok = build_char_tokenizer("abcdefgh", pad_to=8)
    torch.manual_seed(0)
    base = CausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                                intermediate_size=128, eos_token_id=tok.eos_token_id)).init_weights(std=0.1)
    base.save_pretrained(tmp_path / "main")
    tok.save_pretrained(tmp_path / "main")
    rng = random.Random(0)
    with open(tmp_path / "data.jsonl", "w") as f:
        for _ in range(256):
            s = "".join(rng.choice("abcdefgh") for _ in range(rng.randint(3, 8)))
            f.write(json.dumps({"prompt": s, "response": s[::-1]}) + "\n")
    rc = train(["--model", str(tmp_path / "main"), "--data", str(tmp_path / "data.jsonl"), "--output", str(tmp_path / "run"),
                "--max-steps", "200", "--max-length", "32", "--batch-size", "16", "--lr", "3e-3", "--no-progress",
                "--flow-dim", "16", "--l2d-lora-rank", "8", "--warmup-steps", "10"])
    assert rc == 0
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    first, last = statistics.mean(r["ce"] for r in rows[:20]), statistics.mean(r["ce"] for r in rows[-20:])
    assert last < 0.8 * first, (first, last)
    trained = L2DModel.from_pretrained(tmp_path / "run" / "model")
    for k, v in base.state_dict().items():
        assert torch.equal(trained.main.state_dict()[k], v), k
    shutil.rmtree(tmp_path / "run" / "checkpoints")
