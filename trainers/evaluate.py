"""`python -m trainers.evaluate --model DIR --task TASK [--data FILE]`: d1's evaluation protocol.

Defaults are d1's (dllm-reasoning/d1 `eval/eval.py`): block length 32, temperature 0, low-confidence
remasking, steps = gen_length / 2 (this command's protocol, `D1_PROTOCOL`; every other decoding default is
the model's, as for `python -m dlmarch.generate`: the flags are the same `DecodingOptions`), d1's prompt (system prompt and question in one user message, the
chat template's generation prompt, then "<reasoning>"), and d1's verdicts (`trainers/tasks/d1.py`).
`--scorer math-verify` adds a second column beside d1's, never instead of it.

Generations are appended to `OUTPUT.partial-RANK.jsonl` and flushed batch by batch; `--resume`
continues an interrupted run. Under `torchrun` every process takes every WORLD-th batch and rank 0
merges one OUTPUT identical to a one-process run (a batch's rows, padding and random draws do not
depend on the process). `--samples N` draws N generations per item and reports pass@k.

`python -m trainers.evaluate --task TASK --score FILE [FILE ...]` re-scores generations without a
model: d1's generation files ({"generations": [{"question", "generations", "ground_truth"}]}) or
this command's JSONL. It prints the table and writes per-item verdicts.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import hashlib
import json
import os
import sys
import time
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

import torch

from dlmarch.config import jsonl_rows, read_json, read_text
from dlmarch.errors import DlmarchError
from dlmarch.atomic import atomic_file, write_json
from dlmarch.locks import OutputLock, lock_path_of
from dlmarch.outputs import check_file_output
from dlmarch.prompts import cut_at_eos, encode_prompts, left_pad
from dlmarch.sampling import DecodingOptions, sampler_for
from dlmarch.sampling.cli import pad_id_of, positive_int, sampler_warnings
from dlmarch.sampling.options import add_decoding_arguments, options_from_args

from .tasks import REASONING_PREFIX, TASKS, get_task, pass_at_k
from .tasks.common import is_int, wrong

RUN_KEYS = ("model_fingerprint", "data_sha256", "task", "rows", "samples", "batch_size", "seed", "reasoning_prefix",
            "system_prompt", "attend_padding", *(n for n in DecodingOptions.names() if n != "seed"))


# ---------------------------------------------------------------------------------------------
# Scoring


def math_verify_scorer(task):
    """A function (generation, row) -> bool from the math-verify package (Hugging Face), for the
    tasks with a textual gold answer (GSM8K, MATH-500)."""
    if task.name not in ("gsm8k", "math500"):
        raise DlmarchError(f"--scorer math-verify applies to gsm8k and math500, not {task.name}")
    try:
        from math_verify import parse, verify
    except ImportError as e:
        raise DlmarchError("--scorer math-verify needs the math-verify package: pip install 'dlmarch[math-verify]'") from e

    def score(generation: str, row: dict) -> bool:
        gold = task.reference_text(row)
        if gold is None:
            return False
        try:
            return bool(verify(parse("$" + gold + "$"), parse(generation)))
        except Exception:  # noqa: BLE001 - a scorer never ends a run; an unparsable answer is wrong
            return False

    return score


def score_record(task, generation: str, row: dict, extra=None) -> dict:
    """d1's verdict on one generation (and the extra scorer's). A scorer error is a wrong answer
    with its reason, never an exception: one adversarial generation must not lose a run."""
    try:
        verdict = task.score(generation, row)
    except Exception as e:  # noqa: BLE001
        verdict = {"correct": False, "reason": f"scorer error: {type(e).__name__}"}
        if task.name == "sudoku":
            verdict.update(correct_cells=0, empty_cells=str(row.get("puzzle", "")).count("0"))
    if extra is not None:
        verdict["math_verify"] = extra(generation, row)
    return verdict


def summarize(task, records: list[dict], ks: list[int] | None = None) -> dict:
    """The task's metrics over every generation, the math-verify column, and pass@k over items
    (Chen et al. 2021's unbiased estimator; an item's n is its number of samples)."""
    out = task.summarize(records)
    if records and "math_verify" in records[0]:
        out["math_verify_accuracy"] = sum(bool(r["math_verify"]) for r in records) / len(records)
    by_item = defaultdict(list)
    for r in records:
        by_item[r.get("index", len(by_item))].append(bool(r["correct"]))
    n = min((len(v) for v in by_item.values()), default=0)
    if n > 1 or ks:
        for k in ks or [1, n]:
            if k <= n:
                out[f"pass@{k}"] = sum(pass_at_k(len(v), sum(v), k) for v in by_item.values()) / len(by_item)
    return out


def table(task, summary: dict) -> str:
    cols = [task.primary] + [k for k in summary if k.startswith("math_verify") or k.startswith("pass@")]
    head = f"| task | n | {' | '.join(cols)} |"
    row = f"| {task.name} | {summary['n']} | " + " | ".join(f"{100 * summary[c]:.2f}" for c in cols) + " |"
    return "\n".join([head, "|" + "---|" * (len(cols) + 2), row])


def read_generations(task, path: Path) -> list[dict]:
    """(generation, row) records of a d1 generation file or of this command's JSONL. Every value a
    record needs is checked where it is read, so a bad file is one line naming it (and the item or
    line), never a traceback or a silently wrong score."""
    text = read_text(path, "generation file")
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        data = None  # not one JSON document: JSONL, read line by line below
    except RecursionError:
        raise DlmarchError(f"{path}: invalid JSON (nested too deeply)") from None
    if isinstance(data, dict) and "generation" not in data:  # one JSON document: d1's file, not our JSONL
        if not isinstance(data.get("generations"), list):
            raise DlmarchError(f"{path}: a d1 generation file needs a \"generations\" list")
        out = []
        for i, item in enumerate(data["generations"]):
            where = f"{path}: generations[{i}]"
            if not isinstance(item, dict) or "generations" not in item:
                raise DlmarchError(f"{where}: expected {{question, generations, ground_truth}}")
            for key in ("generations", "question"):
                if key in item and not isinstance(item[key], str):
                    raise DlmarchError(f"{where}: {wrong(key, 'a string', item[key])}")
            try:
                reference = task.from_d1(item)
            except DlmarchError as e:
                raise DlmarchError(f"{where}: {e}") from None
            problem = task.check_row(reference)
            if problem:
                raise DlmarchError(f"{where}: {problem}")
            out.append({"index": i, "generation": item["generations"], "reference": reference,
                        "question": item.get("question", "")})
        return out
    out = []
    for n, rec, error in jsonl_rows(path):
        if error:
            raise DlmarchError(error)
        if not isinstance(rec, dict) or "generation" not in rec or "reference" not in rec:
            raise DlmarchError(f"{path}: line {n}: expected a record with \"generation\" and \"reference\"")
        problem = _record_problem(task, rec)
        if problem:
            raise DlmarchError(f"{path}: line {n}: {problem}")
        out.append(rec)
    if not out:
        raise DlmarchError(f"{path}: no generations")
    return out


def _record_problem(task, rec: dict) -> str | None:
    """What is wrong with one record of our JSONL (index, sample, generation, reference), or None."""
    for key in ("index", "sample"):
        if key in rec and not (is_int(rec[key]) and rec[key] >= 0):
            return wrong(key, "a non-negative integer", rec[key])
    if not isinstance(rec["generation"], str):
        return wrong("generation", "a string", rec["generation"])
    if not isinstance(rec["reference"], dict):
        return wrong("reference", "an object (the task's row)", rec["reference"])
    problem = task.check_row(rec["reference"])
    return f"reference: {problem}" if problem else None


def rescore(task, paths: list[Path], extra=None, ks=None) -> tuple[dict, list[dict]]:
    records = []
    for path in paths:
        offset = len({r.get("index") for r in records})
        for rec in read_generations(task, path):
            idx = rec.get("index", 0) + (offset if "sample" not in rec else 0)
            verdict = score_record(task, rec["generation"], rec["reference"], extra)
            records.append({"index": idx, "sample": rec.get("sample", 0), "source": str(path),
                            **({"question": rec["question"]} if "question" in rec else {}),
                            "generation": rec["generation"], "reference": rec["reference"], **verdict})
    return summarize(task, records, ks), records


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


def _partials(out: Path) -> list[Path]:
    return sorted(out.parent.glob(out.name + ".partial-*.jsonl"))


def _read_lines(path: Path) -> list[dict]:
    """The records of one of our JSONL files. A last line without its newline is what a kill leaves
    (possibly cut inside a UTF-8 character): dropped, and said so, so that its batch is generated
    again. Any other line that is not a JSON record is damage we did not make: one line naming it."""
    data = path.read_bytes()
    lines = data.split(b"\n")
    if lines and lines[-1].strip():
        print(f"{path}: dropped a torn last line ({len(lines[-1])} bytes, left by an interrupted run); "
              f"its batch is generated again", file=sys.stderr)
    out = []
    for n, raw in enumerate(lines[:-1], 1):
        if not raw.strip():
            continue
        try:
            rec = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise DlmarchError(f"{path}: line {n} is not a JSON record ({type(e).__name__}); "
                               f"move the file away to start over") from None
        if not isinstance(rec, dict) or not isinstance(rec.get("index"), int) or not isinstance(rec.get("sample"), int):
            raise DlmarchError(f"{path}: line {n} is not a generation record (index, sample)")
        out.append(rec)
    return out


def _read_done(out: Path, with_final: bool) -> dict[tuple[int, int], dict]:
    """Finished records of a run: every complete line of its partial files (a line cut by a kill is
    dropped, and its batch redone), and with `with_final` those of a merged output already there."""
    done = {}
    for p in ([out] if with_final and out.exists() else []) + _partials(out):
        for rec in _read_lines(p):
            done.setdefault((rec["index"], rec["sample"]), rec)
    return done


def _open_partial(out: Path, rank: int):
    """This process's partial file, opened for appending, a line cut by a kill removed first."""
    path = out.parent / f"{out.name}.partial-{rank}.jsonl"
    if path.exists():
        data = path.read_bytes()
        if data and not data.endswith(b"\n"):
            with open(path, "r+b") as f:
                f.truncate(data.rfind(b"\n") + 1)
    return open(path, "a")


