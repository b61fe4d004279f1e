"""What a run reports while it trains: metrics.jsonl, an experiment tracker, the console, loss.png.

- metrics.jsonl: one JSON row every --log-every steps (and the last): step, epoch, loss, lr,
  grad_norm, tokens, tokens/s, elapsed seconds and the objective's metrics; validation rows
  ({"step", "eval_loss", ...}) at every --eval-every steps (trainers/validation.py). A resumed run
  first cuts it back to the steps of the checkpoint it resumes from (`truncate_metrics`).
- --report-to: "tensorboard" (OUTPUT/tensorboard, torch.utils.tensorboard; the default when it is
  installed), "wandb" (Weights & Biases; WANDB_PROJECT, WANDB_MODE=offline and the other WANDB_*
  variables apply; the run's options are its config) or "none". A tracker asked for by name that is
  not installed is refused in one line before the run starts.
- The console: a tqdm bar on a terminal; with --no-progress, or when stdout or stderr is not a
  terminal (a redirected log, a batch job), one plain line every --log-every steps instead of bar
  frames (which would fill the log with carriage-return frames); with the default --log-every 1, at
  most about 100 lines a run (every ceil(steps / 100) steps); --print-every N sets the cadence.
- loss.png: the loss and its EMA, with the validation loss when there is one.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from dlmarch.errors import DlmarchError

TRACKERS = ("tensorboard", "wandb", "none")


def check_tracker(report_to: str | None) -> None:
    """Refuse, before anything is written, a tracker asked for by name that cannot be imported."""
    if report_to == "wandb":
        try:
            import wandb  # noqa: F401
        except ImportError:
            raise DlmarchError("--report-to wandb needs the wandb package (pip install 'dlmarch[wandb]')") from None
    elif report_to == "tensorboard" and _tensorboard_writer_class() is None:
        raise DlmarchError("--report-to tensorboard needs the tensorboard package (pip install 'dlmarch[tensorboard]')")


def _tensorboard_writer_class():
    try:
        from torch.utils.tensorboard import SummaryWriter
    except Exception:
        return None
    return SummaryWriter


class Tracker:
    """One experiment tracker behind one interface: log(values, step), close()."""

    def __init__(self, kind: str, out: Path, name: str, args):
        self.kind, self.writer, self.run = kind, None, None
        if kind == "tensorboard":
            cls = _tensorboard_writer_class()
            self.writer = cls(str(out / "tensorboard")) if cls else None
        elif kind == "wandb":
            import wandb

            options = {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(args).items()}
            self.run = wandb.init(name=f"{name}:{out.name}", dir=str(out), config=options, job_type=name)

    def log(self, values: dict, step: int) -> None:
        numbers = {k: v for k, v in values.items() if k != "step" and isinstance(v, (int, float))}
        if self.writer is not None:
            for k, v in numbers.items():
                self.writer.add_scalar(k, v, step)
        if self.run is not None:
            self.run.log(numbers, step=step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        if self.run is not None:
            self.run.finish()


def _tty() -> bool:
    return sys.stdout.isatty() and sys.stderr.isatty()


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s" if m else f"{s}s"


class Progress:
    """What rank 0 reports as steps complete (see the module docstring); the first, last and
    smoothed losses for the summary. `run` is trainers.loop.Run."""

    def __init__(self, run):
        self.run = run
        args = run.args
        self.metrics_path = run.out / "metrics.jsonl"
        self.t_start, self.tokens_run, self.first_loss, self.last_loss, self.ema = time.time(), 0, None, None, None
        self.last_eval = None
        kind = getattr(args, "report_to", None) or "tensorboard"
        self.tracker = Tracker(kind, run.out, run.name, args) if run.rank == 0 else None
        self.bar = None
        self.plain = run.rank == 0 and (args.no_progress or not _tty())
        self.print_every = getattr(args, "print_every", None) or max(args.log_every, -(-run.total_steps // 100))
        if run.rank == 0 and not self.plain:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=run.total_steps, initial=run.start, desc=run.name, unit="step", dynamic_ncols=True)

    def _write(self, row: dict, step: int) -> None:
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(row) + "\n")
        if self.tracker is not None:
            self.tracker.log(row, step)

    def step(self, done: int, r) -> None:
        """After optimizer step `done` (1-based) with its StepResult."""
        run, args = self.run, self.run.args
        self.tokens_run += r.tokens
        self.first_loss = r.loss if self.first_loss is None else self.first_loss
        self.last_loss = r.loss
        self.ema = r.loss if self.ema is None else 0.95 * self.ema + 0.05 * r.loss
        last = done == run.total_steps
        if run.rank == 0 and (done % args.log_every == 0 or last):
            row = {"step": done, "epoch": round(done / run.schedule.steps_per_epoch, 4), "loss": r.loss,
                   "lr": run.scheduler.get_last_lr()[0], "grad_norm": r.grad_norm, "tokens": r.tokens,
                   "tokens_per_s": r.tokens / max(r.seconds, 1e-9), "elapsed_s": time.time() - self.t_start, **r.metrics}
            self._write(row, done)
        if self.plain and (done % self.print_every == 0 or last):
            elapsed = time.time() - self.t_start
            left = elapsed / max(done - run.start, 1) * (run.total_steps - done)
            print(f"{run.name} step {done}/{run.total_steps} loss {r.loss:.4f} (EMA {self.ema:.4f}) "
                  f"lr {run.scheduler.get_last_lr()[0]:.3g} grad_norm {r.grad_norm:.3g} "
                  f"{self.tokens_run / max(elapsed, 1e-9):.0f} tok/s elapsed {_duration(elapsed)} "
                  f"eta {_duration(left)}", file=sys.stderr, flush=True)
        if self.bar:
            postfix = dict(loss=f"{self.ema:.4f}", tok_s=f"{self.tokens_run / max(time.time() - self.t_start, 1e-9):.0f}")
            if self.last_eval is not None:
                postfix["eval"] = f"{self.last_eval:.4f}"
            self.bar.set_postfix(**postfix)
            self.bar.update(1)

    def eval(self, done: int, values: dict) -> None:
        """A validation result at step `done`: {"eval_loss": ..., ...}."""
        self.last_eval = values["eval_loss"]
        if self.run.rank != 0:
            return
        self._write({"step": done, **values}, done)
        if self.plain:
            print(f"{self.run.name} step {done}/{self.run.total_steps} eval_loss {values['eval_loss']:.4f}",
                  file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar:
            self.bar.close()
        if self.tracker is not None:
            self.tracker.close()
        self.elapsed = time.time() - self.t_start


def plot_losses(metrics_path: Path, png: Path, title: str) -> None:
    """The training loss, its EMA and (when logged) the validation loss, against the step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(x) for x in metrics_path.read_text().splitlines() if x.strip()]
    train = [r for r in rows if "loss" in r]
    evals = [r for r in rows if "eval_loss" in r]
    if not train and not evals:
        return
    steps, losses = [r["step"] for r in train], [r["loss"] for r in train]
    ema, smooth = None, []
    for v in losses:
        ema = v if ema is None else 0.9 * ema + 0.1 * v
        smooth.append(ema)
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(steps, losses, alpha=0.3, label="loss")
    ax.plot(steps, smooth, label="EMA 0.9")
    if evals:
        ax.plot([r["step"] for r in evals], [r["eval_loss"] for r in evals], marker="o", label="validation (fixed noise)")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)


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


__all__ = ["TRACKERS", "Progress", "Tracker", "check_tracker", "plot_losses", "truncate_metrics"]
