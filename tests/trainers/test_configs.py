"""Every YAML in configs/ parses through the parser of each method it is meant for, with values the
options accept: configs must not rot as options change.

`options.parse` hands YAML values to argparse as defaults, which argparse neither converts nor checks
against `choices`; the checks below do both by hand from each option's own definition.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest
import yaml

from dlmarch.sampling.options import DecodingOptions

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
LLADA_METHODS = ("sft", "gift", "lift", "blockwise")
REQUIRED = ["--model", "x", "--data", "y", "--output", "z"]


def methods_for(path: Path) -> tuple[str, ...]:
    """A config named <method>-... is for that method; any other is for every LLaDA method."""
    if path.name.startswith("diffu-grpo"):
        return ("grpo",)
    prefix = path.name.split("-")[0]
    if prefix in LLADA_METHODS + ("l2d",):
        return (prefix,)
    return LLADA_METHODS


def method_parser(method: str):
    from trainers.options import common_parser

    module = importlib.import_module(f"trainers.{method}")
    parser = common_parser(f"python -m trainers.{method}", "")
    module.add_options(parser)
    return parser


def cases():
    paths = sorted(CONFIGS.glob("*.yaml"))
    assert paths, f"no configs in {CONFIGS}"
    return [pytest.param(p, m, id=f"{p.name}-{m}") for p in paths for m in methods_for(p)]


def check_value(action, key: str, value, where: str) -> None:
    """The value argparse would have produced from the command line, or fail naming the key."""
    import argparse

    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
        assert isinstance(value, bool), f"{where}: {key} is a switch, expected true/false, found {value!r}"
        return
    items = value if action.nargs not in (None, "?") else [value]
    if action.nargs not in (None, "?"):
        assert isinstance(value, list), f"{where}: {key} takes a list, found {value!r}"
        if isinstance(action.nargs, int):
            assert len(value) == action.nargs, f"{where}: {key} takes {action.nargs} values, found {len(value)}"
    for item in items:
        if action.type is not None:
            assert isinstance(item, action.type) or (action.type is float and type(item) is int), (
                f"{where}: {key} expects {action.type.__name__}, found {item!r} ({type(item).__name__})")
        if action.choices is not None:
            assert item in action.choices, f"{where}: {key} must be one of {list(action.choices)}, found {item!r}"


@pytest.mark.parametrize("path,method", cases())
def test_config_parses_for_its_method(path, method):
    from trainers.options import parse

    values = yaml.safe_load(path.read_text())
    parser = method_parser(method)
    args = parse(parser, ["--config", str(path), *REQUIRED])
    assert (args.model, args.data, args.output) == ("x", "y", "z")  # flags override the file
    by_dest = {a.dest: a for a in parser._actions}
    for key, value in values.items():
        if key in ("model", "data", "output"):
            continue
        dest = key.replace("-", "_")
        check_value(by_dest[dest], key, value, path.name)
        got = getattr(args, dest)
        if dest in DecodingOptions.names():  # decoding flags keep their text; DecodingOptions converts it
            got = getattr(DecodingOptions.parse({dest: got}), dest)
        assert (list(got) if isinstance(got, tuple) else got) == value, f"{path.name}: {key} not applied"


@pytest.mark.parametrize("name", ["gift-llada-8b.yaml", "lift-llada-8b.yaml", "blockwise-llada-8b.yaml",
                                  "l2d-llama-3.2-1b.yaml", "diffu-grpo-llada-8b.yaml"])
def test_paper_config_states_its_source(name):
    """Each paper's config exists and its header names the paper and the reference's commit."""
    text = (CONFIGS / name).read_text()
    header = [line for line in text.splitlines() if line.startswith("#")]
    joined = "\n".join(header)
    assert "arXiv" in joined and "commit" in joined, f"{name}: the header must name the paper and the commit"
    assert not re.search(r"\bcards?\b", text, re.I), f"{name}: cite papers and repositories, not internal cards"


@pytest.mark.parametrize("path", [p for p in sorted(CONFIGS.glob("*.yaml")) if "l2d" not in methods_for(p)],
                         ids=lambda p: p.name)
def test_lora_targets_name_llada_modules(path):
    """LoRA targets are LLaDA's module names (a Llama name such as o_proj would match nothing)."""
    from tests.helpers import tiny_llada
    from trainers.lora import check_lora_targets

    targets = (yaml.safe_load(path.read_text()) or {}).get("lora-targets")
    if targets is None:
        pytest.skip("no lora-targets")
    check_lora_targets(tiny_llada(), targets)


def test_method_configs_state_the_reference_rendering_and_no_options_to_come():
    """The GIFT and LIFT configs claim d1's / LIFT's setting, which renders the whole conversation; no
    config announces an option as "being added" (each exists)."""
    for path in sorted(CONFIGS.glob("*.yaml")):
        text = path.read_text()
        assert "being added" not in text, path.name
        if path.name.startswith(("gift-", "lift-")):
            assert yaml.safe_load(text)["render-full-conversation"] is True, path.name


@pytest.mark.parametrize("method,flag,value", [("blockwise", "block-size", 0), ("gift", "probe-every", 0),
                                               ("l2d", "flow-dim", 0), ("l2d", "noise-scale", 0)])
def test_method_option_limits_live_with_the_method(tmp_path, method, flag, value):
    """A method's own option carries its limit on its flag (options.limited), checked from the command line
    and from a YAML file like the shared ones."""
    from dlmarch.errors import DlmarchError
    from trainers.options import RANGES, parse

    assert flag.replace("-", "_") not in RANGES
    parser = method_parser(method)
    with pytest.raises(DlmarchError, match=f"--{flag} must be"):
        parse(parser, [*REQUIRED, f"--{flag}", str(value)])
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"{flag}: {value}\n")
    with pytest.raises(DlmarchError, match=f"c.yaml: {flag} must be"):
        parse(method_parser(method), [*REQUIRED, "--config", str(cfg)])
