"""The one training loop every objective runs on: setup -> train_step per step -> finish_run.

`train(objective_factory, args)` owns the output directory for the run, then `setup` loads and checks
the inputs (trainers/inputs.py), wraps the model (LoRA through peft, trainers/lora.py; DDP or FSDP2
under torchrun, trainers/distributed.py), builds AdamW and its schedule (trainers/optimizer.py) and
resumes (trainers/checkpoints.py); `train_step` runs gradient accumulation and clipping under bf16
autocast on GPU; `finish_run` writes the final artefacts (trainers/export.py) and the summary.
Progress is reported by trainers/progress.py, the run directory's policy is trainers/rundir.py's.
Objectives are functions of (model, batch, generator) returning an ObjectiveOutput.

Exactness across accumulation and ranks: each micro-batch backpropagates its un-normalised loss sum;
the step's denominators are summed over micro-batches and ranks, and the gradients divided by that
sum before clipping. The noise of micro-batch k of step s comes from a generator seeded with
(seed, s, k) and its data from a schedule that is a pure function of (seed, step), so the same
global batch gives the same update on 1 or N processes, and a resumed run continues exactly.
"""

from __future__ import annotations

import contextlib
import math
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from dlmarch.errors import DlmarchError
from dlmarch.atomic import clean_stale_temps, write_json

from .checkpoints import TrainingError, checkpoints, newest_intact_checkpoint, restore_newest, save_checkpoint
from .data import BatchSchedule, check_layout
from .distributed import all_sum, barrier, distribute, setup_distributed
from .export import finish
from .inputs import load_data, load_model_and_tokens, read_examples
from .lora import wrap_lora
from .objectives.protocol import as_objective
from .optimizer import optimizer_for
from .progress import Progress, check_tracker, plot_losses, truncate_metrics
from .record import TrainingRecord
from .rundir import OutputLock, check_output, record_run
from .validation import Validation


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


# --- the loop -----------------------------------------------------------------------------------------


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


# --- setup --------------------------------------------------------------------------------------------


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
    schedule, report, validation = load_data(args, tokenizer, eos_id, pad_id, world, example_loader, data_loader)
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


# --- one step -----------------------------------------------------------------------------------------


def micro_generator(seed: int, step: int, index: int, device) -> torch.Generator:
    """The generator of micro-batch `index` of step `step`: a pure function of the three."""
    g = torch.Generator(device=device)
    g.manual_seed(((seed * 1_000_003 + step) * 10_007 + index) % (1 << 62))  # torch takes 64 bits; smaller seeds unchanged
    return g


def autocast_ctx(args, device):
    """bf16 autocast with --bf16 on, or auto on CUDA; otherwise full precision."""
    use = args.bf16 == "on" or (args.bf16 == "auto" and device.type == "cuda")
    if not use:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


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


# --- finish -------------------------------------------------------------------------------------------


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
