"""`python -m trainers.evaluate --model DIR --task TASK [--data FILE]`: d1's evaluation protocol.

Defaults are d1's (dllm-reasoning/d1 `eval/eval.py`): block length 32, temperature 0, low-confidence
remasking, steps = gen_length / 2 (this command's protocol, `D1_PROTOCOL`; every other decoding default is
the model's, as for `python -m dlmarch.generate`: the flags are the same `DecodingOptions`), d1's prompt (system prompt and question in one user message, the
chat template's generation prompt, then "<reasoning>"), and d1's verdicts (`trainers/tasks/d1.py`).
`--scorer math-verify` adds a second column beside d1's, never instead of it.

Generations are appended to `OUTPUT.partial-RANK.jsonl` and flushed batch by batch; `--resume`
continues an interrupted run (those files, and what --resume must match: `trainers/eval_records.py`).
Under `torchrun` every process takes every WORLD-th batch and rank 0 merges one OUTPUT identical to a
one-process run (a batch's rows, padding and random draws do not depend on the process). `--samples N`
draws N generations per item and reports pass@k (verdicts and summary: `trainers/eval_scoring.py`).

`python -m trainers.evaluate --task TASK --score FILE [FILE ...]` re-scores generations without a
model: d1's generation files ({"generations": [{"question", "generations", "ground_truth"}]}) or
this command's JSONL. It prints the table and writes per-item verdicts (`trainers/eval_rescore.py`).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import os
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from dlmarch.errors import DlmarchError
from dlmarch.atomic import write_json
from dlmarch.locks import OutputLock, lock_path_of
from dlmarch.prompts import cut_at_eos, encode_prompts, left_pad
from dlmarch.sampling import DecodingOptions, sampler_for
from dlmarch.sampling.cli import pad_id_of, positive_int, sampler_warnings
from dlmarch.sampling.options import add_decoding_arguments, options_from_args

from .eval_records import (append_batch, check_output, check_run, made_from, marker_path, merge, open_partial,
                           read_done, summary_path)
from .eval_rescore import rescore_main
from .eval_scoring import math_verify_scorer, score_record, summarize, table
from .tasks import REASONING_PREFIX, TASKS, get_task

# d1's protocol (dllm-reasoning/d1 eval/eval.py): steps = gen_length / 2; the blocks after every row's EOS
# are skipped (same text through each row's first EOS).
D1_PROTOCOL = {"steps": lambda v: max(1, v["gen_length"] // 2), "stop_at_eos": True}


# ---------------------------------------------------------------------------------------------
# Generation


def _dist():
    """(rank, world) under torchrun (initialising the process group: gloo on CPU, nccl on GPU), else (0, 1)."""
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, 1
    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), dist.get_world_size()


def evaluate(model, tokenizer, task, rows: list[dict], options: DecodingOptions | None = None, *, batch_size: int = 16,
             reasoning_prefix: bool = True, chat_template: bool = True, samples: int = 1, output: Path | None = None,
             resume: bool = False, extra=None, ks: list[int] | None = None, progress: bool = True, stats: dict | None = None,
             attend_padding: bool = False, **decoding) -> tuple[dict, list[dict]]:
    """Generate `samples` answers for every row, score them, summarise. Returns (summary, records).

    `options` (or DecodingOptions fields as keywords: gen_length=..., steps=...) are completed for the
    model by its sampler (`dlmarch.sampling.sampler_for`) under d1's protocol. With `output`, records
    are appended to `output.partial-RANK.jsonl` batch by batch, and rank 0 merges them into `output`
    (sorted by row and sample) once every process is done. `stats` receives what the sampler reports
    (L2D: 'diffusion_evaluations', 'tokens').

    Prompts are left-padded per batch. By default the padding is hidden from attention, so a row's
    generation does not depend on its batch-mates. `attend_padding` passes no attention mask, as d1's
    eval.py / generate.py do (dllm-reasoning/d1): rows then attend to their padding and the scores
    depend on the batch composition; with d1's batch size (its --batch_size 4) and item order this
    replicates d1's generations exactly.
    """
    if decoding:
        options = DecodingOptions.parse({**(options.given() if options else {}), **decoding})
    rank, world = _dist()
    sampler = sampler_for(model)
    options = sampler.resolve(model, options, protocol=D1_PROTOCOL)
    encoded = encode_prompts(tokenizer, [task.messages(r) for r in rows], chat_template,
                             REASONING_PREFIX if reasoning_prefix else "")
    eos_ids = model.stop_token_ids
    if hasattr(task, "end_markers"):  # d1's Sudoku patterns end an answer at LLaDA's end tokens; add this model's
        task = copy.copy(task)
        task.end_markers = tuple(dict.fromkeys([*task.end_markers, *tokenizer.convert_ids_to_tokens(eos_ids)]))
    decode = _Decoder(model, tokenizer, task, sampler, options, rows, encoded, pad_id_of(tokenizer, model), eos_ids,
                      mask_padding=not attend_padding, extra=extra, stats=stats)
    units = [(i, s) for i in range(len(rows)) for s in range(samples)]
    batches = [units[b:b + batch_size] for b in range(0, len(units), batch_size)]
    done = read_done(output, True) if output is not None and resume else {}
    mine = [b for b in range(len(batches)) if b % world == rank and not all(u in done for u in batches[b])]
    with open_partial(output, rank) if output is not None else contextlib.nullcontext() as part:
        t0 = time.time()
        records, n_tokens = _run_batches(decode, batches, _bar(mine, task.name, progress and rank == 0), part)
        seconds = time.time() - t0
    n_effective = sum(r["effective_tokens"] for r in records)
    n_tokens, n_effective, n_gen, seconds = _totals([n_tokens, n_effective, len(records), seconds], world, model.device)
    if output is not None:
        if world > 1:
            torch.distributed.barrier()
        if rank != 0:
            return {}, []
        records = merge(output, units, resume)
    summary = {"task": task.name, **summarize(task, records, ks), "primary": task.primary, "samples": samples,
               "sampler": sampler.name, **{k: v for k, v in options.given().items() if k != "seed"},
               "seconds": round(seconds, 2), "tokens_per_s": n_tokens / max(seconds, 1e-9),
               "effective_tokens_per_s": n_effective / max(seconds, 1e-9),
               "mean_effective_tokens": n_effective / max(n_gen, 1), "processes": world}
    return summary, records


@dataclass
class _Decoder:
    """What every batch of an evaluation is decoded and scored with; called with a batch (its
    (row, sample) pairs) and its number b, it returns the batch's records and the tokens generated."""

    model: object
    tokenizer: object
    task: object
    sampler: object
    options: DecodingOptions
    rows: list[dict]
    encoded: list[list[int]]  # every row's prompt ids
    pad: int
    eos_ids: list[int]
    mask_padding: bool  # hide the prompts' left padding from attention (d1's eval.py does not)
    extra: object = None  # the math-verify scorer, or None
    stats: dict | None = None

    def __call__(self, batch: list[tuple[int, int]], b: int) -> tuple[list[dict], int]:
        device = self.model.device
        ids, am = left_pad([self.encoded[i] for i, _ in batch], self.pad)
        ids, am = ids.to(device), (am.to(device) if self.mask_padding else None)
        # One generator per batch: its draws depend on the batch alone, not on which process runs it.
        gen = torch.Generator(device=device).manual_seed((self.options.seed * 1_000_003 + b) % (1 << 62))
        with torch.no_grad():
            x = self.sampler(self.model, ids, am, self.options, generator=gen, stats=self.stats)
        new = x[:, ids.shape[1]:]
        records = []
        for (i, s), row_ids in zip(batch, new.tolist()):
            kept, effective = cut_at_eos(row_ids, self.eos_ids, keep_eos=True)
            # d1 decodes with special tokens kept; its Sudoku patterns look for <|eot_id|>.
            text = self.tokenizer.decode(kept, skip_special_tokens=False)
            records.append({"index": i, "sample": s, "generation": text, "effective_tokens": effective,
                            "reference": self.rows[i], **score_record(self.task, text, self.rows[i], self.extra)})
        return records, new.numel()