# d1's protocol (dllm-reasoning/d1 eval/eval.py): steps = gen_length / 2; the blocks after every row's EOS
# are skipped (same text through each row's first EOS).
D1_PROTOCOL = {"steps": lambda v: max(1, v["gen_length"] // 2), "stop_at_eos": True}


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
    gen_length, block_length, steps, seed = options.gen_length, options.block_length, options.steps, options.seed
    prefix = REASONING_PREFIX if reasoning_prefix else ""
    prompts = [task.messages(r) for r in rows]
    encoded = encode_prompts(tokenizer, prompts, chat_template, prefix)
    pad = pad_id_of(tokenizer, model)
    eos_ids = model.stop_token_ids
    if hasattr(task, "end_markers"):  # d1's Sudoku patterns end an answer at LLaDA's end tokens; add this model's
        task = copy.copy(task)
        task.end_markers = tuple(dict.fromkeys([*task.end_markers, *tokenizer.convert_ids_to_tokens(eos_ids)]))
    units = [(i, s) for i in range(len(rows)) for s in range(samples)]
    batches = [units[b:b + batch_size] for b in range(0, len(units), batch_size)]
    done = _read_done(output, True) if output is not None and resume else {}
    mine = [b for b in range(len(batches)) if b % world == rank and not all(u in done for u in batches[b])]
    part = _open_partial(output, rank) if output is not None else None
    records = []
    t0, n_tokens, n_effective, n_gen = time.time(), 0, 0, 0
    iterator = mine
    if progress and rank == 0:
        from tqdm.auto import tqdm

        iterator = tqdm(mine, desc=f"eval {task.name}", unit="batch", leave=False)
    model.eval()
    for b in iterator:
        batch = batches[b]
        ids, am = left_pad([encoded[i] for i, _ in batch], pad)
        ids, am = ids.to(model.device), (None if attend_padding else am.to(model.device))
        # One generator per batch: its draws depend on the batch alone, not on which process runs it.
        gen = torch.Generator(device=model.device).manual_seed((seed * 1_000_003 + b) % (1 << 62))
        with torch.no_grad():
            x = sampler(model, ids, am, options, generator=gen, stats=stats)
        lines = []
        for (i, s), row_ids in zip(batch, x[:, ids.shape[1]:].tolist()):
            kept, effective = cut_at_eos(row_ids, eos_ids, keep_eos=True)
            # d1 decodes with special tokens kept; its Sudoku patterns look for <|eot_id|>.
            text = tokenizer.decode(kept, skip_special_tokens=False)
            n_tokens, n_effective, n_gen = n_tokens + len(row_ids), n_effective + effective, n_gen + 1
            rec = {"index": i, "sample": s, "generation": text, "effective_tokens": effective, "reference": rows[i],
                   **score_record(task, text, rows[i], extra)}
            lines.append(json.dumps(rec) + "\n")
            records.append(rec)
        if part is not None:
            part.write("".join(lines))  # one write per batch: a kill loses at most this batch
            part.flush()
            os.fsync(part.fileno())
    if part is not None:
        part.close()
    seconds = time.time() - t0
    totals = torch.tensor([n_tokens, n_effective, n_gen, seconds], dtype=torch.float64)
    if world > 1:
        import torch.distributed as dist

        t = totals.to(model.device)
        sums = t[:3].clone()
        dist.all_reduce(sums)
        dist.all_reduce(t[3:], op=dist.ReduceOp.MAX)
        totals = torch.cat([sums, t[3:]]).cpu()
    if output is not None:
        if world > 1:
            torch.distributed.barrier()
        if rank != 0:
            return {}, []
        merged = _read_done(output, resume)
        lost = [u for u in units if u not in merged]
        if lost:
            raise DlmarchError(f"{output}: {len(lost)} generations missing after every process finished, first {lost[0]}")
        records = [merged[u] for u in units]  # every (row, sample), in order
        with atomic_file(output) as f:
            f.write("".join(json.dumps(r) + "\n" for r in records))
        for p in _partials(output):
            p.unlink()
    n_tokens, n_effective, n_gen, seconds = totals.tolist()
    summary = {"task": task.name, **summarize(task, records, ks), "primary": task.primary, "samples": samples,
               "sampler": sampler.name, **{k: v for k, v in options.given().items() if k != "seed"},
               "seconds": round(seconds, 2), "tokens_per_s": n_tokens / max(seconds, 1e-9),
               "effective_tokens_per_s": n_effective / max(seconds, 1e-9),
               "mean_effective_tokens": n_effective / max(n_gen, 1), "processes": world}
    return summary, records


def main(argv=None) -> int:
    with contextlib.ExitStack() as stack:  # the output's lock, released however the run ends
        return _main(argv, stack)


def _main(argv, stack: contextlib.ExitStack) -> int:
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
    args = p.parse_args(argv)
    try:
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
        task = get_task(args.task, **({"with_system_prompt": False} if args.no_system_prompt else {}))
        if args.no_system_prompt:
            task.system_prompt = None
        extra = math_verify_scorer(task) if args.scorer == "math-verify" else None
        if args.score:
            return _rescore_main(task, args, extra, ks)
        if not args.model:
            raise ValueError("--model is required (or --score FILE to re-score generations)")
        if args.samples < 1 or (ks and max(ks) > args.samples):
            raise ValueError(f"--pass-k {args.pass_k} needs --samples >= {max(ks or [1])}, found {args.samples}")
        if args.samples > 1 and not options.temperature:
            print("warning: --samples > 1 at temperature 0 draws the same generation every time", file=sys.stderr)
        rows = task.load(args.data) if args.data else task.generate(args.num or 256, seed)
        rows = rows[: args.num] if args.num else rows
        out = Path(args.output) if args.output else Path(f"eval-{Path(args.model).resolve().name}-{args.task}.jsonl")
        run = dict(task=args.task, rows=len(rows), samples=args.samples, batch_size=args.batch_size, seed=seed,
                   reasoning_prefix=not args.no_reasoning_prefix, system_prompt=task.system_prompt,
                   **{k: v for k, v in options.given().items() if k != "seed"},
                   **({"attend_padding": True} if args.attend_padding else {}))
        run.update(_made_from(args.model, rows))
        rank, world = _dist()
        _check_output(out, {"--model": args.model, "--data": args.data}, args, "generations")
        if rank == 0:  # one run owns an output (two would interleave their generations)
            stack.enter_context(OutputLock(out, path=lock_path_of(out)))
        _check_run(out, run, args, rank)
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
                              resume=args.resume, extra=extra, ks=ks,
                              attend_padding=args.attend_padding)
        if rank != 0:
            return 0
        summary.update(model=str(args.model), generations=str(out), made_from=run)
        write_json(_summary_path(out), summary)
        _marker(out).unlink(missing_ok=True)
    except (DlmarchError, ValueError, OSError) as e:
        print(f"error: {str(e).splitlines()[0]}", file=sys.stderr)
        return 2
    print(table(task, summary))
    print(f"{summary['tokens_per_s']:.0f} tokens/s ({summary['effective_tokens_per_s']:.0f} effective, "
          f"{summary['mean_effective_tokens']:.1f} per generation); generations: {out}")
    return 0


def _summary_path(out: Path) -> Path:
    return out.with_suffix(".summary.json")


def _marker(out: Path) -> Path:
    return out.with_name(out.name + ".run.json")


def _summary_names(out: Path, key: str) -> bool:
    """Whether the summary beside `out` is ours and names `out` as its generations (or verdicts)."""
    try:
        summary = json.loads(_summary_path(out).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(summary, dict) and summary.get(key) == str(out)


def _check_output(out: Path, inputs: dict, args, key: str) -> None:
    """The output guard's one-file policy for --output and the summary beside it: never an input or
    inside a model directory; an existing file only with --resume (generations) or, with
    --overwrite, when this command wrote it (its summary names it, or an interrupted run's record is
    there)."""
    ours = lambda p: _summary_names(p, key) or _marker(p).is_file()  # noqa: E731
    resume = getattr(args, "resume", False)
    check_file_output(out, inputs, "--output", args.overwrite, ours, may_exist=resume and ours(out))
    summary = _summary_path(out)
    check_file_output(summary, inputs, "the summary of --output", True, lambda p: _summary_names(out, key),
                      may_exist=_summary_names(out, key))


def _made_from(model: str | Path, rows: list[dict]) -> dict:
    """What generations are made from, beside the options: the model's files and the rows."""
    from dlmarch.manifests import directory_fingerprint

    digest = hashlib.sha256(json.dumps(rows, sort_keys=True, default=str).encode()).hexdigest()
    return {"model_fingerprint": directory_fingerprint(model), "data_sha256": digest}


def _check_run(out: Path, run: dict, args, rank: int) -> None:
    """Refuse to mix runs: partial files without --resume (--overwrite removes them, ours), or
    --resume of generations made from another model, other rows or other options (recorded in
    OUT.run.json while a run is under way, and in the summary once it is done)."""
    marker = _marker(out)
    if _partials(out) and not args.resume:
        if not args.overwrite:
            raise DlmarchError(f"{out}: an interrupted run's partial files are there; pass --resume to continue it, "
                               f"--overwrite to replace it, or another --output")
        if rank == 0:
            for p in _partials(out):
                p.unlink()
    if args.resume and (out.exists() or _partials(out)):
        before = None
        if marker.is_file():
            before = read_json(marker)  # one line naming it when it is not a JSON object
        elif _summary_names(out, "generations"):
            before = json.loads(_summary_path(out).read_text()).get("made_from")
        if not isinstance(before, dict):
            raise DlmarchError(f"{out}: no record of what these generations were made from ({marker}); "
                               f"--resume refused (pass --overwrite to start over)")
        changed = [k for k in RUN_KEYS if before.get(k) != run.get(k)]
        if changed:
            what = {"model_fingerprint": "another --model", "data_sha256": "other --data rows"}
            named = ", ".join(what.get(k, k) for k in changed)
            raise DlmarchError(f"{marker if marker.is_file() else _summary_path(out)}: --resume with {named} than "
                               f"the generations in {out} were made from; refused (another --output, or --overwrite)")
    if rank == 0:
        out.parent.mkdir(parents=True, exist_ok=True)
        write_json(marker, run)


def _rescore_main(task, args, extra, ks) -> int:
    paths = [Path(f) for f in args.score]
    out = Path(args.output) if args.output else paths[0].with_name(paths[0].stem + ".verdicts.jsonl")
    _check_output(out, {f"--score file {p}": p for p in paths}, args, "verdicts")
    summary, records = rescore(task, paths, extra, ks)
    with atomic_file(out) as f:  # a failure (a full disk) leaves neither half a file nor a temporary one
        f.write("".join(json.dumps(r) + "\n" for r in records))
    summary.update(task=task.name, primary=task.primary, sources=[str(p) for p in paths], verdicts=str(out))
    write_json(_summary_path(out), summary)
    print(table(task, summary))
    print(f"verdicts: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
