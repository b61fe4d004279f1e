"""The `dlmarch` model of EleutherAI's lm-evaluation-harness (`pip install "dlmarch[lmeval]"`).

    python -m dlmarch.integrations.lm_eval --model dlmarch \\
        --model_args pretrained=DIR,gen_length=256,block_length=32,steps=128,kv_cache=dual \\
        --tasks gsm8k [--include_path MY_TASKS/] [any other lm_eval option]

This is `lm_eval` itself with the model registered first: lm-eval 0.4 has no plugin entry points
for models (its registry only knows the models listed in `lm_eval.models`), so a plain `lm_eval
--model dlmarch` cannot find it. From Python, importing this module registers it:
`import dlmarch.integrations.lm_eval; lm_eval.simple_evaluate(model="dlmarch", model_args=...)`.

What each request type does, per model family (`pretrained` is any directory `AutoModel` reads,
with its tokenizer):
- generate_until: LLaDA through `dlmarch.generate` (steps, gen_length, block_length, temperature,
  cfg_scale, remasking, kv_cache, threshold, block_causal, stop_at_eos), L2D through
  `dlmarch.generate_l2d` (max_new_tokens = gen_length, solver, ode_steps). The generated ids are cut
  at the first EOS/EoT, decoded without special tokens and cut at the first `until` string. As in
  ML-GSAI/LLaDA `eval_llada.py`, the length is the model's `gen_length`, not the task's
  `max_gen_toks`. Causal models: not provided (use lm-eval's own `hf` model).
- loglikelihood: LLaDA through the Monte Carlo estimate of `dlmarch.likelihood` (mc_num,
  mc_batch_size = the reference's `batch_size`, cfg_scale), its random masks drawn from a
  generator reseeded with `seed` for every request, so each value is a pure function of (seed,
  context, continuation) whatever the order or caching; `is_greedy` is False unless
  `check_greedy=True` (the reference's `suffix_greedy_prediction`, which it recommends leaving
  off). Causal and L2D models: the exact autoregressive likelihood (L2D: its main path).
- loglikelihood_rolling: not provided (LLaDA's reference does not define it either).

Context/continuation pairs are tokenized as the reference does: trailing spaces of the context move
to the continuation, the continuation's ids are those of context + continuation after the
context's. `batch_size` is the number of prompts per `generate` call (and rows per causal forward);
"auto" means 1.
"""

from __future__ import annotations

import sys

import torch

try:
    import lm_eval.models  # noqa: F401  lm-eval's own models first: it only imports them into an empty registry
    from lm_eval.api.model import LM
    from lm_eval.api.registry import model_registry
except ImportError as e:  # pragma: no cover - the message is the point
    raise ImportError('dlmarch.integrations.lm_eval needs lm-eval: pip install "dlmarch[lmeval]"') from e

from ..likelihood import causal_log_likelihood, llada_log_likelihood, llada_suffix_greedy
from ..prompts import decode, left_pad
from ..dtypes import DTYPES
from ..sampling.cli import load_for_generation
from ..sampling.l2d import generate_l2d
from ..sampling.llada import generate


def _batch_size(value) -> int:
    if value in (None, "auto") or str(value).startswith("auto"):
        return 1
    return int(value)


