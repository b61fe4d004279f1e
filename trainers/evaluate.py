"""`python -m trainers.evaluate --model DIR --task TASK [--data FILE]`: d1's evaluation protocol.

Defaults are d1's (dllm-reasoning/d1 `eval/eval.py`): block length 32, temperature 0, low-confidence
remasking, steps = gen_length / 2, d1's prompt (system prompt and question in one user message, the
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
import copy
import inspect
import json
import os
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

from dlmarch.errors import DlmarchError
from dlmarch.prompts import encode_prompts, left_pad
from dlmarch.sampling.cli import sampler_warnings

from .tasks import REASONING_PREFIX, TASKS, get_task, pass_at_k

RUN_KEYS = ("task", "rows", "samples", "gen_length", "block_length", "steps", "temperature", "batch_size", "seed",
            "kv_cache", "threshold", "block_causal", "reasoning_prefix", "system_prompt", "attend_padding")


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
    """(generation, row) records of a d1 generation file or of this command's JSONL."""
    text = path.read_text()
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        data = None
    if isinstance(data, dict) and "generation" not in data:  # one JSON document: d1's file, not our JSONL
        if not isinstance(data.get("generations"), list):
            raise DlmarchError(f"{path}: a d1 generation file needs a \"generations\" list")
        out = []
        for i, item in enumerate(data["generations"]):
            if not isinstance(item, dict) or "generations" not in item:
                raise DlmarchError(f"{path}: generations[{i}]: expected {{question, generations, ground_truth}}")
            out.append({"index": i, "generation": item["generations"], "reference": task.from_d1(item),
                        "question": item.get("question", "")})
        return out
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise DlmarchError(f"{path}: line {n}: not JSON ({e.msg})") from None
        if not isinstance(rec, dict) or "generation" not in rec or "reference" not in rec:
            raise DlmarchError(f"{path}: line {n}: expected a record with \"generation\" and \"reference\"")
        out.append(rec)
    if not out:
        raise DlmarchError(f"{path}: no generations")
    return out


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


def cut_after_eos(ids: list[int], eos_ids: list[int]) -> tuple[list[int], int]:
    """(ids through the first EOS/EoT included, number of tokens before it: the effective tokens)."""
    for i, t in enumerate(ids):
        if t in eos_ids:
            return ids[:i + 1], i
    return ids, len(ids)


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


def _read_done(out: Path, with_final: bool) -> dict[tuple[int, int], dict]:
    """Finished records of a run: every complete line of its partial files (a line cut by a kill is
    skipped, and its batch redone), and with `with_final` those of a merged output already there."""
    done = {}
    for p in ([out] if with_final and out.exists() else []) + _partials(out):
        for line in p.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
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


