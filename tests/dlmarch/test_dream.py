"""Dream against its reference: the dream-tiny fixture written by Dream's remote code (modeling_dream.py,
generation_utils.py as vendored in ZHZisZZ/dllm), with the logits and generations it gave."""

import json

import pytest
import torch

from dlmarch import AutoModel, CausalLM, DreamConfig, DreamModel, LlamaConfig, generate_dream
from dlmarch import safetensors_io as st
from tests.helpers import FIXTURES

DREAM_TINY = FIXTURES / "dream-tiny"
REF = st.load_file(DREAM_TINY / "reference.safetensors")
CALLS = json.loads((DREAM_TINY / "generate.json").read_text())["calls"]


def _conversions(capsys, *args):
    """`python -m conversions ARGS` in this process: (exit status, stderr)."""
    from conversions.__main__ import main

    capsys.readouterr()
    code = main([str(a) for a in args])
    return code, capsys.readouterr().err


@pytest.fixture(scope="module")
def model():
    return AutoModel.from_pretrained(DREAM_TINY).eval()


def test_loads_as_dream(model):
    assert isinstance(model, DreamModel) and isinstance(model.config, DreamConfig)
    c = model.config
    assert (c.qkv_bias, c.out_bias, c.tie_word_embeddings, c.mask_token_id, c.head_dim) == (True, False, False, 159, 16)
    assert model.lm_head is not None and not c.causal


def test_logits_match_reference(model):
    with torch.no_grad():
        got = model(REF["input_ids"]).logits
    torch.testing.assert_close(got, REF["logits"], atol=1e-5, rtol=0)


def test_padded_logits_match_reference_on_real_tokens(model):
    """A left-padded batch as diffusion_generate runs it: pairwise mask, positions cumsum - 1."""
    ids, am = REF["padded_input_ids"], REF["padded_attention_mask"]
    real = am.bool()
    assert not real.all()  # the fixture really is padded
    with torch.no_grad():
        got = model(ids, am).logits
        explicit = model(ids, am, position_ids=REF["padded_position_ids"]).logits
        positions_0_to_L = model(ids, am, position_ids=torch.arange(ids.shape[1]).expand_as(ids)).logits
    torch.testing.assert_close(got[real], REF["padded_logits"][real], atol=1e-5, rtol=0)
    torch.testing.assert_close(explicit[real], REF["padded_logits"][real], atol=1e-5, rtol=0)
    # dllm's forward with a 2-D mask and no positions (0..L-1): equal on real tokens up to RoPE rounding.
    torch.testing.assert_close(positions_0_to_L[real], REF["padded_logits_2d_mask"][real], atol=1e-5, rtol=0)


@pytest.mark.parametrize("call", CALLS, ids=[c["name"] for c in CALLS])
def test_generate_matches_reference(model, call):
    ids = torch.tensor(call["input_ids"])
    am = None if call["attention_mask"] is None else torch.tensor(call["attention_mask"])
    torch.manual_seed(call["seed"])
    out = generate_dream(model, ids, am, **call["kwargs"])
    assert out.tolist() == call["output_ids"]
    # The same draws come from an explicit generator seeded the same way.
    again = generate_dream(model, ids, am, **call["kwargs"], generator=torch.Generator().manual_seed(call["seed"]))
    assert torch.equal(again, out)


def test_import_export_bit_exact(tmp_path, capsys):
    for cmd, src, dst in (("import", DREAM_TINY, tmp_path / "native"), ("export", tmp_path / "native", tmp_path / "hf")):
        code, err = _conversions(capsys, cmd, src, dst)
        assert code == 0, err
    native = json.loads((tmp_path / "native" / "config.json").read_text())
    assert native["model"] == "DreamModel" and native["config"]["family"] == "dream"
    # bit-exact but for auto_map, which names the reference repository's code when the directory does
    # not carry it (so that transformers can load the export; conversions.hf.remote_code_map)
    from conversions.hf import remote_code_map

    want = json.loads((DREAM_TINY / "config.json").read_text())
    want["auto_map"] = remote_code_map(want["auto_map"], "dream", set())
    assert json.loads((tmp_path / "hf" / "config.json").read_text()) == want
    a, b = st.load_file(DREAM_TINY / "model.safetensors"), st.load_file(tmp_path / "hf" / "model.safetensors")
    assert sorted(a) == sorted(b)
    for name in a:
        assert a[name].dtype == b[name].dtype and torch.equal(a[name], b[name]), name
    with torch.no_grad():
        got = AutoModel.from_pretrained(tmp_path / "native")(REF["input_ids"]).logits
    assert torch.equal(got, AutoModel.from_pretrained(DREAM_TINY)(REF["input_ids"]).logits)


