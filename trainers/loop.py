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
import fcntl
import json
import math
import os
import random
import re
import shutil
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist
from torch import nn

from dlmarch import safetensors_io as st
from dlmarch.checkpoint import (atomic_directory, check_disjoint, clean_stale_temps, foreign_entries,
                                write_json, write_manifest, verify_manifest)
from dlmarch.dtypes import parse_dtype
from dlmarch.errors import DlmarchError
from dlmarch.registry import load_pretrained

from .data import BatchSchedule, check_layout, load_examples, padding_id
from .objectives.protocol import as_objective
from .record import TRAINING_RECORD, TrainingRecord




class TrainingError(DlmarchError):
    pass


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
    g.manual_seed((seed * 1_000_003 + step) * 10_007 + index)
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


LOCK_NAME = ".lock"
# What a run writes into its output directory; --overwrite replaces a directory holding only these.
RUN_ARTEFACTS = {"run.json", "metrics.jsonl", "metrics.tmp", "loss.png", "summary.json", "checkpoints", "model",
                 "adapter", "adapter-hf", "model-hf", "tensorboard", LOCK_NAME}
# Options a resumed run may change: where and how often it reports and saves, not what it trains.
RESUME_MAY_CHANGE = {"resume", "overwrite", "config", "no_progress", "log_every", "save_every", "keep", "device"}


def _is_temp(name: str) -> bool:
    return re.fullmatch(r"\..+\.(tmp|old)-\d+.*", name) is not None


def _is_artefact(path: Path) -> bool:
    return path.name in RUN_ARTEFACTS or _is_temp(path.name)


def check_output(out: Path, args) -> None:
    """Refuse, before anything is read or written, an --output that would destroy an input or
    files this tool did not write: one that is, contains or lies inside --model, --data, --init,
    --l2d-options or --config; with --overwrite, one that holds anything but a run's artefacts."""
    inputs = {f"--{k.replace('_', '-')}": getattr(args, k, None) for k in ("model", "data", "init", "l2d_options", "config")}
    check_disjoint(out, inputs, "--output")
    if out.exists() and not out.is_dir():
        raise DlmarchError(f"--output {out} exists and is not a directory")
    entries = [p for p in out.iterdir() if p.name != LOCK_NAME and not _is_temp(p.name)] if out.exists() else []
    run_json = out / "run.json"
    if not entries:
        return
    if args.resume:
        if not run_json.exists():
            raise DlmarchError(f"{out}: --resume found no run here (no run.json)")
    elif args.overwrite:
        if not run_json.exists():
            raise DlmarchError(f"{out} holds files but no run (run.json); --overwrite replaces only a run directory")
        foreign = foreign_entries(out, _is_artefact)
        if foreign:
            raise DlmarchError(f"{out} holds {foreign[0]!r}, which a run does not write; not replaced by --overwrite "
                               f"(move it or choose another --output)")
    else:
        what = "another run (run.json)" if run_json.exists() else "files"
        raise DlmarchError(f"{out} already holds {what}; pass --resume to continue it or --overwrite to replace it")


