"""Decoding options, defined once: names, types, defaults, checks and help.

Every surface that decodes (`python -m dlmarch.generate`, `python -m trainers.evaluate`, the lm-eval
model's model_args, the experiments) reads its decoding options from `DecodingOptions`: a command
line renders them as flags with `add_decoding_arguments` (`gen_length` -> `--gen-length`), lm-eval
passes them as model_args by their field names, and both go through `DecodingOptions.parse`, so a
value means the same thing and is refused with the same one-line message everywhere.

A field left at None is resolved for the model at hand (`resolve`), in this order:
1. the value the user gave;
2. the `decoding` entry of the model's config.json, written by our trainers (the block length a
   model was trained with, its canvas as `gen_length`, whether it decodes block-causally);
3. the surface's protocol (e.g. d1's steps = gen_length / 2 in trainers.evaluate);
4. the reference defaults of the model's sampler (`dlmarch.sampling.dispatch.SAMPLERS`): LLaDA's
   `generate.py`, Dream's evaluation harness (DreamLM/Dream `eval/eval.py`), L2D's config.

An option the model's sampler does not take is refused when set (one line naming the sampler and
the options it takes), never silently ignored.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace

from ..errors import DlmarchError

REMASKING = ("low_confidence", "random")
KV_CACHE = ("none", "prefix", "dual")
DREAM_ALGORITHMS = ("origin", "maskgit_plus", "topk_margin", "entropy")


class OptionError(DlmarchError, ValueError):
    """A decoding option that cannot work; the message is one line naming it."""


def _opt(help: str, kind: type, choices: tuple | None = None, check=None, flag_const=None):
    return field(default=None, metadata=dict(help=help, kind=kind, choices=choices, check=check, const=flag_const))


def _positive(v):
    return None if v >= 1 else f"must be at least 1, found {v}"


def _seed(v):
    # torch's generators take 64 bits: 2**70 would overflow inside torch with a message naming nothing.
    return None if 0 <= v < 2**63 else f"must be between 0 and 2**63 - 1, found {v}"


def _non_negative(v):
    return None if math.isfinite(v) and v >= 0 else f"must be a finite number >= 0, found {v}"


def _unit_interval(v):
    return None if math.isfinite(v) and 0 < v <= 1 else f"must be in (0, 1], found {v}"


def _open_unit(v):
    return None if math.isfinite(v) and 0 < v < 1 else f"must be in (0, 1), found {v}"


@dataclass
class DecodingOptions:
    """How a prompt is decoded. None: resolved per model (module docstring)."""

    gen_length: int | None = _opt("tokens to generate (the canvas after the prompt)", int, check=_positive)
    block_length: int | None = _opt("semi-autoregressive block length (LLaDA; must divide gen_length)", int,
                                    check=_positive)
    steps: int | None = _opt("denoising steps over the whole canvas (LLaDA: divisible by the number of blocks)",
                             int, check=_positive)
    temperature: float | None = _opt("sampling temperature; 0 = greedy", float, check=_non_negative)
    seed: int | None = _opt("seed of every random draw", int, check=_seed)
    # LLaDA (dlmarch.generate)
    cfg_scale: float | None = _opt("classifier-free guidance scale (LLaDA)", float, check=_non_negative)
    remasking: str | None = _opt("which positions are committed each step (LLaDA)", str, REMASKING)
    kv_cache: str | None = _opt("key/value cache per block (approximation, Fast-dLLM): prefix or dual; a bare "
                                "flag means prefix", str, KV_CACHE, flag_const="prefix")
    threshold: float | None = _opt("confidence-threshold parallel decoding (Fast-dLLM): commit every position "
                                   "above it", float, check=_unit_interval)
    block_causal: bool | None = _opt("decode block-causally (models trained with --all-blocks)", bool)
    stop_at_eos: bool | None = _opt("stop after the block in which every row has emitted EOS/EoT (same text)", bool)
    logits_eos_inf: bool | None = _opt("never predict EOS (LLaDA's logits_eos_inf)", bool)
    confidence_eos_eot_inf: bool | None = _opt("never commit EOS/EoT early (LLaDA's confidence_eos_eot_inf)", bool)
    # Dream (dlmarch.generate_dream)
    alg: str | None = _opt("which masked positions Dream reveals each step", str, DREAM_ALGORITHMS)
    alg_temp: float | None = _opt("Dream: draw positions from softmax(confidence / T) instead of top-k", float,
                                  check=_non_negative)
    eps: float | None = _opt("Dream: the last timestep of linspace(1, eps, steps + 1)", float, check=_open_unit)
    # Dream, causal, L2D token filters
    top_p: float | None = _opt("nucleus filter on each position's logits", float, check=_unit_interval)
    top_k: int | None = _opt("top-k filter on each position's logits", int, check=_positive)
    # L2D (dlmarch.generate_l2d)
    solver: str | None = _opt("L2D's ODE solver (euler, midpoint, or a torchdiffeq method)", str)
    ode_steps: int | None = _opt("L2D's ODE grid points", int, check=_positive)

    # --- parsing and checks ---------------------------------------------------------------------------
    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    @classmethod
    def parse(cls, values: dict) -> "DecodingOptions":
        """Options from {name: value}: strings (a command line), or the ints/floats/bools/strings
        lm-eval's model_args parser produces. Unknown names and bad values: OptionError (one line)."""
        unknown = sorted(set(values) - set(cls.names()))
        if unknown:
            raise OptionError(f"unknown decoding option {unknown[0]!r} (known: {', '.join(cls.names())})")
        out = {}
        for f in fields(cls):
            if values.get(f.name) is None:
                continue
            out[f.name] = _convert(f.name, values[f.name], f.metadata)
        opts = cls(**out)
        opts.check()
        return opts

    def check(self) -> "DecodingOptions":
        """Every set value against its field's check, and the relations between fields."""
        for f in fields(self):
            v = getattr(self, f.name)
            if v is None:
                continue
            m = f.metadata
            if m["choices"] and v not in m["choices"]:
                raise OptionError(f"{f.name} must be one of {', '.join(m['choices'])}, found {v!r}")
            problem = m["check"](v) if m["check"] else None
            if problem:
                raise OptionError(f"{f.name} {problem}")
        if self.gen_length and self.block_length and self.gen_length % self.block_length:
            raise OptionError(f"block_length ({self.block_length}) must divide gen_length ({self.gen_length})")
        if self.steps and self.gen_length and self.block_length and not self.gen_length % self.block_length:
            blocks = self.gen_length // self.block_length
            if self.steps % blocks:
                raise OptionError(f"steps ({self.steps}) must be a multiple of the number of blocks "
                                  f"gen_length / block_length = {blocks}")
        if self.solver is not None:
            from ..models.l2d_schedule import SOLVERS

            if self.solver not in SOLVERS and self.solver != "heun":
                raise OptionError(f"solver must be one of {', '.join(SOLVERS)}, found {self.solver!r}")
        return self

    def given(self) -> dict:
        """The options that were set, {name: value}."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}

    def resolve(self, sampler, decoding: dict | None = None, protocol: dict | None = None) -> "DecodingOptions":
        """Every field the sampler takes filled, field by field in declaration order (a default may be a
        function of the fields before it): the given value, then config.json's `decoding` entry, then
        the surface's `protocol`, then the sampler's reference defaults."""
        values = self.given()
        sources = (_from_config(decoding or {}), protocol or {}, sampler.defaults)
        for name in self.names():
            if values.get(name) is not None or (name not in sampler.options and name != "seed"):
                continue
            for source in sources:
                if name in source:
                    v = source[name]
                    values[name] = v(values) if callable(v) else v
                    break
        return replace(DecodingOptions(), **values).check()


def _from_config(decoding: dict) -> dict:
    """The options a model's config.json `decoding` entry implies (what our trainers write)."""
    out = {}
    if isinstance(decoding.get("block_length"), int) and decoding["block_length"] > 0:
        out["block_length"] = decoding["block_length"]
    if isinstance(decoding.get("gen_length"), int) and decoding["gen_length"] > 0:
        out["gen_length"] = decoding["gen_length"]
    if decoding.get("block_causal") is True:
        out["block_causal"] = True
    return out


