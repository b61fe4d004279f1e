"""One dispatcher from a model to its sampler, and each sampler's decoding options.

A model names its sampler in the model protocol (`model.sampler`: LLaDA `generate`, Dream
`generate_dream`, L2D `generate_l2d`, Llama/Qwen2 `generate_causal`); `sampler_for(model)` returns
its `Sampler`: the options it takes, its reference defaults, and one call

    sampler(model, ids, attention_mask, options, generator, progress) -> (B, P + n) ids

that every surface uses (`python -m dlmarch.generate`, `trainers.evaluate`, the lm-eval model, the
experiments), so no surface decides by hand what a model is.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Callable

import torch

from .options import DecodingOptions, OptionError


@dataclass(frozen=True)
class Sampler:
    """name: the function in dlmarch.sampling; options: the DecodingOptions fields it takes (seed is
    everyone's); defaults: its reference's, {field: value or f(resolved so far)}; run: the call."""

    name: str
    options: frozenset
    defaults: dict
    run: Callable = field(repr=False)
    reference: str = ""

    def resolve(self, model, options: DecodingOptions | None = None, protocol: dict | None = None,
                decoding: dict | None = None) -> DecodingOptions:
        """`options` completed for `model` (see dlmarch.sampling.options); `decoding` defaults to the
        model's config.json `decoding` entry as loaded."""
        options = options or DecodingOptions()
        foreign = [n for n in options.given() if n not in self.options and n != "seed"]
        if foreign:
            raise OptionError(f"{foreign[0]} does not apply to a {family_name(model)} model (its sampler {self.name} "
                              f"takes: {', '.join(sorted(self.options))})")
        if decoding is None:
            decoding = getattr(model, "decoding", None) or {}
        resolved = options.resolve(self, decoding, protocol)
        if self.name == "generate_dream":
            _dream_extensions(resolved)
        return resolved

    def __call__(self, model, ids, attention_mask, options: DecodingOptions, generator=None, progress: bool = False,
                 stats: dict | None = None):
        """ids (B, P) left-padded, attention_mask (B, P) -> (B, P + n): prompt and generated ids. `stats`
        receives what the sampler counts (LLaDA 'nfe'; L2D 'diffusion_evaluations', 'tokens')."""
        return self.run(model, ids, attention_mask, options, generator, progress, stats)


def family_name(model) -> str:
    """The registry name of a model's family ("llada", "dream", "l2d", ...)."""
    try:
        return model.family.name
    except (AttributeError, StopIteration):
        return type(model).__name__


# --- the samplers ----------------------------------------------------------------------------------------

def _llada(model, ids, am, o, generator, progress, stats):
    from .llada import generate

    return generate(model, ids, attention_mask=am, steps=o.steps, gen_length=o.gen_length, block_length=o.block_length,
                    temperature=o.temperature, cfg_scale=o.cfg_scale, remasking=o.remasking,
                    logits_eos_inf=o.logits_eos_inf, confidence_eos_eot_inf=o.confidence_eos_eot_inf,
                    generator=generator, kv_cache=False if o.kv_cache == "none" else o.kv_cache,
                    threshold=o.threshold, block_causal=o.block_causal, stop_at_eos=o.stop_at_eos, progress=progress,
                    stats=stats)


def _dream_extensions(o: DecodingOptions) -> dict:
    """The cache/threshold keywords for generate_dream (Fast-dLLM's Dream decoding), refused in one
    line while this version's generate_dream does not take them."""
    from .dream import generate_dream

    wanted = {}
    if o.kv_cache not in (None, "none"):
        wanted["kv_cache"] = o.kv_cache
    if o.threshold is not None:
        wanted["threshold"] = o.threshold
    if o.block_length is not None and wanted:
        wanted["block_length"] = o.block_length
    if wanted and o.alg not in (None, "entropy"):  # Fast-dLLM's block decoding ranks by entropy (its neg_entropy)
        raise OptionError(f"alg {o.alg} does not apply with kv_cache/threshold for Dream models (Fast-dLLM's block "
                          "decoding ranks positions by entropy); use alg entropy")
    accepted = inspect.signature(generate_dream).parameters
    missing = [k for k in wanted if k not in accepted]
    if missing:
        raise OptionError(f"{missing[0]} is not available for Dream models in this version (generate_dream decodes "
                          "without a cache or threshold)")
    return wanted


def _dream(model, ids, am, o, generator, progress, stats):
    from .dream import generate_dream

    return generate_dream(model, ids, am, max_new_tokens=o.gen_length, steps=o.steps, temperature=o.temperature,
                          top_p=o.top_p, top_k=o.top_k, alg=o.alg, alg_temp=o.alg_temp, eps=o.eps, generator=generator,
                          **_dream_extensions(o))


def _l2d(model, ids, am, o, generator, progress, stats):
    from .l2d import generate_l2d

    return generate_l2d(model, ids, am, max_new_tokens=o.gen_length, solver=o.solver, ode_steps=o.ode_steps,
                        temperature=o.temperature, top_p=1.0 if o.top_p is None else o.top_p,
                        eos_token_id=model.token_config.eos_token_id, generator=generator, progress=progress,
                        stats=stats)


def _causal(model, ids, am, o, generator, progress, stats):
    from .causal import generate_causal

    return generate_causal(model, ids, am, max_new_tokens=o.gen_length, temperature=o.temperature, top_p=o.top_p,
                           top_k=o.top_k, eos_token_id=model.stop_token_ids, generator=generator)


def _llada2(model, ids, am, o, generator, progress, stats):
    """LLaDA2's block sampler behind the common call. `steps` keeps its one meaning (over the whole
    canvas): each block gets steps * block_length / gen_length of them (the reference's `steps` is per
    block). Its sampler takes no left padding, so a padded batch runs row by row (batch size 1 is
    the reference's own); every row is returned as gen_length tokens, EOS-filled past its end."""
    from .llada2 import generate_llada2

    if o.kv_cache == "dual":
        raise OptionError("kv_cache dual is not available for LLaDA2 models (their finished blocks never change: "
                          "kv_cache prefix caches them exactly)")
    eos = model.config.eos_token_id
    per_block = max(1, o.steps * o.block_length // o.gen_length)
    kwargs = dict(temperature=o.temperature, block_length=o.block_length, steps=per_block, gen_length=o.gen_length,
                  top_p=o.top_p, top_k=o.top_k, eos_early_stop=bool(o.stop_at_eos), threshold=o.threshold,
                  generator=generator, kv_cache=o.kv_cache == "prefix")
    B, P = ids.shape
    out = torch.full((B, P + o.gen_length), eos, dtype=torch.long, device=ids.device)
    out[:, :P] = ids
    padded = am is not None and not bool(am.all())
    groups = [[j] for j in range(B)] if padded else [list(range(B))]
    nfe = 0
    for rows in groups:
        keep = am[rows[0]].bool() if padded else slice(None)
        call_stats = {}
        gen = generate_llada2(model, ids[rows][:, keep], stats=call_stats, **kwargs)
        nfe += call_stats.get("nfe", 0)
        out[rows, P:P + gen.shape[1]] = gen.to(out.device)
    if stats is not None:
        stats["nfe"] = nfe
    return out


SAMPLERS: dict[str, Sampler] = {s.name: s for s in (
    Sampler("generate", frozenset({"gen_length", "block_length", "steps", "temperature", "cfg_scale", "remasking",
                                   "kv_cache", "threshold", "block_causal", "stop_at_eos", "logits_eos_inf",
                                   "confidence_eos_eot_inf"}),
            # ML-GSAI/LLaDA generate.py's example call (steps = gen_length: one token per step); a canvas
            # that 32 does not divide is one block.
            dict(gen_length=128, block_length=lambda v: 32 if v["gen_length"] % 32 == 0 else v["gen_length"], steps=lambda v: v["gen_length"], temperature=0.0, cfg_scale=0.0,
                 remasking="low_confidence", kv_cache="none", block_causal=False, stop_at_eos=False,
                 logits_eos_inf=False, confidence_eos_eot_inf=False, seed=1234),
            _llada, "ML-GSAI/LLaDA generate.py"),
    Sampler("generate_dream", frozenset({"gen_length", "steps", "temperature", "top_p", "top_k", "alg", "alg_temp",
                                         "eps", "kv_cache", "threshold", "block_length"}),
            # DreamLM/Dream eval/eval.py: max_new_tokens 128, diffusion_steps 128, temperature 0, alg entropy,
            # alg_temp 0, no top-p/top-k; eps is diffusion_generate's.
            dict(gen_length=128, steps=lambda v: v["gen_length"], temperature=0.0, alg="entropy", alg_temp=0.0,
                 eps=1e-3, seed=1234),
            _dream, "DreamLM/Dream eval/eval.py"),
    Sampler("generate_llada2", frozenset({"gen_length", "block_length", "steps", "temperature", "top_p", "top_k",
                                          "threshold", "kv_cache", "stop_at_eos"}),
            # inclusionAI LLaDA2.0 `model.generate`: block 32, 32 steps per block, threshold 0.95, greedy,
            # gen_length 2048, eos_early_stop off (a canvas that 32 does not divide is one block, as for LLaDA:
            # the decoding options keep one rule for block_length).
            dict(gen_length=2048, block_length=lambda v: 32 if v["gen_length"] % 32 == 0 else v["gen_length"],
                 steps=lambda v: 32 * -(-v["gen_length"] // v["block_length"]), temperature=0.0, threshold=0.95,
                 kv_cache="none", stop_at_eos=False, seed=1234),
            _llada2, "inclusionAI LLaDA2.0 modeling_llada2_moe.py generate"),
    Sampler("generate_l2d", frozenset({"gen_length", "temperature", "top_p", "solver", "ode_steps"}),
            # solver / ode_steps: the model's L2DConfig (the reference's values when imported).
            dict(gen_length=128, temperature=0.0, seed=1234),
            _l2d, "SakanaAI/L2D"),
    Sampler("generate_causal", frozenset({"gen_length", "temperature", "top_p", "top_k"}),
            dict(gen_length=128, temperature=0.0, seed=1234),
            _causal, "transformers generate (greedy / sampling)"),
)}


def sampler_for(model) -> Sampler:
    """The sampler a model declares (`model.sampler`, the model protocol): the only dispatcher."""
    name = getattr(model, "sampler", None)
    if name not in SAMPLERS:
        raise OptionError(f"a {family_name(model)} model declares no sampler of dlmarch.sampling (found {name!r})")
    return SAMPLERS[name]


__all__ = ["Sampler", "SAMPLERS", "sampler_for", "family_name"]
