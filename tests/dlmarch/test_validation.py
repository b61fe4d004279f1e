"""Bad input refused the same way everywhere: one line naming the problem, exit status 2, nothing written.

One test (or a few) per kind: option values from the command line and from YAML, absurd counts and
model configs, configs and data that used to raise a traceback, and safetensors headers that the
safetensors library itself refuses.
"""

import json
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
