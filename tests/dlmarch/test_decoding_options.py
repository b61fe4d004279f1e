"""Decoding options are defined once (dlmarch.sampling.options) and dispatched once (sampler_for): every
command line renders the same flags with the same checks, defaults come from the model's config.json
`decoding` entry, then the sampler's reference."""

import re
from pathlib import Path

import pytest

from dlmarch.sampling import SAMPLERS, DecodingOptions, OptionError, sampler_for
from tests.helpers import tiny_llada

ROOT = Path(__file__).resolve().parents[2]
FLAGS = ["--" + n.replace("_", "-") for n in DecodingOptions.names()]


def test_no_command_line_defines_a_decoding_flag_by_hand():
    sources = [p for d in ("dlmarch", "trainers", "conversions") for p in (ROOT / d).rglob("*.py")
               if p.name != "options.py"]
    for p in sources:
        text = p.read_text()
        for flag in FLAGS:
            if flag == "--seed" and "add_decoding_arguments" not in text:
                continue  # a training or demo seed, not a decoding option
            assert not re.search(r"add_argument\(\s*[\"']" + re.escape(flag) + r"[\"']", text), f"{p}: {flag}"
        # one dispatcher: no surface decides by hand which sampler a model takes
        assert not re.search(r"\.sampler\s*==", text), p


@pytest.mark.parametrize("cli", ["dlmarch.sampling.cli", "trainers.evaluate"])
def test_every_command_line_renders_every_decoding_option(cli, capsys):
    import importlib

    with pytest.raises(SystemExit):
        importlib.import_module(cli).main(["--help"])
    helped = capsys.readouterr().out
    assert all(flag in helped for flag in FLAGS)


def test_kv_cache_means_the_same_everywhere():
    assert DecodingOptions.parse({"kv_cache": "dual"}).kv_cache == "dual"
    assert DecodingOptions.parse({"kv_cache": True}).kv_cache == "prefix"  # lm-eval's kv_cache=True
    assert DecodingOptions.parse({"kv_cache": False}).kv_cache == "none"
    with pytest.raises(OptionError, match="^kv_cache must be one of none, prefix, dual, found 'yes'$"):
        DecodingOptions.parse({"kv_cache": "yes"})


@pytest.mark.parametrize("cli", ["dlmarch.sampling.cli", "trainers.evaluate"])
@pytest.mark.parametrize("flag,value,message", [
    ("--temperature", "nan", "temperature must be a number, found nan"),
    ("--temperature", "-0.5", "temperature must be a finite number >= 0, found -0.5"),
    ("--threshold", "2", "threshold must be in (0, 1], found 2.0"),
    ("--kv-cache", "triple", "kv_cache must be one of none, prefix, dual, found 'triple'"),
    ("--seed", "1.5", "seed must be an integer, found 1.5"),
    ("--remasking", "best", "remasking must be one of low_confidence, random, found 'best'"),
])
def test_bad_values_are_one_line_on_every_command_line(tmp_path, capsys, cli, flag, value, message):
    import importlib

    main = importlib.import_module(cli).main
    source = ["--prompt", "hi"] if cli == "dlmarch.sampling.cli" else ["--task", "sudoku"]
    assert main([*source, "--model", str(tmp_path / "none"), flag, value]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [f"error: {message}"]


def test_defaults_come_from_the_config_then_the_protocol_then_the_reference():
    model = tiny_llada()
    sampler = sampler_for(model)
    assert sampler is SAMPLERS["generate"]
    o = sampler.resolve(model, decoding={})
    assert (o.gen_length, o.block_length, o.steps, o.seed, o.kv_cache) == (128, 32, 128, 1234, "none")
    # config.json's `decoding` entry (what a trainer records): block length and canvas
    o = sampler.resolve(model, decoding={"block_length": 8, "gen_length": 32, "block_causal": True})
    assert (o.gen_length, o.block_length, o.steps, o.block_causal) == (32, 8, 32, True)
    # a surface's protocol (d1: steps = gen_length / 2) after the config, before the reference
    o = sampler.resolve(model, protocol={"steps": lambda v: v["gen_length"] // 2}, decoding={"gen_length": 32})
    assert o.steps == 16
    # the user's value first
    o = sampler.resolve(model, DecodingOptions(gen_length=64, block_length=16), decoding={"block_length": 8})
    assert (o.gen_length, o.block_length, o.steps) == (64, 16, 64)
    with pytest.raises(OptionError, match=r"^alg does not apply to a llada model \(its sampler generate takes: "):
        sampler.resolve(model, DecodingOptions(alg="entropy"))


def test_the_trained_block_length_reaches_the_generate_command(tmp_path, capsys):
    """A model trained on a 16-token canvas with blocks of 8 decodes that way without flags (it used to
    get --gen-length 128 --block-length 32 and a warning)."""
    import json

    from dlmarch.sampling.cli import main
    from tests.helpers import tiny_model_dir

    model, tok = tiny_model_dir(tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    cfg["decoding"] = {"trained_with": "blockwise", "block_length": 8, "gen_length": 16, "block_causal": False}
    (tmp_path / "m" / "config.json").write_text(json.dumps(cfg))
    assert main(["--model", str(tmp_path / "m"), "--prompt", "ab", "--no-chat-template"]) == 0
    err = capsys.readouterr().err
    assert "warning" not in err and "[16 tokens in" in err


def test_dream_block_decoding_refuses_an_ordering_it_would_ignore():
    """Fast-dLLM's Dream block decoding ranks by entropy whatever `alg`: another alg is refused in one
    line rather than silently replaced."""
    from dlmarch.sampling.dispatch import _dream_extensions
    from dlmarch.sampling.options import OptionError

    with pytest.raises(OptionError, match="alg origin does not apply with kv_cache/threshold"):
        _dream_extensions(DecodingOptions(alg="origin", kv_cache="prefix", gen_length=32, block_length=8))
    assert _dream_extensions(DecodingOptions(alg="entropy", threshold=0.9, gen_length=32)) == {"threshold": 0.9}