def _edited_copy(tmp_path, drop=(), **config_changes):
    tmp_path.mkdir(parents=True, exist_ok=True)
    cfg = json.loads((DREAM_TINY / "config.json").read_text())
    cfg.update(config_changes)
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    tensors = {k: v for k, v in st.load_file(DREAM_TINY / "model.safetensors").items() if k not in drop}
    st.save_file(tensors, tmp_path / "model.safetensors")
    return tmp_path


def test_tied_head_reads_the_embedding(tmp_path):
    path = _edited_copy(tmp_path / "tied", drop=("lm_head.weight",), tie_word_embeddings=True)
    tied = AutoModel.from_pretrained(path)
    assert tied.lm_head is None
    w = st.load_file(DREAM_TINY / "model.safetensors")
    ids = REF["input_ids"]
    with torch.no_grad():
        h = tied(ids, output_hidden=True).hidden
        want = torch.nn.functional.linear(tied.ln_f(h), w["model.embed_tokens.weight"])
        torch.testing.assert_close(tied(ids).logits, want, atol=0, rtol=0)


@pytest.mark.parametrize("changes,needle", [
    (dict(use_sliding_window=True), "use_sliding_window"),
    (dict(mask_token_id=None), "mask_token_id"),
    (dict(num_key_value_heads=3), "num_kv_heads"),
])
def test_bad_config_exits_2_and_writes_nothing(tmp_path, capsys, changes, needle):
    path = _edited_copy(tmp_path / "src", **changes)
    code, err = _conversions(capsys, "import", path, tmp_path / "out")
    assert code == 2 and err.startswith("error: ") and len(err.strip().splitlines()) == 1
    assert needle in err
    assert not (tmp_path / "out").exists()


def test_rows_with_different_mask_counts_never_lose_tokens(model):
    """Row 0 holds 3 masks inside its prompt, row 1 none: top-k runs past row 1's masks. The reference
    would write the mask id over row 1's tokens there; we reveal masked slots only (README)."""
    ids = torch.tensor([[84, 159, 55, 159, 78, 159], [10, 11, 12, 13, 14, 15]])
    out = generate_dream(model, ids, max_new_tokens=2, steps=2, temperature=0.0, top_k=None, alg="maskgit_plus")
    assert torch.equal(out[1, :6], ids[1]) and torch.equal(out[0, [0, 2, 4]], ids[0, [0, 2, 4]])
    assert not (out[1] == 159).any()  # row 0 may keep masks: n per row is the batch's average


def test_generate_refuses_bad_arguments(model):
    ids = torch.tensor([[1, 2, 3]])
    with pytest.raises(ValueError, match="alg must be one of"):
        generate_dream(model, ids, alg="nope")
    with pytest.raises(ValueError, match="attention_mask"):
        generate_dream(model, ids, torch.ones(1, 4, dtype=torch.long))
    causal = CausalLM(LlamaConfig(vocab_size=8, hidden_size=8, num_layers=1, num_heads=2, num_kv_heads=2,
                                  intermediate_size=8))
    with pytest.raises(ValueError, match="no mask_token_id"):
        generate_dream(causal, ids)


def _tiny_dream_dir(path):
    """A tiny random Dream with the character tokenizer, saved natively as the command lines expect."""
    from trainers.tokenizer import build_char_tokenizer

    tok = build_char_tokenizer(pad_to=8)
    cfg = DreamConfig(vocab_size=len(tok), hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2,
                      intermediate_size=48, mask_token_id=tok.mask_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id, max_position_embeddings=512)
    torch.manual_seed(0)
    model = DreamModel(cfg).init_weights(std=0.2).eval()
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return model, tok