def _bar(batches: list[int], name: str, show: bool):
    """The batch numbers, under a progress bar when `show`."""
    if not show:
        return batches
    from tqdm.auto import tqdm

    return tqdm(batches, desc=f"eval {name}", unit="batch", leave=False)


def _run_batches(decode: _Decoder, batches: list, todo, part) -> tuple[list[dict], int]:
    """The records of the batches numbered in `todo` (appended batch by batch to the partial file
    `part` when there is one), and the tokens generated."""
    records, n_tokens = [], 0
    decode.model.eval()
    for b in todo:
        batch_records, tokens = decode(batches[b], b)
        records += batch_records
        n_tokens += tokens
        if part is not None:
            append_batch(part, batch_records)
    return records, n_tokens


def _totals(counts: list[float], world: int, device) -> list[float]:
    """[tokens, effective tokens, generations, seconds] over every process: the counts summed, the
    seconds of the slowest."""
    totals = torch.tensor(counts, dtype=torch.float64)
    if world > 1:
        import torch.distributed as dist

        t = totals.to(device)
        sums = t[:3].clone()
        dist.all_reduce(sums)
        dist.all_reduce(t[3:], op=dist.ReduceOp.MAX)
        totals = torch.cat([sums, t[3:]]).cpu()
    return totals.tolist()


