"""Bad input refused the same way everywhere: one line naming the problem, exit status 2, nothing written.

One test (or a few) per kind: option values from the command line and from YAML, absurd counts and
model configs, configs and data that used to raise a traceback, and safetensors headers that the
safetensors library itself refuses.
"""

import json
import re
import struct

import pytest
import torch

from dlmarch import LLaDAConfig
from dlmarch import safetensors_io as st
from dlmarch.errors import CheckpointError, ConfigError, DlmarchError
from tests.helpers import LLADA_TINY, make_task, tiny_llada_config


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    return make_task(tmp_path_factory.mktemp("task"), n=32)


def _sft(argv, capsys):
    """Run `python -m trainers.sft` in-process: (exit status, stderr lines)."""
    from trainers.sft import main

    rc = main([str(a) for a in argv])
    return rc, capsys.readouterr().err.strip().splitlines()


def _parse(tmp_path, yaml_text, *flags):
    from trainers.options import common_parser, parse

    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"model: m\ndata: d\noutput: o\n{yaml_text}")
    return parse(common_parser("x", ""), ["--config", str(cfg), *flags])


# --- options: YAML values go through the command line's conversion and choices ------------------------------


def test_yaml_on_off_is_the_choice_not_a_boolean(tmp_path):
    # YAML 1.1 reads `on` as True; the CLI's --bf16 on means autocast on.
    assert _parse(tmp_path, "bf16: on\n").bf16 == "on"
    assert _parse(tmp_path, "bf16: off\n").bf16 == "off"


def test_yaml_choices_are_checked(tmp_path):
    with pytest.raises(DlmarchError, match=r"c\.yaml: schedule: invalid choice 'cosin' \(choose from cosine, linear, constant\)"):
        _parse(tmp_path, "schedule: cosin\n")


def test_yaml_values_are_converted_like_flags(tmp_path):
    args = _parse(tmp_path, "lr: 1e-5\nbatch-size: '8'\nadam-betas: [0.8, 0.9]\npack: true\n")
    assert args.lr == 1e-5 and isinstance(args.lr, float)  # PyYAML reads 1e-5 as a string
    assert args.batch_size == 8 and args.adam_betas == [0.8, 0.9] and args.pack is True
    for bad, what in (("batch-size: 2.5", "batch-size: invalid int value: 2.5"),
                      ("pack: 3", "pack: expected true or false, found 3"),
                      ("adam-betas: 0.9", "adam-betas: expected a list of 2 values, found 0.9"),
                      ("lora-targets: []", "lora-targets: expected at least one value")):
        with pytest.raises(DlmarchError, match=f"c\\.yaml: {what}"):
            _parse(tmp_path, bad + "\n")


# --- counts and sizes --------------------------------------------------------------------------------


@pytest.mark.parametrize("flag,value", [("--batch-size", 0), ("--grad-accum", -1), ("--log-every", 0),
                                        ("--save-every", 0), ("--max-steps", 0), ("--max-length", 0),
                                        ("--lr", -1), ("--epochs", 0), ("--keep", 0), ("--lora-rank", -2)])
def test_non_positive_counts_are_refused_before_anything_runs(tmp_path, capsys, flag, value):
    out = tmp_path / "run"
    rc, err = _sft(["--model", tmp_path / "nope", "--data", tmp_path / "nope.jsonl", "--output", out, flag, value], capsys)
    assert rc == 2 and len(err) == 1 and err[0].startswith(f"error: {flag} must be"), err
    assert not out.exists()


def test_non_positive_counts_from_yaml_name_the_file(tmp_path):
    with pytest.raises(DlmarchError, match=r"c\.yaml: batch-size must be at least 1, found 0"):
        _parse(tmp_path, "batch-size: 0\n")