def evaluate(model, tokenizer, task, rows: list[dict], *, gen_length: int = 128, block_length: int = 32,
             steps: int | None = None, batch_size: int = 16, reasoning_prefix: bool = True, chat_template: bool = True,
             temperature: float = 0.0, kv_cache: bool = False, threshold: float | None = None, block_causal: bool = False,
             seed: int = 0, samples: int = 1, output: Path | None = None, resume: bool = False, extra=None,
             ks: list[int] | None = None, progress: bool = True, attend_padding: bool = False) -> tuple[dict, list[dict]]:
    """Generate `samples` answers for every row, score them, summarise. Returns (summary, records).

    Prompts are left-padded per batch. By default the padding is hidden from attention, so a row's
    generation does not depend on its batch-mates. `attend_padding` passes no attention mask, as d1's
    eval.py / generate.py do (dllm-reasoning/d1): rows then attend to their padding and the scores
    depend on the batch composition; with d1's batch size (its --batch_size 4) and item order this
    replicates d1's generations exactly.

    With `output`, records are appended to `output.partial-RANK.jsonl` batch by batch, and rank 0
    merges them into `output` (sorted by row and sample) once every process is done.
    """
    from dlmarch import generate, generate_dream, generate_l2d

    rank, world = _dist()
    is_l2d = model.sampler == "generate_l2d"
    is_dream = model.sampler == "generate_dream"
    cfg = model.token_config
    if is_dream and (kv_cache or threshold is not None or block_causal):
        raise ValueError("a Dream model is decoded by generate_dream: --kv-cache, --threshold and --block-causal are LLaDA's")
    steps = steps or max(1, gen_length // 2)
    prefix = REASONING_PREFIX if reasoning_prefix else ""
    prompts = [task.messages(r) for r in rows]
    encoded = encode_prompts(tokenizer, prompts, chat_template, prefix)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else cfg.eos_token_id
    eos_ids = model.stop_token_ids
    if hasattr(task, "end_markers"):  # d1's Sudoku patterns end an answer at LLaDA's end tokens; add this model's
        task = copy.copy(task)
        task.end_markers = tuple(dict.fromkeys([*task.end_markers, *tokenizer.convert_ids_to_tokens(eos_ids)]))
    # stop_at_eos: skip the blocks after every row's EOS (same text through each row's first EOS).
    early_stop = {"stop_at_eos": True} if "stop_at_eos" in inspect.signature(generate).parameters else {}
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
        gen = torch.Generator(device=model.device).manual_seed(seed * 1_000_003 + b)
        with torch.no_grad():
            if is_l2d:
                x = generate_l2d(model, ids, am, max_new_tokens=gen_length, temperature=temperature, generator=gen,
                                 eos_token_id=cfg.eos_token_id)
            elif is_dream:
                # Dream's own sampler over the whole answer (no blocks): greedy with the "entropy" order,
                # the settings of dllm's Dream evaluation (ZHZisZZ/dllm dllm/pipelines/dream/eval.py),
                # with d1's steps = gen_length / 2 so that Dream and LLaDA rows of a table spend the same.
                x = generate_dream(model, ids, am, max_new_tokens=gen_length, steps=steps, temperature=temperature,
                                   top_p=None, top_k=None, alg="entropy", alg_temp=0.0, generator=gen)
            else:
                x = generate(model, ids, attention_mask=am, steps=steps, gen_length=gen_length,
                             block_length=block_length, temperature=temperature, generator=gen, kv_cache=kv_cache,
                             threshold=threshold, block_causal=block_causal, **early_stop)
        lines = []
        for (i, s), row_ids in zip(batch, x[:, ids.shape[1]:].tolist()):
            kept, effective = cut_after_eos(row_ids, eos_ids)
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
        tmp = output.with_name(output.name + ".tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in records))
        os.replace(tmp, output)
        for p in _partials(output):
            p.unlink()
    n_tokens, n_effective, n_gen, seconds = totals.tolist()
    summary = {"task": task.name, **summarize(task, records, ks), "primary": task.primary, "samples": samples,
               "gen_length": gen_length, "block_length": block_length, "steps": steps,
               "seconds": round(seconds, 2), "tokens_per_s": n_tokens / max(seconds, 1e-9),
               "effective_tokens_per_s": n_effective / max(seconds, 1e-9),
               "mean_effective_tokens": n_effective / max(n_gen, 1), "processes": world}
    return summary, records


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m trainers.evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", help="model directory (not with --score)")
    p.add_argument("--task", required=True, choices=list(TASKS))
    p.add_argument("--score", nargs="+", metavar="FILE", help="re-score generation files (d1's JSON or ours) without a model")
    p.add_argument("--scorer", choices=["math-verify"], help="a second verdict column beside d1's (gsm8k, math500)")
    p.add_argument("--data", help="the task's rows: JSONL (or d1's Sudoku CSV); required for gsm8k and math500")
    p.add_argument("--num", type=int, default=None, help="first N rows (default: all; generated tasks: 256)")
    p.add_argument("--seed", type=int, default=1234, help="seed of generated tasks and of sampling")
    p.add_argument("--gen-length", type=int, default=128)
    p.add_argument("--block-length", type=int, default=32)
    p.add_argument("--steps", type=int, default=None, help="default: gen_length / 2")
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--samples", type=int, default=1, help="generations per item (pass@k; use --temperature > 0)")
    p.add_argument("--pass-k", default=None, help="comma-separated k of pass@k (default with --samples N: 1 and N)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--kv-cache", action="store_true")
    p.add_argument("--threshold", type=float, default=None)
    p.add_argument("--block-causal", action="store_true")
    p.add_argument("--attend-padding", action="store_true",
                   help="no attention mask over the prompts' left padding, as d1's eval.py (scores then depend on the "
                        "batch; use d1's --batch-size 4 to replicate it); default: padding hidden")
    p.add_argument("--no-reasoning-prefix", action="store_true")
    p.add_argument("--no-system-prompt", action="store_true")
    p.add_argument("--device", default=None)
    p.add_argument("--resume", action="store_true", help="continue an interrupted run into the same --output")
    p.add_argument("--output", help="JSONL of generations (default: MODEL/eval-TASK.jsonl; with --score: "
                                    "FILE.verdicts.jsonl); the summary goes beside it")
    args = p.parse_args(argv)
    try:
        for name in ("steps", "gen_length", "block_length", "batch_size", "num"):  # 0 would otherwise fall back to the default
            if getattr(args, name) is not None and getattr(args, name) < 1:
                raise DlmarchError(f"--{name.replace('_', '-')} must be at least 1, found {getattr(args, name)}")
        ks = [int(k) for k in args.pass_k.split(",")] if args.pass_k else None
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
        if args.samples > 1 and args.temperature == 0:
            print("warning: --samples > 1 at temperature 0 draws the same generation every time", file=sys.stderr)
        rows = task.load(args.data) if args.data else task.generate(args.num or 256, args.seed)
        rows = rows[: args.num] if args.num else rows
        out = Path(args.output or Path(args.model) / f"eval-{args.task}.jsonl")
        run = dict(task=args.task, rows=len(rows), samples=args.samples, gen_length=args.gen_length,
                   block_length=args.block_length, steps=args.steps or max(1, args.gen_length // 2),
                   temperature=args.temperature, batch_size=args.batch_size, seed=args.seed, kv_cache=args.kv_cache,
                   threshold=args.threshold, block_causal=args.block_causal,
                   reasoning_prefix=not args.no_reasoning_prefix, system_prompt=task.system_prompt,
                   **({"attend_padding": True} if args.attend_padding else {}))
        rank, world = _dist()
        _check_run(out, run, args.resume, rank)
        if world > 1:
            torch.distributed.barrier()  # every process has checked before any writes
        device = args.device or (f"cuda:{os.environ.get('LOCAL_RANK', 0)}" if torch.cuda.is_available() else "cpu")
        from dlmarch.sampling.cli import load_for_generation

        model, tok = load_for_generation(args.model, None, device, allow_l2d=True)
        if rank == 0:
            for w in sampler_warnings(args.model, args.block_length, args.block_causal):
                print(w, file=sys.stderr)
        summary, _ = evaluate(model, tok, task, rows, gen_length=args.gen_length, block_length=args.block_length,
                              steps=args.steps, batch_size=args.batch_size,
                              reasoning_prefix=not args.no_reasoning_prefix, temperature=args.temperature,
                              kv_cache=args.kv_cache, threshold=args.threshold, block_causal=args.block_causal,
                              seed=args.seed, samples=args.samples, output=out, resume=args.resume, extra=extra,
                              ks=ks, attend_padding=args.attend_padding)
    except (DlmarchError, ValueError, OSError) as e:
        print(f"error: {str(e).splitlines()[0]}", file=sys.stderr)
        return 2
    if rank != 0:
        return 0
    summary.update(model=str(args.model), generations=str(out))
    out.with_suffix(".summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    out.with_name(out.name + ".run.json").unlink(missing_ok=True)
    print(table(task, summary))
    print(f"{summary['tokens_per_s']:.0f} tokens/s ({summary['effective_tokens_per_s']:.0f} effective, "
          f"{summary['mean_effective_tokens']:.1f} per generation); generations: {out}")
    return 0


def _check_run(out: Path, run: dict, resume: bool, rank: int) -> None:
    """Refuse to mix runs: partial files without --resume, or --resume with other options."""
    marker = out.with_name(out.name + ".run.json")
    if _partials(out) and not resume:
        raise DlmarchError(f"{out}: an interrupted run's partial files are there; pass --resume or another --output")
    if resume and marker.exists():
        before = json.loads(marker.read_text())
        changed = [k for k in RUN_KEYS if before.get(k) != run.get(k)]
        if changed:
            raise DlmarchError(f"{marker}: --resume with other options than the interrupted run: {changed}")
    if rank == 0:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = marker.with_name(marker.name + f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(run, indent=2) + "\n")
        os.replace(tmp, marker)


def _rescore_main(task, args, extra, ks) -> int:
    paths = [Path(f) for f in args.score]
    summary, records = rescore(task, paths, extra, ks)
    out = Path(args.output) if args.output else paths[0].with_name(paths[0].stem + ".verdicts.jsonl")
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in records))
    os.replace(tmp, out)
    summary.update(task=task.name, primary=task.primary, sources=[str(p) for p in paths], verdicts=str(out))
    out.with_suffix(".summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(table(task, summary))
    print(f"verdicts: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