class OutputLock:
    """One run owns an output directory: OUT/.lock holds its pid and is flock()ed while it runs.
    The kernel drops the flock when the process dies, so a lock file left by a killed run is
    detected as stale (its pid is named) and taken over. Creates OUT when missing; release()
    removes it again when it is still empty (a run refused before it wrote anything)."""

    def __init__(self, out: Path):
        self.out, self.path = out, out / LOCK_NAME
        self.created = not out.exists()
        out.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                owner = os.pread(fd, 200, 0).decode(errors="replace").split() or ["?"]
                os.close(fd)
                raise DlmarchError(f"{out} is in use by another run (pid {owner[0]}, lock {self.path}); "
                                   f"wait for it to end or choose another --output") from None
            try:  # the owner may have released (unlinked) the file between our open and flock
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        previous = os.pread(fd, 200, 0).decode(errors="replace").split()
        if previous:
            print(f"{out}: the lock of pid {previous[0]} is stale (that run ended without releasing it); taken over",
                  file=sys.stderr)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
        self.fd = fd

    def release(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        os.close(self.fd)
        if self.created:
            with contextlib.suppress(OSError):
                self.out.rmdir()  # only when empty


def _run_options(args) -> dict:
    return json.loads(json.dumps({k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(args).items()}))


def record_run(out: Path, args, rank: int) -> None:
    """After the inputs are validated: a new run (or --overwrite) clears the old run's artefacts and
    writes run.json; a resumed run must train with the options in run.json (those in
    RESUME_MAY_CHANGE excepted; their changes are recorded under "resumed")."""
    if rank == 0:
        run_json = out / "run.json"
        now = _run_options(args)
        if args.resume and run_json.exists():
            recorded = json.loads(run_json.read_text())
            changed = {}
            for k, v in now.items():
                if k not in recorded or recorded[k] == v:
                    continue
                if k not in RESUME_MAY_CHANGE:
                    raise DlmarchError(f"--resume: --{k.replace('_', '-')} is {v!r} here but {recorded[k]!r} in {run_json}; "
                                       f"a resumed run trains with the options it started with")
                changed[k] = [recorded[k], v]
            if changed:
                recorded.setdefault("resumed", []).append({"time": time.time(), "changed": changed})
                write_json(run_json, recorded)
        else:
            if args.overwrite:
                for p in out.iterdir():
                    if p.name != LOCK_NAME and _is_artefact(p):
                        shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
            write_json(run_json, now)
    barrier()


CHECKPOINT_NAME = re.compile(r"step-(\d{8})")


def checkpoints(out: Path) -> list[Path]:
    """The checkpoint directories a run wrote (`step-NNNNNNNN`), oldest first; copies under other
    names (`step-3-backup`) are not ours and are left alone."""
    d = out / "checkpoints"
    if not d.is_dir():
        return []
    return sorted((p for p in d.iterdir() if CHECKPOINT_NAME.fullmatch(p.name) and p.is_dir() and not p.is_symlink()),
                  key=lambda p: int(p.name[5:]))


def verify_checkpoint(path: Path) -> str | None:
    """None for an intact checkpoint: its manifest's files with their sizes and hashes, a
    state.json naming its own step, and finite weights. Else the reason it is not."""
    why = verify_manifest(path)
    if why is not None:
        return why
    try:
        step = json.loads((path / "state.json").read_text())["step"]
    except (OSError, ValueError, KeyError, TypeError):
        return "unreadable state.json"
    if step != int(path.name[5:]):
        return f"state.json names step {step}"
    weights = st.load_file(path / "weights.safetensors")
    bad = next((k for k, v in weights.items() if v.is_floating_point() and not torch.isfinite(v).all()), None)
    return None if bad is None else f"non-finite weights in {bad}"


def newest_intact_checkpoint(out: Path, say: bool = False) -> Path | None:
    """The newest checkpoint that verify_checkpoint accepts; with say=True, name each newer one
    skipped (and why) on stderr."""
    for p in reversed(checkpoints(out)):
        why = verify_checkpoint(p)
        if why is None:
            return p
        if say:
            print(f"skipped checkpoint {p}: {why}", file=sys.stderr)
    return None


def truncate_metrics(path: Path, last_step: int) -> None:
    """Keep the complete lines of steps <= last_step (a killed run may have written more, or half a line)."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            break
        if row.get("step", 0) <= last_step:
            keep.append(line)
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(x + "\n" for x in keep))
    os.replace(tmp, path)


def plot_losses(metrics_path: Path, png: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(x) for x in metrics_path.read_text().splitlines() if x.strip()]
    if not rows:
        return
    steps, losses = [r["step"] for r in rows], [r["loss"] for r in rows]
    ema, smooth = None, []
    for v in losses:
        ema = v if ema is None else 0.9 * ema + 0.1 * v
        smooth.append(ema)
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(steps, losses, alpha=0.3, label="loss")
    ax.plot(steps, smooth, label="EMA 0.9")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)


# --- the loop ------------------------------------------------------------------------------------------------


def train(objective_factory: Callable[[RunContext], Callable], args, *, name: str, needs_mask: bool = True,
          model_loader: Callable | None = None) -> dict:
    """Run training; returns the summary (also printed and written to OUTPUT/summary.json).

    model_loader(args, device, dtype) -> model overrides how the model is built (L2D).

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
        return _train(objective_factory, args, name, needs_mask, model_loader, rank, world, device, out)
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


def _train(objective_factory, args, name, needs_mask, model_loader, rank, world, device, out: Path) -> dict:
    """setup -> step after step (each logged, checkpointed every --save-every) -> finish."""
    run = setup(objective_factory, args, name, needs_mask, model_loader, rank, world, device, out)
    log = Progress(run)
    for step in range(run.start, run.total_steps):
        result = train_step(run, step)
        log.step(step + 1, result)
        if (step + 1) % args.save_every == 0 or step + 1 == run.total_steps:
            save_checkpoint(out, step + 1, run.model, run.optimizer, run.scheduler, rank, args.keep, run.objective)
    log.close()
    return finish_run(run, log)


# --- setup ------------------------------------------------------------------------------------------------------


def load_model_and_tokens(args, needs_mask: bool, model_loader, device):
    """(tokenizer, model, mask_id, eos_id, pad_id), every token id checked against the tokenizer."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(args.model, local_files_only=True, trust_remote_code=False)
    except Exception as e:
        raise DlmarchError(f"{args.model}: cannot load its tokenizer ({str(e).strip().splitlines()[0]})") from None
    dtype = parse_dtype(args.dtype)
    if dtype is None:
        dtype = torch.bfloat16 if (args.lora_rank and device.type == "cuda") else torch.float32
    overrides = {"attn_backend": args.attn_backend} if args.attn_backend else {}
    model = model_loader(args, device, dtype) if model_loader else load_pretrained(args.model, dtype=dtype, device=device, **overrides)
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


def setup(objective_factory, args, name, needs_mask, model_loader, rank, world, device, out: Path) -> Run:
    """Load and check every input, build the objective, optimizer and schedule, then (every input
    valid) start writing the output directory and resume from its newest intact checkpoint."""
    if rank == 0:  # we own the output: every temporary directory in it is a killed run's
        clean_stale_temps(out, force=True)
        clean_stale_temps(out / "checkpoints", force=True)
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    tokenizer, base, mask_id, eos_id, pad_id = load_model_and_tokens(args, needs_mask, model_loader, device)
    examples, report = load_examples(args.data, tokenizer, args.max_length, eos_id=eos_id, over_long=args.over_long,
                                     skip_bad_rows=args.skip_bad_rows, use_template=False if args.no_chat_template else None,
                                     full_conversation=args.render_full_conversation)
    schedule = BatchSchedule(examples, micro_batch_size=args.batch_size, micro_batches_per_step=args.grad_accum * world,
                             max_length=args.max_length, pad_id=pad_id, seed=args.seed, pack=args.pack,
                             eos_pad=args.eos_pad, pad_to=args.pad_to,
                             response_cutoff=getattr(args, "response_cutoff", "none"))
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
    run = Run(name, args, out, rank, world, device, tokenizer, base, model, train_model, objective, schedule, report,
              params, optimizer, scheduler, total_steps, model_loader=model_loader)
    run.start = resume(run) if args.resume else 0
    if rank == 0:
        n_train = sum(p.numel() for p in params)
        n_all = sum(p.numel() for p in model.parameters())
        print(f"{name}: {report.line()}; {schedule.steps_per_epoch} steps/epoch, {total_steps} steps; "
              f"training {n_train:,} of {n_all:,} parameters on {device} x{world}", file=sys.stderr)
    return run


def resume(run: Run) -> int:
    """The step to start from: that of the newest checkpoint that is complete, unedited and finite (0
    with none yet), its weights, optimizer, schedule, RNG and objective state restored."""
    out, rank = run.out, run.rank
    if not checkpoints(out):
        if rank == 0:
            print(f"{out}: no checkpoint yet; starting from step 0", file=sys.stderr)
        return 0
    found = newest_intact_checkpoint(out, say=rank == 0)
    if found is None:
        raise DlmarchError(f"--resume: no intact checkpoint in {out / 'checkpoints'} (each was skipped, see above)")
    start = load_checkpoint(found, run.model, run.optimizer, run.scheduler, run.device, run.objective)
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


class Progress:
    """What rank 0 reports as steps complete: metrics.jsonl every --log-every steps (and the last),
    TensorBoard when installed, a progress bar; the first, last and smoothed losses for the summary."""

    def __init__(self, run: Run):
        self.run = run
        self.metrics_path = run.out / "metrics.jsonl"
        self.t_start, self.tokens_run, self.first_loss, self.last_loss, self.ema = time.time(), 0, None, None, None
        self.writer = _tensorboard(run.out) if run.rank == 0 else None
        self.bar = None
        if run.rank == 0 and not run.args.no_progress:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=run.total_steps, initial=run.start, desc=run.name, unit="step", dynamic_ncols=True)

    def step(self, done: int, r: StepResult) -> None:
        run, args = self.run, self.run.args
        self.tokens_run += r.tokens
        self.first_loss = r.loss if self.first_loss is None else self.first_loss
        self.last_loss = r.loss
        self.ema = r.loss if self.ema is None else 0.95 * self.ema + 0.05 * r.loss
        if run.rank == 0 and (done % args.log_every == 0 or done == run.total_steps):
            row = {"step": done, "epoch": round(done / run.schedule.steps_per_epoch, 4), "loss": r.loss,
                   "lr": run.scheduler.get_last_lr()[0], "grad_norm": r.grad_norm, "tokens": r.tokens,
                   "tokens_per_s": r.tokens / max(r.seconds, 1e-9), "elapsed_s": time.time() - self.t_start, **r.metrics}
            with open(self.metrics_path, "a") as f:
                f.write(json.dumps(row) + "\n")
            if self.writer:
                for k, v in row.items():
                    if k != "step":
                        self.writer.add_scalar(k, v, done)
        if self.bar:
            self.bar.set_postfix(loss=f"{self.ema:.4f}", tok_s=f"{self.tokens_run / max(time.time() - self.t_start, 1e-9):.0f}")
            self.bar.update(1)

    def close(self) -> None:
        if self.bar:
            self.bar.close()
        if self.writer:
            self.writer.close()
        self.elapsed = time.time() - self.t_start


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


def _tensorboard(out: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except Exception:
        return None
    return SummaryWriter(str(out / "tensorboard"))


# --- checkpoints ------------------------------------------------------------------------------------------------


def _state_dicts(model, optimizer):
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_optimizer_state_dict

    opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    msd = get_model_state_dict(model, options=opts)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    msd = {k: v for k, v in msd.items() if k in trainable}
    return msd, get_optimizer_state_dict(model, optimizer, options=opts)


def save_checkpoint(out: Path, step: int, model, optimizer, scheduler, rank: int, keep: int, objective=None) -> None:
    msd, osd = _state_dicts(model, optimizer)  # collective under FSDP: every rank takes part
    bad = next((k for k, v in msd.items() if v.is_floating_point() and not torch.isfinite(v).all()), None)
    if bad is not None:  # a checkpoint is a point to resume from: never one with non-finite weights
        good = newest_intact_checkpoint(out)
        where = f"the last good checkpoint is {good}" if good else "no intact checkpoint was written yet"
        raise TrainingError(f"non-finite weights ({bad}) after step {step}; not saved; {where}")
    if rank == 0:
        target = out / "checkpoints" / f"step-{step:08d}"
        with atomic_directory(target, overwrite=True) as tmp:
            st.save_file({k: v.contiguous() for k, v in msd.items()}, tmp / "weights.safetensors")
            torch.save(osd, tmp / "optimizer.pt")
            torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
            torch.save({"torch": torch.get_rng_state(), "python": random.getstate()}, tmp / "rng.pt")
            state = objective.state_dict() if objective is not None else {}
            if state:
                st.save_file(state, tmp / "objective.safetensors")
            write_json(tmp / "state.json", {"step": step, "time": time.time()})
            write_manifest(tmp)  # sizes and hashes, checked before a resume trusts this checkpoint
        for old in checkpoints(out)[:-keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    barrier()


def load_checkpoint(path: Path, model, optimizer, scheduler, device, objective=None) -> int:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict, set_optimizer_state_dict

    weights = st.load_file(path / "weights.safetensors")
    set_model_state_dict(model, weights, options=StateDictOptions(full_state_dict=True, strict=False))
    osd = torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True)
    set_optimizer_state_dict(model, optimizer, osd, options=StateDictOptions(full_state_dict=True))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
    rng = torch.load(path / "rng.pt", weights_only=True)
    torch.set_rng_state(rng["torch"])
    random.setstate(rng["python"])
    if objective is not None and (path / "objective.safetensors").exists():
        objective.load_state_dict(st.load_file(path / "objective.safetensors"))
    return int(json.loads((path / "state.json").read_text())["step"])


def _is_sharded(model) -> bool:
    return any(type(p).__name__ == "DTensor" or getattr(p, "device_mesh", None) is not None for p in model.parameters())


def finish(out: Path, model, base, tokenizer, args, rank: int, model_loader=None,
           info: TrainingRecord | None = None) -> dict:
    """Final artefacts: model/ (native, merged for LoRA, with the tokenizer, the training record
    training.json, and its decoding hints in config.json, which the sampler reads to warn about a
    mismatched block length), adapter/ for LoRA runs, model-hf/ with --export-hf."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    from .adapters import export_run_adapter

    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))  # collective
    if rank != 0:
        return {}
    if _is_sharded(model):  # FSDP: rebuild a plain copy on rank 0 from the gathered weights
        cpu = torch.device("cpu")
        base = model_loader(args, cpu, torch.float32) if model_loader else load_pretrained(args.model, dtype=torch.float32, device=cpu)
        model = wrap_lora(base, args) if args.lora_rank else base
        model.load_state_dict(full)
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