def _convert(name: str, value, meta: dict):
    kind = meta["kind"]
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0"):
            return value.lower() in ("true", "1")
        raise OptionError(f"{name} must be true or false, found {value!r}")
    if kind is int:
        if isinstance(value, bool) or isinstance(value, float) and not value.is_integer():
            raise OptionError(f"{name} must be an integer, found {value!r}")
        if isinstance(value, str):  # a command line's text: "1.5" is refused as lm-eval's 1.5 is
            try:
                return int(value.strip())
            except ValueError:
                try:
                    value = float(value)
                except ValueError:
                    raise OptionError(f"{name} must be an integer, found {value!r}") from None
                if not value.is_integer():
                    raise OptionError(f"{name} must be an integer, found {value!r}") from None
        try:
            return int(value)
        except (TypeError, ValueError, OverflowError):
            raise OptionError(f"{name} must be an integer, found {value!r}") from None
    if kind is float:
        if isinstance(value, bool):
            raise OptionError(f"{name} must be a number, found {value!r}")
        try:
            v = float(value)
        except (TypeError, ValueError):
            raise OptionError(f"{name} must be a number, found {value!r}") from None
        if math.isnan(v):
            raise OptionError(f"{name} must be a number, found nan")
        return v
    if name == "kv_cache" and isinstance(value, bool):  # kv_cache=True/False in lm-eval model_args
        return "prefix" if value else "none"
    return str(value)


def add_decoding_arguments(parser, note: str = "", exclude: tuple[str, ...] = ()) -> None:
    """Every decoding option as a flag (`--gen-length`, ...): values are read as text and checked by
    `DecodingOptions.parse`, so a command line refuses a bad value with the same line as lm-eval.
    `exclude` leaves out fields the command defines itself (a trainer's --seed seeds the whole run)."""
    g = parser.add_argument_group("decoding", note or "Options left out come from the model (config.json's "
                                  "`decoding` entry, then its sampler's reference defaults); an option its "
                                  "sampler does not take is refused.")
    for f in fields(DecodingOptions):
        if f.name in exclude:
            continue
        flag = "--" + f.name.replace("_", "-")
        m = f.metadata
        choices = f" ({'|'.join(m['choices'])})" if m["choices"] else ""
        if m["kind"] is bool:
            g.add_argument(flag, dest=f.name, action="store_const", const="true", default=None, help=m["help"])
        elif m["const"] is not None:
            g.add_argument(flag, dest=f.name, nargs="?", const=m["const"], default=None, metavar="MODE",
                           help=m["help"] + choices)
        else:
            g.add_argument(flag, dest=f.name, default=None, metavar=f.name.upper(), help=m["help"] + choices)


def options_from_args(args) -> DecodingOptions:
    """The DecodingOptions of an argparse namespace built with `add_decoding_arguments`."""
    return DecodingOptions.parse({n: getattr(args, n, None) for n in DecodingOptions.names()})


__all__ = ["DecodingOptions", "OptionError", "add_decoding_arguments", "options_from_args", "REMASKING", "KV_CACHE",
           "DREAM_ALGORITHMS"]