# ---------------------------------------------------------------------------------------------
# Command line


def main(argv=None) -> int:
    with contextlib.ExitStack() as stack:  # the output's lock, released however the run ends
        return _main(argv, stack)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m trainers.evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", help="model directory (not with --score)")
    p.add_argument("--task", required=True, choices=list(TASKS))
    p.add_argument("--score", nargs="+", metavar="FILE", help="re-score generation files (d1's JSON or ours) without a model")
    p.add_argument("--scorer", choices=["math-verify"], help="a second verdict column beside d1's (gsm8k, math500)")
    p.add_argument("--data", help="the task's rows: JSONL (or d1's Sudoku CSV); required for gsm8k and math500")
    p.add_argument("--num", type=int, default=None, help="first N rows (default: all; generated tasks: 256)")
    p.add_argument("--samples", type=int, default=1, help="generations per item (pass@k; use --temperature > 0)")
    p.add_argument("--pass-k", default=None, help="comma-separated k of pass@k (default with --samples N: 1 and N)")
    p.add_argument("--batch-size", default="16", help="prompts per sampler call (default 16)")
    p.add_argument("--attend-padding", action="store_true",
                   help="no attention mask over the prompts' left padding, as d1's eval.py (scores then depend on the "
                        "batch; use d1's --batch-size 4 to replicate it); default: padding hidden")
    p.add_argument("--no-reasoning-prefix", action="store_true")
    p.add_argument("--no-system-prompt", action="store_true")
    p.add_argument("--device", default=None)
    p.add_argument("--resume", action="store_true", help="continue an interrupted run into the same --output")
    p.add_argument("--overwrite", action="store_true", help="replace an --output this command wrote (never another file)")
    p.add_argument("--output", help="JSONL of generations (default: eval-MODEL-TASK.jsonl in the current directory; "
                                    "with --score: FILE.verdicts.jsonl); the summary goes beside it")
    add_decoding_arguments(p, "d1's protocol: steps = gen_length / 2 unless given; --seed also seeds generated "
                              "tasks. The rest come from the model (config.json's `decoding` entry, then its "
                              "sampler's reference defaults); an option its sampler does not take is refused.")
    return p


def _main(argv, stack: contextlib.ExitStack) -> int:
    args = _parser().parse_args(argv)
    try:
        options, seed, ks = _checked_numbers(args)
        task = get_task(args.task, **({"with_system_prompt": False} if args.no_system_prompt else {}))
        if args.no_system_prompt:
            task.system_prompt = None
        extra = math_verify_scorer(task) if args.scorer == "math-verify" else None
        if args.score:
            return rescore_main(task, args, extra, ks)
        finished = _generate_main(args, stack, task, options, seed, ks, extra)
    except (DlmarchError, ValueError, OSError) as e:
        print(f"error: {str(e).splitlines()[0]}", file=sys.stderr)
        return 2
    if finished is None:  # not rank 0: rank 0 merges, writes and reports
        return 0
    summary, out = finished
    print(table(task, summary))
    print(f"{summary['tokens_per_s']:.0f} tokens/s ({summary['effective_tokens_per_s']:.0f} effective, "
          f"{summary['mean_effective_tokens']:.1f} per generation); generations: {out}")
    return 0


