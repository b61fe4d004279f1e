"""The `dlmarch` model of EleutherAI's lm-evaluation-harness (`pip install "dlmarch[lmeval]"`).

    python -m dlmarch.integrations.lm_eval --model dlmarch \\
        --model_args pretrained=DIR,gen_length=256,block_length=32,steps=128,kv_cache=dual \\
        --tasks gsm8k --batch_size 8 [--include_path MY_TASKS/] [any other lm_eval option]
    torchrun --nproc_per_node N -m dlmarch.integrations.lm_eval ...   # data parallel: each rank its share

This is `lm_eval` itself with the model registered first: lm-eval 0.4 has no plugin entry points
for models (its registry only knows the models listed in `lm_eval.models`), so a plain `lm_eval
--model dlmarch` cannot find it. From Python, importing this module registers it:
`import dlmarch.integrations.lm_eval; lm_eval.simple_evaluate(model="dlmarch", model_args=...)`.

`pretrained` is any directory `dlmarch.AutoModel` reads, with its tokenizer; the model's family
decides everything below (`dlmarch.sampling.sampler_for`, `dlmarch.likelihood.estimator_for`).
model_args are the decoding options of `dlmarch.sampling.DecodingOptions` (the flags of `python -m
dlmarch.generate`, same names, meanings, defaults and one-line refusals) and:
- `batch_size` (lm-eval's --batch_size): the Monte Carlo mini-batch of the diffusion estimators, as in
  ML-GSAI/LLaDA `eval_llada.py` (whose commands use 8) and DreamLM/Dream `eval/eval.py`; the rows
  per forward of the exact causal likelihood. "auto" means 1.
- `gen_batch_size`: prompts per sampler call in generate_until (default 1; requests are sorted by
  length so that a batch pads little).
- `mc_num` (128; a multiple of batch_size), `check_greedy` (LLaDA's suffix_greedy_prediction, off as
  the reference recommends), `sampling_eps` (Dream, 1e-3), `add_bos_token` (Dream's harness option:
  the BOS text before every context), `dtype`, `device`.

Per family:
- generate_until: the model's sampler with its options; LLaDA: steps = gen_length by default, and the
  length is `gen_length`, not the task's `max_gen_toks`, as eval_llada.py; Dream: Dream's harness
  defaults (gen_length = max_new_tokens 128, steps 128, temperature 0, alg entropy, alg_temp 0); L2D,
  causal models: their samplers. The generated ids are cut at the first EOS/EoT, decoded without
  special tokens and cut at the first `until` string. Every batch starts from a generator seeded
  with `seed`.
- loglikelihood: LLaDA's Monte Carlo ELBO (`dlmarch.likelihood.llada_log_likelihood`), Dream's
  (`dream_log_likelihood`: continuation + EOS, shifted logits), each request computed after
  reseeding a generator with `seed`, so that a value is a pure function of (seed, context,
  continuation) whatever the order, batching or rank; causal and L2D models: the exact
  autoregressive likelihood (L2D: its main path), batched by length. is_greedy is exact for causal
  models, LLaDA's suffix_greedy_prediction with check_greedy, and False for Dream (as its harness).
- loglikelihood_rolling: causal and L2D models, exact (lm-eval's rolling windows over
  max_position_embeddings). Not for the diffusion models: their Monte Carlo ELBO is a bound on a
  sequence's likelihood, not a perplexity comparable with the tasks' (neither reference defines it).

Under torchrun (or accelerate launch: both set WORLD_SIZE/RANK/LOCAL_RANK) the model joins the
process group (gloo on CPU, nccl on GPU, as lm-eval's hf model through accelerate), lm-eval gives
each rank its share of every task and gathers the results on rank 0; progress bars only on rank 0.

Context/continuation pairs are tokenized as the references do: trailing spaces of the context move
to the continuation, the continuation's ids are those of context + continuation after the
context's.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

try:
    import lm_eval.models  # noqa: F401  lm-eval's own models first: it only imports them into an empty registry
    from lm_eval.api.model import LM
    from lm_eval.api.registry import model_registry
    from lm_eval.models.utils import Collator
except ImportError as e:  # pragma: no cover - the message is the point
    raise ImportError('dlmarch.integrations.lm_eval needs lm-eval: pip install "dlmarch[lmeval]"') from e

from ..dtypes import DTYPES
from ..errors import DlmarchError
from ..likelihood import (causal_log_likelihood, causal_rolling_log_likelihood, dream_log_likelihood,
                          llada_log_likelihood, llada_suffix_greedy)
from ..prompts import decode, left_pad
from ..sampling import DecodingOptions, OptionError, sampler_for
from ..sampling.dispatch import family_name
from ..sampling.cli import load_for_generation, pad_id_of, positive_int

# The options of this model that are not decoding options, with their defaults.
EVAL_OPTIONS = dict(dtype=None, device=None, batch_size=1, max_batch_size=None, gen_batch_size=1, mc_num=128,
                    check_greedy=False, sampling_eps=1e-3, add_bos_token=False)
# lm-eval's generate_until protocol for LLaDA (ML-GSAI/LLaDA eval_llada.py): skip the blocks after EOS.
LM_EVAL_PROTOCOL = {"stop_at_eos": True}


def _batch_size(value) -> int:
    if value in (None, "auto") or str(value).startswith("auto"):
        return 1
    return positive_int("batch_size", value)


def _bool(name, value) -> bool:
    if isinstance(value, bool):
        return value
    raise OptionError(f"{name} must be true or false, found {value!r}")


def parse_model_args(args: dict) -> tuple[str, dict, DecodingOptions]:
    """(pretrained, this model's options, decoding options) of lm-eval's model_args; one-line
    OptionError/DlmarchError for anything that cannot work, before the model is read."""
    args = dict(args)
    pretrained = args.pop("pretrained", None)
    if pretrained is None:
        raise OptionError("pretrained is required: the model directory")
    if not Path(str(pretrained)).is_dir():
        raise DlmarchError(f"pretrained {pretrained}: not a directory")
    own = {k: args.pop(k, v) for k, v in EVAL_OPTIONS.items()}
    if "mc_batch_size" in args:
        raise OptionError("mc_batch_size is lm-eval's batch_size (the Monte Carlo mini-batch, as the references)")
    options = DecodingOptions.parse(args)  # unknown names refused here
    if own["dtype"] is not None and own["dtype"] not in DTYPES:
        raise OptionError(f"dtype must be one of {', '.join(DTYPES)}, found {own['dtype']!r}")
    own["batch_size"] = _batch_size(own["batch_size"])
    own["gen_batch_size"] = positive_int("gen_batch_size", own["gen_batch_size"])
    own["mc_num"] = positive_int("mc_num", own["mc_num"])
    if own["mc_num"] % own["batch_size"]:
        raise OptionError(f"mc_num ({own['mc_num']}) must be a multiple of batch_size ({own['batch_size']}), "
                          "the Monte Carlo mini-batch")
    own["check_greedy"] = _bool("check_greedy", own["check_greedy"])
    own["add_bos_token"] = _bool("add_bos_token", own["add_bos_token"])
    eps = own["sampling_eps"]
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 < eps < 1:
        raise OptionError(f"sampling_eps must be in (0, 1), found {eps!r}")
    return str(pretrained), own, options


def _distributed(device: str | None) -> tuple[int, int, str | None]:
    """(rank, world, device) under torchrun / accelerate launch (joining the process group), else (0, 1, device)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, 1, device
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    if torch.cuda.is_available():
        device = f"cuda:{os.environ.get('LOCAL_RANK', 0)}"
    return dist.get_rank(), dist.get_world_size(), device


class DlmarchLM(LM):
    """An lm-eval model over a dlmarch checkpoint of any family (see the module docstring)."""

    def __init__(self, pretrained: str, **model_args):
        super().__init__()
        pretrained, own, options = parse_model_args({"pretrained": pretrained, **model_args})
        device = own["device"]
        if device and str(device).startswith("cuda") and not torch.cuda.is_available():
            device = "cpu"  # lm_eval's --device defaults to cuda; its hf model falls back the same way
        self._rank, self._world_size, device = _distributed(device)
        self.model, self.tokenizer = load_for_generation(pretrained, own["dtype"], device)
        self._device = self.model.device
        self.sampler = sampler_for(self.model)
        self.options = self.sampler.resolve(self.model, options, protocol=LM_EVAL_PROTOCOL)
        self.seed = self.options.seed
        self.batch_size, self.gen_batch_size = own["batch_size"], own["gen_batch_size"]
        self.mc_num, self.check_greedy = own["mc_num"], own["check_greedy"]
        self.sampling_eps, self.add_bos_token = own["sampling_eps"], own["add_bos_token"]
        if self.check_greedy and self.model.likelihood != "llada":
            raise OptionError(f"check_greedy is LLaDA's suffix_greedy_prediction; a {family_name(self.model)} model "
                              "reports exact greediness (causal) or none (Dream, as its harness)")
        if self.add_bos_token and self.tokenizer.bos_token is None:
            raise OptionError("add_bos_token: the tokenizer has no BOS token")
        self.eos_ids = self.model.stop_token_ids
        self.pad_id = pad_id_of(self.tokenizer, self.model)
        self.add_special_tokens = True  # off once lm-eval applies the chat template (it holds the specials)

    # --- data parallel (lm-eval's hooks; evaluate() shares requests by rank and gathers) ----------------
    def all_gather(self, tensor):
        if self.world_size <= 1:
            return tensor
        import torch.distributed as dist

        t = tensor.reshape(1) if tensor.dim() == 0 else tensor
        parts = [torch.zeros_like(t) for _ in range(self.world_size)]
        dist.all_gather(parts, t)
        return torch.cat(parts)

    def gather_object(self, obj, dst=0):
        if self.world_size <= 1:
            return [obj]
        result = [None] * self.world_size if self.rank == dst else None
        torch.distributed.gather_object(obj=obj, object_gather_list=result, dst=dst)
        return result

    def barrier(self):
        if self.world_size > 1:
            torch.distributed.barrier()

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
        """ML-GSAI/LLaDA eval_llada.py's split: the continuation's ids are those after the context's.
        Dream (DreamLM/Dream eval/eval.py `_encode_pair`): the BOS text first with add_bos_token, and
        the EOS id after the continuation."""
        if self.add_bos_token:
            context = self.tokenizer.bos_token + context
        n_spaces = len(context) - len(context.rstrip())
        if n_spaces:
            context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
        whole = self.encode(context + continuation)
        if self.model.likelihood == "dream":
            whole = whole + [self.tokenizer.eos_token_id if self.tokenizer.eos_token_id is not None
                             else self.model.config.eos_token_id]
        ctx = self.encode(context)
        return ctx, whole[len(ctx):]

    def _progress(self, total: int, desc: str, disable_tqdm: bool):
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, disable=disable_tqdm or self.rank != 0)

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        pairs = [self.encode_pair(*r.args) for r in requests]
        bar = self._progress(len(pairs), "loglikelihood", disable_tqdm)
        if self.model.likelihood == "causal":
            main = self.model.main if self.model.kind == "l2d" else self.model
            prefix = self.tokenizer.bos_token_id if self.tokenizer.bos_token_id is not None else self.eos_ids[0]
            pairs = [(ctx or [prefix], cont) for ctx, cont in pairs]
            # longest first, so that a batch pads little (lm-eval's Collator keeps the original order back)
            collator = Collator(pairs, sort_fn=lambda p: (-len(p[0]) - len(p[1]), tuple(p[0] + p[1])))
            out = []
            for chunk in collator.get_batched(n=self.batch_size):
                out.extend(causal_log_likelihood(main, list(chunk), len(chunk)))
                bar.update(len(chunk))
            bar.close()
            return collator.get_original(out)
        out = []
        for ctx, cont in pairs:
            ctx_t, cont_t = torch.tensor(ctx, dtype=torch.long), torch.tensor(cont, dtype=torch.long)
            g = torch.Generator().manual_seed(self.seed)  # every request from the same seed: order-free values
            if self.model.likelihood == "dream":
                ll = dream_log_likelihood(self.model, ctx_t, cont_t, self.mc_num, self.batch_size, self.sampling_eps,
                                          generator=g)
                greedy = False  # the harness's is_target_greedy_dec (not computed)
            else:
                cfg_scale = self.options.cfg_scale or 0.0  # None: a sampler without CFG (LLaDA2)
                ll = llada_log_likelihood(self.model, ctx_t, cont_t, self.mc_num, self.batch_size, cfg_scale, generator=g)
                greedy = self.check_greedy and llada_suffix_greedy(self.model, ctx_t, cont_t, cfg_scale)
            out.append((ll, greedy))
            bar.update(1)
        bar.close()
        return out

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        if self.model.likelihood != "causal":
            raise NotImplementedError(
                f"dlmarch lm-eval model: loglikelihood_rolling is exact for causal and L2D models only; a "
                f"{family_name(self.model)} model's Monte Carlo ELBO is a bound, not a perplexity")
        main = self.model.main if self.model.kind == "l2d" else self.model
        prefix = self.tokenizer.bos_token_id if self.tokenizer.bos_token_id is not None else self.eos_ids[0]
        bar = self._progress(len(requests), "loglikelihood_rolling", disable_tqdm)
        out = []
        for r in requests:
            out.append(causal_rolling_log_likelihood(main, self.encode(r.args[0]), prefix,
                                                     main.config.max_position_embeddings, self.batch_size))
            bar.update(1)
        bar.close()
        return out

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        encoded = [self.encode(r.args[0]) for r in requests]
        # longest prompt first (lm-eval's Collator restores the order)
        collator = Collator(list(zip(encoded, requests)), sort_fn=lambda e: (-len(e[0]), tuple(e[0])))
        bar = self._progress(len(requests), "generate_until", disable_tqdm)
        out = []
        for chunk in collator.get_batched(n=self.gen_batch_size):
            ids, am = left_pad([e for e, _ in chunk], self.pad_id)
            gen = torch.Generator(device=self.model.device).manual_seed(self.seed)  # the batch's own draws
            with torch.no_grad():
                x = self.sampler(self.model, ids, am, self.options, generator=gen)
            for (_, r), row in zip(chunk, x[:, ids.shape[1]:].cpu()):
                text = decode(self.tokenizer, row, self.eos_ids)
                until = (r.args[1] or {}).get("until") or []
                for stop in [until] if isinstance(until, str) else until:
                    if stop:
                        text = text.split(stop)[0]
                out.append(text)
            bar.update(len(chunk))
        bar.close()
        return collator.get_original(out)


# Registered by name, resolved on first use: the same entry whether this file runs as __main__
# (python -m) or is imported, so registering twice is no conflict.
model_registry.register("dlmarch", target="dlmarch.integrations.lm_eval:DlmarchLM")


def main(argv: list[str] | None = None) -> None:
    """`lm_eval` (its whole command line) with the `dlmarch` model registered."""
    from lm_eval.__main__ import cli_evaluate

    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    try:
        cli_evaluate()
    except DlmarchError as e:  # bad model_args: the one line every CLI prints, no traceback
        print(f"error: {str(e).splitlines()[0]}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