class DlmarchLM(LM):
    """An lm-eval model over a dlmarch checkpoint: LLaDA, Llama/Qwen2 or L2D (see the module docstring)."""

    def __init__(self, pretrained: str, dtype: str | None = None, device: str | None = None, batch_size=1,
                 max_batch_size=None, seed: int = 1234,
                 # LLaDA sampling (dlmarch.generate); steps defaults to gen_length
                 gen_length: int = 128, block_length: int = 32, steps: int | None = None, temperature: float = 0.0,
                 cfg_scale: float = 0.0, remasking: str = "low_confidence", kv_cache=False, threshold: float | None = None,
                 block_causal: bool = False, stop_at_eos: bool = True,
                 # L2D sampling (dlmarch.generate_l2d); None: the model's config
                 solver: str | None = None, ode_steps: int | None = None,
                 # LLaDA likelihood (dlmarch.likelihood)
                 mc_num: int = 128, mc_batch_size: int = 32, check_greedy: bool = False, **unused):
        super().__init__()
        if unused:
            raise ValueError(f"dlmarch lm-eval model: unknown model_args {sorted(unused)}")
        if dtype is not None and dtype not in DTYPES:
            raise ValueError(f"dlmarch lm-eval model: dtype must be one of {sorted(DTYPES)}, found {dtype!r}")
        if device and str(device).startswith("cuda") and not torch.cuda.is_available():
            device = "cpu"  # lm_eval's --device defaults to cuda; its hf model falls back the same way
        self.model, self.tokenizer = load_for_generation(str(pretrained), dtype, device, allow_l2d=True, allow_causal=True)
        # The model protocol's kind; a masked-diffusion model is sampled and scored as LLaDA is.
        self.kind = {"l2d": "l2d", "masked-diffusion": "llada", "causal": "causal"}[self.model.kind]
        self.batch_size = _batch_size(batch_size)
        self.seed = int(seed)
        self.sampling = dict(steps=steps or gen_length, gen_length=gen_length, block_length=block_length,
                             temperature=temperature, cfg_scale=cfg_scale, remasking=remasking, kv_cache=kv_cache,
                             threshold=threshold, block_causal=block_causal, stop_at_eos=stop_at_eos)
        self.l2d_sampling = dict(max_new_tokens=gen_length, solver=solver, ode_steps=ode_steps, temperature=temperature)
        if mc_num % mc_batch_size:
            raise ValueError(f"mc_num ({mc_num}) must be a multiple of mc_batch_size ({mc_batch_size})")
        self.mc_num, self.mc_batch_size, self.check_greedy = mc_num, mc_batch_size, check_greedy
        cfg = self.model.token_config
        self.eos_ids = self.model.stop_token_ids
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else cfg.eos_token_id
        self.generator = torch.Generator(device=self.model.device).manual_seed(self.seed)
        self.add_special_tokens = True  # off once lm-eval applies the chat template (it holds the specials)

    # --- chat templates (lm_eval --apply_chat_template) -----------------------------------------------
    @property
    def tokenizer_name(self) -> str:
        return getattr(self.tokenizer, "name_or_path", "dlmarch").replace("/", "__")

    def chat_template(self, chat_template: bool | str = False) -> str | None:
        return getattr(self.tokenizer, "chat_template", None)

    def apply_chat_template(self, chat_history: list[dict], add_generation_prompt: bool = True) -> str:
        self.add_special_tokens = False
        return self.tokenizer.apply_chat_template(chat_history, tokenize=False, add_generation_prompt=add_generation_prompt)

    # --- requests ---------------------------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=self.add_special_tokens).input_ids

    def encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """ML-GSAI/LLaDA eval_llada.py's split: the continuation's ids are those after the context's."""
        n_spaces = len(context) - len(context.rstrip())
        if n_spaces:
            context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
        whole = self.encode(context + continuation)
        ctx = self.encode(context)
        return ctx, whole[len(ctx):]

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        pairs = [self.encode_pair(*r.args) for r in requests]
        if self.kind != "llada":
            main = self.model.main if self.kind == "l2d" else self.model
            prefix = self.tokenizer.bos_token_id if self.tokenizer.bos_token_id is not None else self.eos_ids[0]
            pairs = [(ctx or [prefix], cont) for ctx, cont in pairs]
            return causal_log_likelihood(main, pairs, self.batch_size)
        out = []
        for ctx, cont in pairs:
            g = torch.Generator().manual_seed(self.seed)
            ll = llada_log_likelihood(self.model, torch.tensor(ctx, dtype=torch.long), torch.tensor(cont, dtype=torch.long),
                                      self.mc_num, self.mc_batch_size, self.sampling["cfg_scale"], generator=g)
            greedy = self.check_greedy and llada_suffix_greedy(
                self.model, torch.tensor(ctx, dtype=torch.long), torch.tensor(cont, dtype=torch.long), self.sampling["cfg_scale"])
            out.append((ll, greedy))
        return out

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
        raise NotImplementedError("dlmarch lm-eval model: loglikelihood_rolling is not provided")

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        if self.kind == "causal":
            raise NotImplementedError("dlmarch lm-eval model: generate_until needs a LLaDA or L2D model "
                                      "(use lm-eval's hf model for a causal one)")
        out = []
        for start in range(0, len(requests), self.batch_size):
            chunk = requests[start:start + self.batch_size]
            ids, am = left_pad([self.encode(r.args[0]) for r in chunk], self.pad_id)
            if self.kind == "llada":
                x = generate(self.model, ids, attention_mask=am, generator=self.generator, **self.sampling)
            else:
                x = generate_l2d(self.model, ids, attention_mask=am, eos_token_id=self.eos_ids[0],
                                 generator=self.generator, **self.l2d_sampling)
            for r, row in zip(chunk, x[:, ids.shape[1]:].cpu()):
                text = decode(self.tokenizer, row, self.eos_ids)
                until = (r.args[1] or {}).get("until") or []
                for stop in [until] if isinstance(until, str) else until:
                    if stop:
                        text = text.split(stop)[0]
                out.append(text)
        return out


# Registered by name, resolved on first use: the same entry whether this file runs as __main__
# (python -m) or is imported, so registering twice is no conflict.
model_registry.register("dlmarch", target="dlmarch.integrations.lm_eval:DlmarchLM")


def main(argv: list[str] | None = None) -> None:
    """`lm_eval` (its whole command line) with the `dlmarch` model registered."""
    from lm_eval.__main__ import cli_evaluate

    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    cli_evaluate()


if __name__ == "__main__":
    main()