@pytest.mark.parametrize("size", ["0", "-5GB"])
def test_non_positive_shard_size_is_refused(tmp_path, capsys, size):
    from conversions.__main__ import main

    dst = tmp_path / "dst"
    assert main(["import", str(LLADA_TINY), str(dst), f"--max-shard-size={size}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--max-shard-size must be positive" in err[0], err
    assert not dst.exists()


@pytest.mark.parametrize("changes,message", [
    (dict(num_layers=10**6), "num_layers 1000000 is more than"),
    (dict(hidden_size=-32), "hidden_size must be a positive integer, found -32"),
    (dict(vocab_size=96.7), "vocab_size must be a positive integer, found 96.7"),
    (dict(num_kv_heads=0), "num_kv_heads must be a positive integer, found 0"),
    (dict(eos_token_id=64), "eos_token_id 64 is outside the vocabulary of 64"),
    (dict(mask_token_id=-1), "mask_token_id -1 is outside the vocabulary of 64"),
    (dict(rope_scaling={"rope_type": "linear"}), "linear rope scaling needs a positive 'factor'"),
    (dict(rope_scaling={"rope_type": "llama3", "factor": 8.0}), "llama3 rope scaling needs"),
    (dict(rms_norm_eps=0.0), "rms_norm_eps must be positive"),
    (dict(qkv_bias="yes"), "qkv_bias must be true or false, found 'yes'"),
    (dict(max_position_embeddings=1), "max_position_embeddings 1 leaves no room"),
    (dict(pad_token_id="61"), "pad_token_id must be an integer token id, found '61'"),
])
def test_absurd_configs_are_refused_before_building(changes, message):
    with pytest.raises(ConfigError, match=message):
        tiny_llada_config(**changes)


# --- configs and data that used to give a traceback -----------------------------------------------------------


def _edit_config(tmp_path, **changes):
    import shutil

    src = tmp_path / "src"
    shutil.copytree(LLADA_TINY, src)
    cfg = json.loads((src / "config.json").read_text())
    cfg.update(changes)
    (src / "config.json").write_text(json.dumps(cfg))
    return src


@pytest.mark.parametrize("changes,message", [
    (dict(n_heads="four"), "n_heads must be a positive integer, found 'four'"),
    (dict(n_heads=0), "n_heads must be a positive integer, found 0"),
    (dict(d_model=[64]), "d_model must be a positive integer, found [64]"),
    (dict(rope_theta="big"), "rope_theta must be a number, found 'big'"),
    (dict(n_layers=10**6), "num_layers 1000000 is more than"),
    (dict(embedding_size=96.7), "embedding_size must be a positive integer, found 96.7"),
    (dict(max_sequence_length=1), "max_position_embeddings 1 leaves no room"),
])
def test_wrong_types_in_config_json(tmp_path, capsys, changes, message):
    from conversions.__main__ import main

    src, dst = _edit_config(tmp_path, **changes), tmp_path / "dst"
    assert main(["import", str(src), str(dst)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(src / "config.json") in err[0] and message in err[0], err
    assert not dst.exists()


@pytest.mark.parametrize("config", [None, [1, 2], "llada"])
def test_native_config_without_a_config_object(tmp_path, config):
    d = tmp_path / "native"
    d.mkdir()
    raw = {"format": "dlmarch"}
    if config is not None:
        raw["config"] = config
    (d / "config.json").write_text(json.dumps(raw))
    with pytest.raises(ConfigError, match=f"{d / 'config.json'}: .*'config'"):
        LLaDAConfig.from_pretrained(d)


def _rows(tmp_path, rows, name="d.jsonl"):
    p = tmp_path / name
    p.write_bytes(b"".join((r if isinstance(r, bytes) else json.dumps(r).encode()) + b"\n" for r in rows))
    return p


GOOD = {"prompt": "ab", "response": "cd"}


@pytest.mark.parametrize("row,message", [
    ({"messages": [{"role": "user", "content": ["a"]}, {"role": "assistant", "content": "b"}]},
     "line 2: messages[0].content must be a string, found a list"),
    ({"messages": [{"role": 1, "content": "a"}, {"role": "assistant", "content": "b"}]},
     "line 2: messages[0].role must be a string, found an int"),
    ({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": None}]},
     "line 2: messages[1].content must be a string, found None"),
    (b'{"prompt": "a\xff", "response": "b"}', "line 2: invalid UTF-8"),
])
def test_bad_rows_name_their_line_and_can_be_skipped(tmp_path, row, message):
    from trainers.data import DataError, load_examples
    from trainers.tokenizer import build_char_tokenizer

    tok = build_char_tokenizer(pad_to=8)
    p = _rows(tmp_path, [GOOD, row, GOOD])
    with pytest.raises(DataError, match=f"{p}: {message}".replace("[", r"\[").replace("]", r"\]")):
        load_examples(p, tok, 64, eos_id=tok.eos_token_id)
    ex, report = load_examples(p, tok, 64, eos_id=tok.eos_token_id, skip_bad_rows=True)
    assert report.skipped_bad == 1 and [e.line for e in ex] == [1, 3]


def test_a_chat_template_that_raises_names_the_row(tmp_path):
    from trainers.data import DataError, load_examples
    from trainers.tokenizer import build_char_tokenizer

    tok = build_char_tokenizer(pad_to=8)
    tok.chat_template = ("{% for m in messages %}{% if m['content'] == 'x' %}{{ raise_exception('no x please') }}{% endif %}"
                         "{{ m['content'] }}{% endfor %}")
    p = _rows(tmp_path, [GOOD, {"prompt": "x", "response": "y"}])
    with pytest.raises(DataError, match=f"{p}: line 2: the chat template failed: no x please"):
        load_examples(p, tok, 64, eos_id=tok.eos_token_id)


def test_output_path_that_is_a_file(tmp_path, capsys, task):
    model, data = task
    out = tmp_path / "run"
    out.write_text("mine")
    rc, err = _sft(["--model", model, "--data", data, "--output", out, "--max-steps", "1"], capsys)
    assert rc == 2 and err == [f"error: --output {out} is a file, not a directory"], err
    assert out.read_text() == "mine"


def test_io_errors_name_the_file(tmp_path, capsys, task):
    model, _ = task
    data = tmp_path / "data.jsonl"
    data.mkdir()  # a directory where the data file should be: IsADirectoryError
    out = tmp_path / "run"
    rc, err = _sft(["--model", model, "--data", data, "--output", out, "--max-steps", "1", "--no-progress"], capsys)
    assert rc == 2 and len(err) == 1 and str(data) in err[0] and "Traceback" not in err[0], err
    assert not out.exists()


# --- safetensors headers that the library refuses ---------------------------------------------------------


def _safetensors(path, header: str, data_bytes: int = 16):
    raw = header.encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"\0" * data_bytes)
    return path


@pytest.mark.parametrize("header,message", [
    ('{"a":{"dtype":"F32","shape":[2],"data_offsets":[-8,0]},"b":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}',
     "corrupt safetensors header"),
    ('{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}',
     "corrupt safetensors header"),
    ('{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"a":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}}',
     "tensor 'a' appears twice in the header"),
    ('{"a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}}', "corrupt safetensors header"),
])
def test_safetensors_headers_the_library_refuses(tmp_path, header, message):
    path = _safetensors(tmp_path / "x.safetensors", header)
    with pytest.raises(CheckpointError, match=f"{path}: {message}"):
        st.read_header(path)


def test_safetensors_reading_matches_the_library(tmp_path):
    from safetensors.torch import save_file

    tensors = {"a": torch.randn(3, 5), "b": torch.arange(7, dtype=torch.int64), "c": torch.randn(2, dtype=torch.bfloat16)}
    save_file(tensors, tmp_path / "x.safetensors", metadata={"format": "pt"})
    infos, meta = st.read_header(tmp_path / "x.safetensors")
    assert meta == {"format": "pt"} and sorted(infos) == ["a", "b", "c"]
    for name, t in tensors.items():
        assert torch.equal(st.read_tensor(infos[name]), t)


@pytest.mark.parametrize("cli,flag", [("dlmarch.sampling.cli", "--steps"), ("dlmarch.sampling.cli", "--batch-size"),
                                      ("dlmarch.sampling.cli", "--block-length"), ("trainers.evaluate", "--steps"),
                                      ("trainers.evaluate", "--num"), ("trainers.evaluate", "--gen-length")])
def test_sampler_counts_must_be_positive(tmp_path, capsys, cli, flag):
    """`--steps 0` used to fall back silently to the default (`args.steps or ...`)."""
    import importlib

    main = importlib.import_module(cli).main
    source = ["--prompt", "hi"] if cli == "dlmarch.sampling.cli" else ["--task", "sudoku"]
    rc = main([*source, "--model", str(tmp_path / "none"), flag, "0"])
    err = capsys.readouterr().err.strip().splitlines()
    # The decoding options' own message (the same from every CLI and from lm-eval); --num is evaluate's.
    name = flag if flag == "--num" else flag[2:].replace("-", "_")
    assert rc == 2 and err == [f"error: {name} must be at least 1, found 0"], err


@pytest.mark.parametrize("where", ["dst", "parent"])
def test_conversion_destination_that_is_a_file(tmp_path, capsys, where):
    """--overwrite replaces a checkpoint directory, never a user's file (it used to move the file
    aside as a hidden .NAME.old-PID and put the checkpoint in its place)."""
    from conversions.__main__ import main

    f = tmp_path / "file"
    f.write_text("mine")
    dst = f if where == "dst" else f / "native"
    assert main(["import", str(LLADA_TINY), str(dst), "--overwrite"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{f} is a file" in err[0], err
    assert f.read_text() == "mine" and sorted(p.name for p in tmp_path.iterdir()) == ["file"]


# --- native configs that named what they are not ---------------------------------------------------------------


@pytest.fixture(scope="module")
def native_llada(tmp_path_factory):
    from conversions.__main__ import main

    dst = tmp_path_factory.mktemp("native") / "llada"
    assert main(["import", str(LLADA_TINY), str(dst)]) == 0
    return dst


def test_a_native_config_of_one_position_does_not_export(tmp_path, capsys, native_llada):
    import shutil

    from conversions.__main__ import main

    src, dst = tmp_path / "src", tmp_path / "hf"
    shutil.copytree(native_llada, src)
    raw = json.loads((src / "config.json").read_text())
    raw["config"]["max_position_embeddings"] = 1
    (src / "config.json").write_text(json.dumps(raw))
    assert main(["export", str(src), str(dst)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(src / "config.json") in err[0] and "max_position_embeddings 1" in err[0], err
    assert not dst.exists()


@pytest.mark.parametrize("model", ["EvilModel", "os.system", 5, None, "CausalLM"])
def test_a_native_config_naming_another_model_class_is_refused(tmp_path, capsys, native_llada, model):
    """It used to load as LLaDA whatever `model` said (and export as LLaDA)."""
    import shutil

    from conversions.__main__ import main
    from dlmarch import AutoModel, LLaDAModel

    src = tmp_path / "src"
    shutil.copytree(native_llada, src)
    raw = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps({**raw, "model": model}))
    for load in (AutoModel.from_pretrained, LLaDAModel.from_pretrained):
        with pytest.raises(ConfigError, match=f"{src / 'config.json'}: model {model!r} is not a llada model class"):
            load(src)
    dst = tmp_path / "hf"
    assert main(["export", str(src), str(dst)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is not a llada model class" in err[0] and not dst.exists(), err


# --- weights: an index that disagrees with its shards, unreadable files --------------------------------------


def _sharded_llada(tmp_path):
    """llada-tiny split into two safetensors shards with their index (as transformers writes them)."""
    import shutil

    from safetensors.torch import load_file, save_file

    src = tmp_path / "src"
    shutil.copytree(LLADA_TINY, src)
    sd = load_file(src / "model.safetensors")
    (src / "model.safetensors").unlink()
    names = sorted(sd)
    shards = {"model-00001-of-00002.safetensors": names[: len(names) // 2],
              "model-00002-of-00002.safetensors": names[len(names) // 2:]}
    for file, keys in shards.items():
        save_file({k: sd[k] for k in keys}, src / file, metadata={"format": "pt"})
    weight_map = {k: file for file, keys in shards.items() for k in keys}
    return src, weight_map


def _index(src, weight_map):
    (src / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


@pytest.mark.parametrize("case", ["moved", "listed, not held", "held, not listed"])
def test_an_index_that_disagrees_with_its_shards_is_refused(tmp_path, capsys, case):
    from conversions.__main__ import main
    from dlmarch import AutoModel

    src, weight_map = _sharded_llada(tmp_path)
    _index(src, weight_map)
    assert AutoModel.from_pretrained(src) is not None  # the honest index loads
    first, last = sorted(weight_map)[0], sorted(weight_map)[-1]
    if case == "moved":
        weight_map[first] = weight_map[last]
    elif case == "listed, not held":
        weight_map["model.transformer.extra.weight"] = weight_map[first]
    else:
        del weight_map[first]
    _index(src, weight_map)
    index = src / "model.safetensors.index.json"
    with pytest.raises(CheckpointError, match=f"{index}: weight_map"):
        AutoModel.from_pretrained(src)
    dst = tmp_path / "dst"
    assert main(["import", str(src), str(dst)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{index}: weight_map" in err[0] and not dst.exists(), err


@pytest.mark.parametrize("name", ["model.safetensors", "config.json", "tokenizer_config.json"])
def test_unreadable_files_are_named_in_one_line(tmp_path, capsys, monkeypatch, name):
    """What a user without read permission gets (root reads everything, so the refusal is simulated):
    PermissionError from every way of opening the file, as a mode-000 file gives it."""
    import builtins
    import io
    import os
    import pathlib
    import shutil

    from conversions.__main__ import main

    src, dst = tmp_path / "src", tmp_path / "dst"
    shutil.copytree(LLADA_TINY, src)
    (src / "tokenizer_config.json").write_text("{}")
    blocked = str(src / name)

    def denied(path):
        if os.fspath(path) == blocked:
            raise PermissionError(13, "Permission denied", os.fspath(path))

    real_open, real_io_open, real_os_open = builtins.open, io.open, os.open
    real_read_bytes, real_read_text = pathlib.Path.read_bytes, pathlib.Path.read_text
    monkeypatch.setattr(builtins, "open", lambda p, *a, **k: denied(p) or real_open(p, *a, **k))
    monkeypatch.setattr(io, "open", lambda p, *a, **k: denied(p) or real_io_open(p, *a, **k))
    monkeypatch.setattr(os, "open", lambda p, *a, **k: denied(p) or real_os_open(p, *a, **k))
    monkeypatch.setattr(pathlib.Path, "read_bytes", lambda p: denied(p) or real_read_bytes(p))
    monkeypatch.setattr(pathlib.Path, "read_text", lambda p, *a, **k: denied(p) or real_read_text(p, *a, **k))
    if name != "tokenizer_config.json":
        with pytest.raises(DlmarchError, match="Permission denied"):
            from dlmarch import AutoModel

            AutoModel.from_pretrained(src)
    assert main(["import", str(src), str(dst)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and blocked in err[0] and "Permission denied" in err[0], err
    assert not dst.exists()


# --- sizes that cannot be built ------------------------------------------------------------------------------


@pytest.mark.parametrize("changes", [dict(vocab_size=2**40), dict(hidden_size=2**24, num_heads=2**10, num_kv_heads=2**10),
                                     dict(intermediate_size=2**42)])
def test_a_model_that_cannot_fit_in_memory_is_refused_before_allocating(changes):
    """Building it used to fail inside the allocator (a RuntimeError, or the machine swapping)."""
    from dlmarch import LLaDAModel

    cfg = tiny_llada_config(**{"mask_token_id": 0, "eos_token_id": 1, "pad_token_id": 1, **changes})
    with pytest.raises(ConfigError, match=r"a llada model .* has [\d,]+ parameters, .* GiB .*; is the config right\?"):
        LLaDAModel(cfg)
    with torch.device("meta"):
        assert LLaDAModel(cfg).num_parameters() == cfg.num_params()  # loading builds on meta: never refused


@pytest.mark.parametrize("options,message", [(dict(flow_dim="16"), "L2D flow_dim must be a positive integer, found '16'"),
                                             (dict(lora_rank=0), "L2D lora_rank must be a positive integer, found 0"),
                                             (dict(time_hidden=2.5), "L2D time_hidden must be a positive integer"),
                                             (dict(flow_dim=2**40), "the L2D diffusion path of flow_dim 1099511627776")])
def test_l2d_sizes_are_checked_before_building(options, message):
    from dlmarch.models.causal import CausalLM, LlamaConfig
    from dlmarch.models.l2d import L2DModel
    from dlmarch.models.l2d_config import L2DConfig

    main = CausalLM(LlamaConfig(vocab_size=64, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2,
                                intermediate_size=48, max_position_embeddings=64))
    with pytest.raises(ConfigError, match=message):
        L2DModel(main, L2DConfig(**options))


# --- flags and run files named in the one line ------------------------------------------------------------------


@pytest.mark.parametrize("argv,message", [
    (["--pass-k", "a,b"], "error: --pass-k must be comma-separated integers (1,8), found 'a,b'"),
    # a decoding option: named as DecodingOptions names it on every command line and in lm-eval
    (["--seed", str(2**70)], f"error: seed must be between 0 and 2**63 - 1, found {2**70}"),
    (["--seed", "-1"], "error: seed must be between 0 and 2**63 - 1, found -1"),
])
def test_evaluate_flags_are_named(tmp_path, capsys, argv, message):
    from trainers.evaluate import main

    rc = main(["--task", "sudoku", "--model", str(tmp_path / "none"), *argv])
    assert rc == 2 and capsys.readouterr().err.strip().splitlines() == [message]


def test_a_seed_beyond_64_bits_is_refused_by_the_trainers(tmp_path, capsys):
    out = tmp_path / "run"
    rc, err = _sft(["--model", tmp_path / "m", "--data", tmp_path / "d.jsonl", "--output", out, "--seed", 2**70], capsys)
    assert rc == 2 and err == [f"error: --seed must be between 0 and 2**63 - 1, found {2**70}"], err
    assert not out.exists()


def test_micro_batch_generators_take_any_allowed_seed():
    from trainers.loop import micro_generator

    micro_generator(2**63 - 1, 10**6, 7, "cpu")  # used to overflow inside torch
    a, b = micro_generator(3, 5, 1, "cpu"), torch.Generator().manual_seed((3 * 1_000_003 + 5) * 10_007 + 1)
    assert torch.equal(torch.rand(4, generator=a), torch.rand(4, generator=b))  # small seeds: the same stream


@pytest.mark.parametrize("text", ["a: " + "[" * 100_000 + "]" * 100_000, "a: " + "{b: " * 5_000 + "1" + "}" * 5_000])
def test_a_deeply_nested_yaml_config_is_one_line(tmp_path, capsys, text):
    cfg, out = tmp_path / "c.yaml", tmp_path / "run"
    cfg.write_text(text + "\n")
    rc, err = _sft(["--config", cfg, "--model", tmp_path, "--data", tmp_path / "d.jsonl", "--output", out], capsys)
    assert rc == 2 and len(err) == 1 and str(cfg) in err[0], err


def test_a_lone_surrogate_in_jsonl_names_its_line(tmp_path):
    from trainers.data import DataError, load_examples
    from trainers.tokenizer import build_char_tokenizer

    tok = build_char_tokenizer(pad_to=8)
    p = _rows(tmp_path, [GOOD, b'{"prompt": "a\\ud800", "response": "b"}', b'{"prompt": "\\ud83d\\ude00", "response": "b"}'])
    with pytest.raises(DataError, match=rf"{p}: line 2: a lone surrogate \\ud800 is not text"):
        load_examples(p, tok, 64, eos_id=tok.eos_token_id)


@pytest.mark.parametrize("run_json", [b"[1, 2]", b'"run"', b"\xff\xfe", b"[" * 100_000])
def test_run_json_of_the_wrong_type_on_resume(tmp_path, run_json):
    from argparse import Namespace

    from trainers.rundir import record_run

    (tmp_path / "run.json").write_bytes(run_json)
    with pytest.raises(DlmarchError, match=f"{tmp_path / 'run.json'}: ") as e:
        record_run(tmp_path, Namespace(resume=True, overwrite=False, lr=1.0), 0)
    assert len(str(e.value).splitlines()) == 1


@pytest.mark.parametrize("lines,message", [
    ([b'{"step": 1, "loss": 1}', b"[1]", b'{"step": 2, "loss": 1}'], "line 2: expected a metrics object with an integer step"),
    ([b'{"step": 1, "loss": 1}', b'{"step": "2"}'], "line 2: expected a metrics object with an integer step"),
    ([b'{"step": 1, "loss": 1}', b'{"step": 2, "lo\xffss": 1}', b'{"step": 3}'], "line 2: invalid UTF-8"),
    ([b'{"step": 1, "loss": 1}', b"{not json", b'{"step": 3}'], "line 2: invalid JSON"),
])
def test_damaged_metrics_on_resume_are_named(tmp_path, lines, message):
    from trainers.progress import truncate_metrics

    p = tmp_path / "metrics.jsonl"
    p.write_bytes(b"\n".join(lines) + b"\n")
    with pytest.raises(DlmarchError, match=f"{p}: {message}"):
        truncate_metrics(p, 5)


def test_a_torn_last_metrics_line_is_dropped(tmp_path):
    from trainers.progress import truncate_metrics

    p = tmp_path / "metrics.jsonl"
    p.write_bytes(b'{"step": 1, "loss": 1}\n{"step": 2, "loss": 1}\n{"step": 3, "lo\xc3')
    truncate_metrics(p, 2)
    assert p.read_text() == '{"step": 1, "loss": 1}\n{"step": 2, "loss": 1}\n'


# --- chat templates: code from the model directory -------------------------------------------------------------

LOOPING = "{% for i in range(99999) %}{% for j in range(99999) %}{% endfor %}{% endfor %}"
ESCAPE = "{{ ''.__class__.__mro__[1].__subclasses__() }}"
RAISING = "{{ raise_exception('no prompts today') }}"
HUGE = "{% for i in range(99999) %}{{ 'x' * 200 }}{% endfor %}"
TEMPLATES = {"loops": (LOOPING, "did not finish in 0.5 s"), "escapes": (ESCAPE, "unsafe"),
             "raises": (RAISING, "no prompts today"), "writes too much": (HUGE, "characters, more than")}


@pytest.fixture(scope="module")
def templated(tmp_path_factory):
    """A tiny model directory per bad template (the template in tokenizer_config.json, as HF saves it)."""
    import shutil

    from tests.helpers import tiny_model_dir

    base = tmp_path_factory.mktemp("tpl") / "base"
    tiny_model_dir(base)
    out = {}
    for name, (template, _) in TEMPLATES.items():
        d = base.parent / name.replace(" ", "-")
        shutil.copytree(base, d)
        cfg = json.loads((d / "tokenizer_config.json").read_text())
        cfg["chat_template"] = template
        (d / "tokenizer_config.json").write_text(json.dumps(cfg))
        (d / "chat_template.jinja").unlink(missing_ok=True)
        out[name] = d
    return out


@pytest.mark.parametrize("case", list(TEMPLATES))
@pytest.mark.parametrize("command", ["generate", "evaluate", "sft"])
def test_bad_chat_templates_are_one_line(tmp_path, capsys, monkeypatch, templated, case, command):
    import dlmarch.prompts

    monkeypatch.setattr(dlmarch.prompts, "TEMPLATE_SECONDS", 0.5)
    monkeypatch.setattr(dlmarch.prompts, "TEMPLATE_MAX_CHARS", 1_000_000)
    model, out = templated[case], tmp_path / "out"
    if command == "generate":
        from dlmarch.sampling.cli import main

        rc = main(["--model", str(model), "--prompt", "abc", "--gen-length", "8", "--steps", "2", "--block-length", "8"])
        err = capsys.readouterr().err.strip().splitlines()
    elif command == "evaluate":
        from trainers.evaluate import main

        rc = main(["--model", str(model), "--task", "sudoku", "--num", "1", "--gen-length", "8", "--block-length", "8",
                   "--output", str(out / "eval.jsonl")])
        err = capsys.readouterr().err.strip().splitlines()
    else:
        data = tmp_path / "d.jsonl"
        data.write_text(json.dumps({"prompt": "ab", "response": "cd"}) + "\n")
        rc, err = _sft(["--model", model, "--data", data, "--output", out, "--max-steps", 1, "--no-progress"], capsys)
    assert rc == 2 and len(err) == 1 and err[0].startswith("error: "), err
    assert TEMPLATES[case][1] in err[0] and f"template of {model}" in err[0], err
    assert "Traceback" not in err[0]


@pytest.mark.parametrize("flag,value,message", [
    ("--lr", "nan", "--lr must be a finite number, found nan"),
    ("--clip", "nan", "--clip must be a finite number, found nan"),
    ("--weight-decay", "inf", "--weight-decay must be a finite number, found inf"),
    ("--cart-p", "nan", "--cart-p must be a finite number, found nan"),
    ("--cart-p", "-0.5", "--cart-p must be a positive number, found -0.5"),
])
def test_trainer_floats_must_be_finite(tmp_path, capsys, flag, value, message):
    out = tmp_path / "run"
    rc, err = _sft(["--model", tmp_path / "m", "--data", tmp_path / "d.jsonl", "--output", out, flag, value], capsys)
    assert rc == 2 and err == [f"error: {message}"], err
    assert not out.exists()


def test_method_floats_must_be_in_range(tmp_path, capsys):
    from trainers.blockwise import main

    rc = main(["--model", str(tmp_path / "m"), "--data", str(tmp_path / "d.jsonl"), "--output", str(tmp_path / "run"),
               "--suffix-mask-prob", "nan"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err == ["error: --suffix-mask-prob must be a finite number, found nan"], err


@pytest.mark.parametrize("messages,message", [
    ([{"role": "user", "content": 5}], "messages[0].content must be a string, found 5"),
    ([{"role": "user", "content": ["a"]}], "messages[0].content must be a string, found ['a']"),
    ([{"role": "user"}], "messages[0].content must be a string, found nothing"),
    (["hi"], "messages[0] must be an object, found str"),
    ([{"role": None, "content": "a"}], "messages[0].role must be a string, found None"),
])
def test_generate_prompts_with_non_string_messages(tmp_path, capsys, templated, messages, message):
    """An int content used to be accepted silently (and a list one to crash in the template)."""
    from dlmarch.sampling.cli import main

    p = tmp_path / "prompts.jsonl"
    p.write_text(json.dumps({"prompt": "ok"}) + "\n" + json.dumps({"messages": messages}) + "\n")
    rc = main(["--model", str(templated["raises"].parent / "base"), "--prompts", str(p)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and f"{p}: line 2: {message}" in err[0], err


@pytest.mark.parametrize("case", ["under a file", "results not an object", "results not UTF-8", "config not an object"])
def test_experiments_output_problems_are_one_line(tmp_path, capsys, case):
    from trainers.experiments.command import WRITES, main
    from trainers.toy import claim_output

    if case == "under a file":
        (tmp_path / "f").write_text("mine")
        out = tmp_path / "f" / "exp"
    else:
        out = tmp_path / "exp"
        claim_output(out, True, False, "trainers.experiments", WRITES)  # a directory this command made
        raw = {"results not an object": b"[1, 2]", "results not UTF-8": b'{"a": "\xff"}',
               "config not an object": b'{"config": 5}'}[case]
        (out / "results.json").write_bytes(raw)
    rc = main(["--output", str(out), "--quick", "--only", "methods"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("error: "), err
    assert (str(tmp_path / "f") if case == "under a file" else str(out / "results.json")) in err[0], err
    if case == "under a file":
        assert (tmp_path / "f").read_text() == "mine"


@pytest.mark.parametrize("name,raw,message", [
    ("eval.jsonl.partial-0.jsonl", b'{"index": 0, "sample": 0, "generation": "\xff"}\n', "invalid UTF-8"),
    ("eval.jsonl.run.json", b"[1, 2]", "expected a JSON object, found list"),
])
def test_evaluate_resume_files_are_named(tmp_path, capsys, templated, name, raw, message):
    from dlmarch.errors import DlmarchError
    from trainers.eval_records import read_done
    from trainers.evaluate import main

    (tmp_path / name).write_bytes(raw)
    if name.endswith(".run.json"):  # --resume reads the record of a run under way (its partial file is there)
        (tmp_path / "eval.jsonl.partial-0.jsonl").write_text("")
        rc = main(["--task", "sudoku", "--num", "1", "--model", str(templated["raises"].parent / "base"), "--output",
                   str(tmp_path / "eval.jsonl"), "--resume"])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(err) == 1 and f"{tmp_path / name}: {message}" in err[0], err
    else:  # the partial's records are read once the record matches (trainers/test_evaluate_output.py)
        with pytest.raises(DlmarchError, match=re.escape(f"{tmp_path / name}: line 1")) as e:
            read_done(tmp_path / "eval.jsonl", False)
        assert "UnicodeDecodeError" in str(e.value) or message in str(e.value)
