"""The one training loop every objective runs on.

`train(objective_factory, args)` loads the model and tokenizer, builds the data schedule, wraps the
model (LoRA through peft, DDP or FSDP2 under torchrun), and steps AdamW with warmup and cosine or
linear decay, gradient accumulation and clipping, bf16 autocast on GPU and optional activation
checkpointing. Objectives are functions of (model, batch, generator) returning an ObjectiveOutput.

Exactness across accumulation and ranks: each micro-batch backpropagates its un-normalised loss sum;
the step's denominators are summed over micro-batches and ranks, and the gradients divided by that
sum before clipping. The noise of micro-batch k of step s comes from a generator seeded with
(seed, s, k) and its data from a schedule that is a pure function of (seed, step), so the same
global batch gives the same update on 1 or N processes, and a resumed run continues exactly.

What a run directory holds: run.json (the options, written once they are validated), .lock (the
pid of the run that owns it), metrics.jsonl, loss.png, checkpoints/step-N (weights or adapter,
optimizer, scheduler, RNG states, position, and manifest.json: every file's size and sha256), and at
the end model/ (native, with the tokenizer), adapter/ (peft format, LoRA runs) and model-hf/
(--export-hf).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist
from torch import nn

from dlmarch.dtypes import parse_dtype
from dlmarch.errors import DlmarchError
from dlmarch.atomic import DiskFullError, atomic_directory, clean_stale_temps, disk_full, write_json
from dlmarch.hub import local_model_dir
from dlmarch.registry import load_pretrained

from .checkpoints import (TrainingError, last_good, checkpoints, load_checkpoint, newest_intact_checkpoint,  # noqa: F401
                          restore_newest, save_checkpoint, verify_checkpoint)
from .data import BatchSchedule, check_layout, load_examples, padding_id
from .sources import field_map
from .objectives.protocol import as_objective
from .progress import Progress, check_tracker, plot_losses
from .record import TRAINING_RECORD, TrainingRecord
from .validation import Validation
from .rundir import OutputLock, check_output, record_run




# --- context the objectives are built from ------------------------------------------------------------


@dataclass
class RunContext:
    """What an objective factory may need to know once the model and tokenizer are loaded."""

    args: object
    model: nn.Module  # unwrapped base model
    tokenizer: object
    mask_id: int | None
    eos_id: int
    rank: int
    world: int
    device: torch.device


# --- distributed ----------------------------------------------------------------------------------------


def setup_distributed(device_arg: str | None) -> tuple[int, int, torch.device]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device_arg:
        device = torch.device(device_arg)
    elif torch.cuda.is_available():
        device = torch.device("cuda", local)
    else:
        device = torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return rank, world, device


def all_sum(values: list[float], device) -> list[float]:
    if not (dist.is_available() and dist.is_initialized()):
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device if device.type == "cuda" else "cpu")
    dist.all_reduce(t)
    return t.tolist()


def barrier():
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def micro_generator(seed: int, step: int, index: int, device) -> torch.Generator:
    """The generator of micro-batch `index` of step `step`: a pure function of the three."""
    g = torch.Generator(device=device)
    g.manual_seed(((seed * 1_000_003 + step) * 10_007 + index) % (1 << 62))  # torch takes 64 bits; smaller seeds unchanged
    return g


# --- model ---------------------------------------------------------------------------------------------


def check_lora_targets(model: nn.Module, targets: list[str]) -> None:
    """Every requested target must name at least one Linear module (peft only fails when none match)."""
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    leaves = {n.rsplit(".", 1)[-1] for n in names}
    for t in targets:
        if t not in leaves and not any(n == t or n.endswith("." + t) for n in names):
            raise DlmarchError(f"--lora-targets: {t!r} matches no linear module of this model (its names: {', '.join(sorted(leaves))})")


def wrap_lora(model: nn.Module, args) -> nn.Module:
    from peft import LoraConfig, get_peft_model

    check_lora_targets(model, args.lora_targets)
    cfg = LoraConfig(r=args.lora_rank, lora_alpha=args.lora_alpha or 2 * args.lora_rank, lora_dropout=args.lora_dropout,
                     target_modules=list(args.lora_targets))
    peft_model = get_peft_model(model, cfg)
    peft_model.peft_config["default"].base_model_name_or_path = str(args.model)
    return peft_model


def autocast_ctx(args, device):
    use = args.bf16 == "on" or (args.bf16 == "auto" and device.type == "cuda")
    if not use:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def lr_lambda(total: int, warmup: int, schedule: str, min_ratio: float) -> Callable[[int], float]:
    """lr / peak lr after `step` optimizer steps: transformers' get_{linear,cosine,constant}_schedule_with_warmup
    (and get_cosine_with_min_lr_schedule_with_warmup's min_lr_rate), so the first step runs at lr 0 during a
    warmup, as under the HF Trainer the reference recipes use."""
    def f(step: int) -> float:
        if warmup and step < warmup:
            return step / warmup
        if schedule == "constant" or total <= warmup:
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        decay = 0.5 * (1 + math.cos(math.pi * progress)) if schedule == "cosine" else 1 - progress
        return min_ratio + (1 - min_ratio) * decay

    return f


# --- run directory ----------------------------------------------------------------------------------------


def truncate_metrics(path: Path, last_step: int) -> None:
    """Keep the complete lines of steps <= last_step (a killed run may have written more, or half a line)."""
    if not path.exists():
        return
    keep = []
    lines = [x for x in path.read_bytes().split(b"\n") if x.strip()]
    for n, raw in enumerate(lines, 1):
        try:
            row = json.loads(raw.decode("utf-8"))
        except (ValueError, RecursionError) as e:  # JSON or UTF-8: a kill's half line is the last one
            if n == len(lines):
                break
            what = "invalid UTF-8" if isinstance(e, UnicodeDecodeError) else "invalid JSON"
            raise DlmarchError(f"{path}: line {n}: {what}; the run's metrics are damaged (remove the line to resume)") from None
        if not isinstance(row, dict) or isinstance(row.get("step"), bool) or not isinstance(row.get("step"), int):
            raise DlmarchError(f"{path}: line {n}: expected a metrics object with an integer step, found "
                               f"{raw.decode('utf-8')[:60]!r}")
        if row["step"] <= last_step:
            keep.append(raw.decode("utf-8"))
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(x + "\n" for x in keep))
    os.replace(tmp, path)


# --- the loop ------------------------------------------------------------------------------------------------


def train(objective_factory: Callable[[RunContext], Callable], args, *, name: str, needs_mask: bool = True,
          model_loader: Callable | None = None, example_loader: Callable | None = None,
          data_loader: Callable | None = None) -> dict:
    """Run training; returns the summary (also printed and written to OUTPUT/summary.json).

    model_loader(args, device, dtype) -> model overrides how the model is built (L2D).
    example_loader(args, tokenizer, eos_id, path) -> (examples, DataReport) overrides how --data (and
    --eval-data) become examples (pretraining's text stream; default: `read_examples`).
    data_loader(args, tokenizer, eos_id, pad_id, world) -> (schedule, report) overrides what the
    steps read (diffu-GRPO: prompts and their task rows, each batch kept for mu steps).

    The output directory is checked before anything is read (check_output), owned for the whole
    run (OutputLock), and written only once the model, tokenizer and data are validated."""
    check_layout(args.pack, args.eos_pad)  # before anything is written
    rank, world, device = setup_distributed(args.device)
    out = Path(args.output)
    barrier()
    check_output(out, args)
    barrier()
    lock = OutputLock(out) if rank == 0 else None
    try:
        return _train(objective_factory, args, name, needs_mask, model_loader, rank, world, device, out,
                      example_loader or read_examples, data_loader)
    finally:
        if lock is not None:
            lock.release()


@dataclass
class Run:
    """Everything a run holds between setup and finish."""

    name: str
    args: object
    out: Path
    rank: int
    world: int
    device: torch.device
    tokenizer: object
    base: nn.Module  # the model as loaded (LoRA merged into it at the end)
    model: nn.Module  # base, or its peft wrapper
    train_model: nn.Module  # model, or its DDP wrapper
    objective: object  # the objective protocol (trainers/objectives/protocol.py)
    schedule: BatchSchedule
    report: object  # the data's DataReport
    params: list
    optimizer: torch.optim.Optimizer
    scheduler: object
    total_steps: int
    start: int = 0
    model_loader: Callable | None = None
    validation: Validation | None = None  # --eval-data


def _train(objective_factory, args, name, needs_mask, model_loader, rank, world, device, out: Path,
           example_loader: Callable, data_loader: Callable | None = None) -> dict:
    """setup -> step after step (each logged, checkpointed every --save-every) -> finish."""
    run = setup(objective_factory, args, name, needs_mask, model_loader, rank, world, device, out, example_loader,
                data_loader)
    log = Progress(run)
    for step in range(run.start, run.total_steps):
        result = train_step(run, step)
        log.step(step + 1, result)
        if run.validation is not None and ((step + 1) % (args.eval_every or run.total_steps) == 0
                                           or step + 1 == run.total_steps):
            log.eval(step + 1, run.validation.loss(run.train_model, run.objective, run.device,
                                                   lambda: autocast_ctx(args, run.device)))
        if (step + 1) % args.save_every == 0 or step + 1 == run.total_steps:
            save_checkpoint(out, step + 1, run.model, run.optimizer, run.scheduler, rank, args.keep, run.objective)
            barrier()
    log.close()
    return finish_run(run, log)


# --- setup ------------------------------------------------------------------------------------------------------


def load_model_and_tokens(args, needs_mask: bool, model_loader, device):
    """(tokenizer, model, mask_id, eos_id, pad_id), every token id checked against the tokenizer."""
    from dlmarch.tokenizers import load_tokenizer

    model_dir = local_model_dir(args.model, "--model")  # a hub id: its snapshot in the hub cache
    tokenizer = load_tokenizer(model_dir)  # one line naming the directory when it cannot be read
    dtype = parse_dtype(args.dtype)
    if dtype is None:
        dtype = torch.bfloat16 if (args.lora_rank and device.type == "cuda") else torch.float32
    overrides = {"attn_backend": args.attn_backend} if args.attn_backend else {}
    model = model_loader(args, device, dtype) if model_loader else load_pretrained(model_dir, dtype=dtype, device=device, **overrides)
    cfg = model.token_config  # the model protocol: the config holding the token ids
    mask_id = None
    if needs_mask:
        mask_id = getattr(cfg, "mask_token_id", None)
        if mask_id is None:
            raise DlmarchError(f"{args.model}: a {cfg.family} model has no mask token; this objective trains masked-diffusion models")
        tok_mask = tokenizer.mask_token_id
        if tok_mask is None and mask_id >= len(tokenizer):
            raise DlmarchError(f"{args.model}: the tokenizer has no mask token (the model's mask id {mask_id} is outside its "
                               f"vocabulary of {len(tokenizer)})")
        if tok_mask is not None and tok_mask != mask_id:
            raise DlmarchError(f"{args.model}: the tokenizer's mask token id {tok_mask} differs from the model's {mask_id}")
    eos_id = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else cfg.eos_token_id
    if eos_id is None:
        raise DlmarchError(f"{args.model}: neither the tokenizer nor the config names an EOS token")
    pad_id = padding_id(args.eos_pad, eos_id, tokenizer.pad_token_id)
    return tokenizer, model, mask_id, eos_id, pad_id


def distribute(model, base, args, world: int, device):
    """The module the objective calls: model itself, FSDP2-sharded in place (each block, then the
    whole), or wrapped in DDP."""
    if world == 1:
        return model
    if args.distributed == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for block in base.blocks:
            fully_shard(block)
        fully_shard(model)
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP

    return DDP(model, device_ids=[device.index] if device.type == "cuda" else None)


def optimizer_for(params: list, args, total_steps: int, warmup: int):
    """AdamW (no weight decay on vectors: norms and biases) and its warmup-then-decay schedule."""
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=args.lr, betas=tuple(args.adam_betas))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(total_steps, warmup, args.schedule, args.min_lr_ratio))
    return optimizer, scheduler


def read_examples(args, tokenizer, eos_id: int, path):
    """--data (or --eval-data) as examples of {prompt, response} / {messages} rows (trainers/data.py)."""
    return load_examples(path, tokenizer, args.max_length, eos_id=eos_id, over_long=args.over_long,
                         skip_bad_rows=args.skip_bad_rows, use_template=False if args.no_chat_template else None,
                         full_conversation=args.render_full_conversation,
                         split=getattr(args, "data_split", "train"), fields=field_map(args))


def setup(objective_factory, args, name, needs_mask, model_loader, rank, world, device, out: Path,
          example_loader: Callable = read_examples, data_loader: Callable | None = None) -> Run:
    """Load and check every input, build the objective, optimizer and schedule, then (every input
    valid) start writing the output directory and resume from its newest intact checkpoint."""
    if rank == 0:  # we own the output: every temporary directory in it is a killed run's
        clean_stale_temps(out, force=True)
        clean_stale_temps(out / "checkpoints", force=True)
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    tokenizer, base, mask_id, eos_id, pad_id = load_model_and_tokens(args, needs_mask, model_loader, device)
    validation = None
    if data_loader is not None:
        schedule, report = data_loader(args, tokenizer, eos_id, pad_id, world)
    else:
        examples, report = example_loader(args, tokenizer, eos_id, args.data)
        if getattr(args, "eval_data", None):
            validation = Validation(example_loader(args, tokenizer, eos_id, args.eval_data)[0], args, pad_id)
        schedule = BatchSchedule(examples, micro_batch_size=args.batch_size, micro_batches_per_step=args.grad_accum * world,
                                 max_length=args.max_length, pad_id=pad_id, seed=args.seed, pack=args.pack,
                                 eos_pad=args.eos_pad, pad_to=args.pad_to,
                                 response_cutoff=getattr(args, "response_cutoff", "none"))
    check_tracker(getattr(args, "report_to", None))
    total_steps = args.max_steps or max(1, int(args.epochs * schedule.steps_per_epoch))
    warmup = args.warmup_steps if args.warmup_steps is not None else int(0.03 * total_steps)
    if args.grad_checkpointing:
        base.gradient_checkpointing = True
    model = wrap_lora(base, args) if args.lora_rank else base
    objective = as_objective(objective_factory(RunContext(args, base, tokenizer, mask_id, eos_id, rank, world, device)))
    model.train()
    train_model = distribute(model, base, args, world, device)
    # The model protocol's trainable part (LoRA's adapters are injected into it in place).
    params = [p for p in base.trainable().parameters() if p.requires_grad]
    if not params:
        raise DlmarchError("nothing to train: every parameter is frozen")
    optimizer, scheduler = optimizer_for(params, args, total_steps, warmup)
    record_run(out, args, rank)  # every input is valid: from here on the output directory is written
    barrier()
    run = Run(name, args, out, rank, world, device, tokenizer, base, model, train_model, objective, schedule, report,
              params, optimizer, scheduler, total_steps, model_loader=model_loader, validation=validation)
    run.start = resume(run) if args.resume else 0
    if rank == 0:
        n_train = sum(p.numel() for p in params)
        n_all = sum(p.numel() for p in model.parameters())
        print(f"{name}: {report.line()}; {schedule.steps_per_epoch} steps/epoch, {total_steps} steps; "
              f"training {n_train:,} of {n_all:,} parameters on {device} x{world}", file=sys.stderr)
    return run


def resume(run: Run) -> int:
    """The step to start from: that of the newest checkpoint that is complete, unedited, finite and
    loadable (0 with none yet), its weights, optimizer, schedule, RNG and objective state restored."""
    out, rank = run.out, run.rank
    if not checkpoints(out):
        if rank == 0:
            print(f"{out}: no checkpoint yet; starting from step 0", file=sys.stderr)
        return 0
    found, start = restore_newest(out, run.model, run.optimizer, run.scheduler, run.device, run.objective, say=rank == 0)
    if rank == 0:
        truncate_metrics(out / "metrics.jsonl", start)
        print(f"resumed from {found} at step {start}", file=sys.stderr)
    return start


# --- one step ---------------------------------------------------------------------------------------------------


@dataclass
class StepResult:
    loss: float
    grad_norm: float
    tokens: int
    metrics: dict
    seconds: float


def train_step(run: Run, step: int) -> StepResult:
    """One optimizer step: --grad-accum micro-batches on this rank, gradients divided by the
    denominators summed over micro-batches and ranks, clipped, applied; then the objective syncs."""
    args, world, rank, model = run.args, run.world, run.rank, run.model
    fsdp = world > 1 and args.distributed == "fsdp"
    t0 = time.time()
    loss_sum, denom, tokens, metrics = 0.0, 0.0, 0, {}
    run.objective.begin_step(step)
    for a in range(args.grad_accum):
        index = a * world + rank
        batch = run.schedule.micro_batch(step, index).to(run.device)
        gen = micro_generator(args.seed, step, index, run.device)
        last = a == args.grad_accum - 1
        if fsdp and hasattr(model, "set_requires_gradient_sync"):
            model.set_requires_gradient_sync(last)
        sync = run.train_model.no_sync() if (world > 1 and not fsdp and not last) else contextlib.nullcontext()
        with sync, autocast_ctx(args, run.device):
            res = run.objective(run.train_model, batch, gen)
            res.loss_sum.backward()
        loss_sum += float(res.loss_sum.detach())
        denom += res.denom
        tokens += batch.data_tokens
        for k, v in res.metrics.items():
            metrics[k] = metrics.get(k, 0.0) + v / args.grad_accum
    loss_sum, denom, tokens = all_sum([loss_sum, denom, float(tokens)], run.device)
    loss = loss_sum / denom if denom > 0 else 0.0
    if not math.isfinite(loss):
        good = newest_intact_checkpoint(run.out)
        where = f"the last good checkpoint is {good}" if good else "no intact checkpoint was written yet"
        raise TrainingError(f"non-finite loss ({loss}) at step {step + 1}; stopped before updating the weights; {where}")
    scale = (world if world > 1 else 1) / denom if denom > 0 else 0.0
    for p in run.params:
        if p.grad is not None:
            p.grad.mul_(scale)
    grad_norm = float(torch.nn.utils.clip_grad_norm_(run.params, args.clip if args.clip > 0 else float("inf")))
    run.optimizer.step()
    run.scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)
    run.objective.sync()  # a stateful objective shares its state across ranks
    return StepResult(loss, grad_norm, int(tokens), metrics, time.time() - t0)


# --- logging and finish -----------------------------------------------------------------------------------------


def finish_run(run: Run, log: Progress) -> dict:
    """Final artefacts (finish), then the summary: OUTPUT/summary.json, loss.png and one line."""
    args, name, out, rank = run.args, run.name, run.out, run.rank
    info = TrainingRecord.of(name, run.objective.training_info)
    summary = finish(out, run.model, run.base, run.tokenizer, args, rank, run.model_loader, info)
    elapsed, first_loss, ema = log.elapsed, log.first_loss, log.ema
    summary.update(steps=run.total_steps, resumed_from=run.start, tokens=log.tokens_run, seconds=round(elapsed, 2),
                   tokens_per_s=log.tokens_run / max(elapsed, 1e-9), first_loss=first_loss, last_loss=log.last_loss,
                   smoothed_loss=ema, data=run.report.line())
    if rank == 0:
        write_json(out / "summary.json", summary)
        if log.metrics_path.exists():
            plot_losses(log.metrics_path, out / "loss.png", f"{name}: {Path(args.model).name}")
        ran = run.total_steps - run.start
        print(f"{name}: {ran} steps in {elapsed:.1f}s, {log.tokens_run:,} tokens ({summary['tokens_per_s']:.0f} tok/s), "
              f"loss {first_loss if first_loss is not None else float('nan'):.4f} -> {ema if ema is not None else float('nan'):.4f} "
              f"(EMA); model: {summary.get('model')}; curve: {out / 'loss.png'}")
    barrier()
    return summary


# --- finish ------------------------------------------------------------------------------------------------------


def _is_sharded(model) -> bool:
    return any(type(p).__name__ == "DTensor" or getattr(p, "device_mesh", None) is not None for p in model.parameters())


def finish(out: Path, model, base, tokenizer, args, rank: int, model_loader=None,
           info: TrainingRecord | None = None) -> dict:
    """Final artefacts: model/ (native, merged for LoRA, with the tokenizer, the training record
    training.json, and its decoding hints in config.json, which the sampler reads to warn about a
    mismatched block length), adapter/ for LoRA runs, model-hf/ with --export-hf."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))  # collective
    if rank != 0:
        return {}
    if _is_sharded(model):  # FSDP: rebuild a plain copy on rank 0 from the gathered weights
        cpu = torch.device("cpu")
        base = model_loader(args, cpu, torch.float32) if model_loader else load_pretrained(args.model, dtype=torch.float32, device=cpu)
        model = wrap_lora(base, args) if args.lora_rank else base
        model.load_state_dict(full)
    try:
        return _write_final(out, model, base, tokenizer, args, info)
    except Exception as e:
        if not (isinstance(e, DiskFullError) or disk_full(e)):
            raise
        why = str(e) if isinstance(e, DiskFullError) else f"no space left on the device writing the final model in {out}"
        raise DiskFullError(f"{why}; {last_good(out)}") from None


def _write_final(out: Path, model, base, tokenizer, args, info: TrainingRecord | None) -> dict:
    from .adapters import export_run_adapter

    summary = {}
    if args.lora_rank:
        adapter_dir = out / "adapter"
        with atomic_directory(adapter_dir, overwrite=True) as tmp:
            model.save_pretrained(tmp, save_embedding_layers=False)
        summary["adapter"] = str(adapter_dir)
        merged = model.merge_and_unload()
    else:
        merged = base
    model_dir = out / "model"
    info = info or TrainingRecord(method="unknown")
    merged.save_pretrained(model_dir, decoding=info.decoding())
    tokenizer.save_pretrained(model_dir)
    write_json(model_dir / TRAINING_RECORD, info.to_dict())
    summary["model"] = str(model_dir)
    if args.export_hf and hasattr(merged.config, "to_hf"):
        from conversions.hf import export_hf

        export_hf(model_dir, out / "model-hf", overwrite=True)
        summary["model_hf"] = str(out / "model-hf")
    summary.update(export_run_adapter(out, merged.config, args))  # adapter-hf/: the adapter under HF names
    return summary