def _checked_numbers(args) -> tuple[DecodingOptions, int, list[int] | None]:
    """The decoding options, the seed (1234 unless --seed) and pass@k's k; --batch-size and --num checked."""
    options = options_from_args(args)
    args.batch_size = positive_int("batch_size", args.batch_size)
    if args.num is not None and args.num < 1:
        raise DlmarchError(f"--num must be at least 1, found {args.num}")
    seed = 1234 if options.seed is None else options.seed
    try:
        ks = [int(k) for k in args.pass_k.split(",")] if args.pass_k else None
    except ValueError:
        raise DlmarchError(f"--pass-k must be comma-separated integers (1,8), found {args.pass_k!r}") from None
    if ks and min(ks) < 1:
        raise ValueError(f"--pass-k: k must be positive, found {args.pass_k}")
    return options, seed, ks


def _generate_main(args, stack: contextlib.ExitStack, task, options, seed: int, ks, extra) -> tuple[dict, Path] | None:
    """The generation mode: the rows read, OUT checked and locked (--resume only of the same run),
    the model loaded, `evaluate` run; rank 0 writes the summary and returns (summary, OUT), the
    other processes None."""
    if not args.model:
        raise ValueError("--model is required (or --score FILE to re-score generations)")
    if args.samples < 1 or (ks and max(ks) > args.samples):
        raise ValueError(f"--pass-k {args.pass_k} needs --samples >= {max(ks or [1])}, found {args.samples}")
    if args.samples > 1 and not options.temperature:
        print("warning: --samples > 1 at temperature 0 draws the same generation every time", file=sys.stderr)
    rows = task.load(args.data) if args.data else task.generate(args.num or 256, seed)
    rows = rows[: args.num] if args.num else rows
    out = Path(args.output) if args.output else Path(f"eval-{Path(args.model).resolve().name}-{args.task}.jsonl")
    run = _run_record(args, task, options, seed, rows)
    rank, world = _dist()
    check_output(out, {"--model": args.model, "--data": args.data}, args, "generations")
    if rank == 0:  # one run owns an output (two would interleave their generations)
        stack.enter_context(OutputLock(out, path=lock_path_of(out)))
    check_run(out, run, args, rank)
    if world > 1:
        torch.distributed.barrier()  # every process has checked before any writes
    device = args.device or (f"cuda:{os.environ.get('LOCAL_RANK', 0)}" if torch.cuda.is_available() else "cpu")
    from dlmarch.sampling.cli import load_for_generation

    model, tok = load_for_generation(args.model, None, device)
    resolved = sampler_for(model).resolve(model, replace(options, seed=seed), protocol=D1_PROTOCOL)
    if rank == 0:
        for w in sampler_warnings(model.decoding, resolved.block_length, resolved.block_causal):
            print(w, file=sys.stderr)
    summary, _ = evaluate(model, tok, task, rows, resolved, batch_size=args.batch_size,
                          reasoning_prefix=not args.no_reasoning_prefix, samples=args.samples, output=out,
                          resume=args.resume, extra=extra, ks=ks, attend_padding=args.attend_padding)
    if rank != 0:
        return None
    summary.update(model=str(args.model), generations=str(out), made_from=run)
    write_json(summary_path(out), summary)
    marker_path(out).unlink(missing_ok=True)
    return summary, out


def _run_record(args, task, options: DecodingOptions, seed: int, rows: list[dict]) -> dict:
    """What this run's generations are made from (`eval_records.RUN_KEYS`): the command's settings,
    the decoding options given, the model's fingerprint and the rows' digest."""
    run = dict(task=args.task, rows=len(rows), samples=args.samples, batch_size=args.batch_size, seed=seed,
               reasoning_prefix=not args.no_reasoning_prefix, system_prompt=task.system_prompt,
               **{k: v for k, v in options.given().items() if k != "seed"},
               **({"attend_padding": True} if args.attend_padding else {}))
    run.update(made_from(args.model, rows))
    return run


if __name__ == "__main__":
    sys.exit(main())