def test_command_line_dream(tmp_path, capsys):
    model, tok = _tiny_dream_dir(tmp_path / "m")
    from dlmarch.sampling.cli import main

    run = ["--model", str(tmp_path / "m"), "--gen-length", "12", "--steps", "6", "--alg", "entropy", "--alg-temp", "0",
           "--temperature", "0.5", "--top-p", "0.9", "--seed", "3", "--no-chat-template", "--prompt", "abc"]
    assert main(run + ["--output", str(tmp_path / "o.jsonl")]) == 0, capsys.readouterr().err
    got = json.loads((tmp_path / "o.jsonl").read_text())["output"]
    ids = torch.tensor([tok("abc").input_ids])
    want = generate_dream(model, ids, max_new_tokens=12, steps=6, temperature=0.5, top_p=0.9, top_k=None,
                          alg="entropy", alg_temp=0.0, generator=torch.Generator().manual_seed(3))
    cut = want[0, ids.shape[1]:].tolist()
    stop = {tok.eos_token_id, tok.convert_tokens_to_ids("<|eot|>")}
    cut = cut[: next((i for i, t in enumerate(cut) if t in stop), len(cut))]
    assert got == tok.decode(cut, skip_special_tokens=True)
    capsys.readouterr()
    # Fast-dLLM's cache for Dream decodes by blocks: one that does not divide the canvas is refused in one line
    assert main(run + ["--kv-cache"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "block_length" in err[0], err
    assert main(run + ["--kv-cache", "--block-length", "4", "--output", str(tmp_path / "c.jsonl")]) == 0
    got = json.loads((tmp_path / "c.jsonl").read_text())["output"]
    want = generate_dream(model, ids, max_new_tokens=12, steps=6, temperature=0.5, top_p=0.9, top_k=None,
                          alg="entropy", alg_temp=0.0, generator=torch.Generator().manual_seed(3), kv_cache="prefix",
                          block_length=4)
    cut = want[0, ids.shape[1]:].tolist()
    cut = cut[: next((i for i, t in enumerate(cut) if t in stop), len(cut))]
    assert got == tok.decode(cut, skip_special_tokens=True)
    with pytest.raises(SystemExit):
        main(["--help"])
    helped = capsys.readouterr().out
    assert "--alg-temp" in helped and "Dream" in helped


# --- python -m conversions to-diffusion ---------------------------------------------------------------------




@pytest.mark.parametrize("source,style", [("qwen2-untied", "dream"), ("llama-tied", "dream"), ("qwen2-untied", "llada")])
def test_to_diffusion_keeps_the_causal_logits(tmp_path, capsys, source, style):
    """Run with a causal mask, the converted model gives transformers' logits of the causal source on
    the original vocabulary; the appended mask row is the mean row."""
    from dlmarch import AttentionMask, LLaDAModel
    from tests.helpers import hf_llama

    hf, path = hf_llama(tmp_path / "hf", qwen2=source.startswith("qwen2"), tied=source.endswith("-tied"))
    code, err = _conversions(capsys, "to-diffusion", path, tmp_path / "out", "--style", style)
    assert code == 0, err
    model = AutoModel.from_pretrained(tmp_path / "out")
    V = hf.config.vocab_size
    assert isinstance(model, DreamModel if style == "dream" else LLaDAModel)
    assert model.config.mask_token_id == V and model.config.vocab_size == V + 1
    emb = hf.get_input_embeddings().weight
    torch.testing.assert_close(model.wte.weight[V], emb.mean(0), atol=1e-6, rtol=0)
    ids = torch.randint(0, V, (2, 17), generator=torch.Generator().manual_seed(0))
    causal = AttentionMask.self_attention("causal", torch.arange(17).expand(2, 17))
    with torch.no_grad():
        want = hf(ids).logits
        got = model(ids, mask=causal).logits
        bidirectional = model(ids).logits
    torch.testing.assert_close(got[..., :V], want, atol=1e-5, rtol=0)
    assert not torch.allclose(bidirectional[..., :V], want, atol=1e-3)  # it really is bidirectional now
    if style == "dream":  # and it exports to Dream's HF layout
        code, err = _conversions(capsys, "export", tmp_path / "out", tmp_path / "hf-dream")
        assert code == 0, err
        assert json.loads((tmp_path / "hf-dream" / "config.json").read_text())["model_type"] == "Dream"


def test_to_diffusion_refuses_bad_input(tmp_path, capsys):
    from tests.helpers import hf_llama

    _, path = hf_llama(tmp_path / "hf", qwen2=True)
    for args, needle in (((path, tmp_path / "o", "--style", "dream", "--mask-token-id", "96"), "outside the vocabulary"),
                         ((DREAM_TINY, tmp_path / "o", "--style", "llada"), "causal Llama or Qwen2")):
        code, err = _conversions(capsys, "to-diffusion", *args)
        assert code == 2 and needle in err and len(err.strip().splitlines()) == 1, err
        assert not (tmp_path / "o").exists()
    code, err = _conversions(capsys, "to-diffusion", path, tmp_path / "o", "--style", "dream", "--mask-token-id", 95)
    assert code == 0, err
    assert AutoModel.from_pretrained(tmp_path / "o").config.vocab_size == 96  # an existing row: nothing appended


def _dream_tokenizer_files(path):
    """A tiny byte-level BPE in Dream's tokenizer layout: vocab.json, merges.txt and a tokenizer_config.json
    that names the remote-code DreamTokenizer (as Dream-v0-Instruct-7B's does)."""
    path.mkdir(parents=True, exist_ok=True)
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    codes = printable + [256 + n for n in range(256 - len(printable))]  # GPT-2's byte -> unicode table
    vocab = {chr(c): i for i, c in enumerate(codes)}
    vocab.update({"ab": 256, "Ġa": 257})
    (path / "vocab.json").write_text(json.dumps(vocab))
    (path / "merges.txt").write_text("#version: 0.2\na b\nĠ a\n")
    special = {"special": True, "lstrip": False, "rstrip": False, "normalized": False, "single_word": False}
    (path / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "DreamTokenizer", "auto_map": {"AutoTokenizer": ["tokenization_dream.DreamTokenizer", None]},
        "added_tokens_decoder": {"258": {"content": "<|endoftext|>", **special}, "259": {"content": "<|im_end|>", **special},
                                 "260": {"content": "<|mask|>", **special}},
        "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>", "bos_token": None, "unk_token": None,
        "chat_template": "{% for m in messages %}<|im_start|>{{ m.role }}\\n{{ m.content }}<|im_end|>\\n{% endfor %}"
                         "{% if add_generation_prompt %}<|im_start|>assistant\\n{% endif %}"}))


def test_dream_tokenizer_is_read_without_remote_code(tmp_path, capsys):
    from dlmarch.sampling.cli import main
    from dlmarch.tokenizers import dream_tokenizer

    _dream_tokenizer_files(tmp_path / "m")
    tok = dream_tokenizer(tmp_path / "m")
    assert tok("ab a<|im_end|>").input_ids == [256, 257, 259]  # BPE merges, then the special token whole
    assert tok.convert_tokens_to_ids("<|mask|>") == 260 and tok.pad_token_id == 258
    assert dream_tokenizer(DREAM_TINY) is None  # no tokenizer_config.json: not Dream's
    cfg = DreamConfig(vocab_size=261, hidden_size=32, num_layers=1, num_heads=4, num_kv_heads=2, intermediate_size=48,
                      mask_token_id=260, eos_token_id=258, pad_token_id=258, max_position_embeddings=256)
    torch.manual_seed(0)
    DreamModel(cfg).init_weights(std=0.2).save_pretrained(tmp_path / "m-model")
    for f in (tmp_path / "m").iterdir():
        (tmp_path / "m-model" / f.name).write_bytes(f.read_bytes())
    code = main(["--model", str(tmp_path / "m-model"), "--prompt", "ab", "--gen-length", "4", "--steps", "2"])
    assert code == 0, capsys.readouterr().err


def test_llada_sampler_refuses_dream(tmp_path):
    """LLaDA's sampler reads logits[:, i] as the prediction of token i; Dream's predict token i+1.
    (The trainers shift them: tests/test_dream_training.py.)"""
    from dlmarch import generate

    model, _ = _tiny_dream_dir(tmp_path / "m")
    with pytest.raises(ValueError, match="generate_dream"):
        generate(model, torch.tensor([[5, 6, 7]]), steps=4, gen_length=4, block_length=4)
