"""The shared runner of `python -m trainers.<method>`: options, the loop, one-line errors.

Exit status 0: done; 1: the run stopped (a non-finite loss); 2: bad input, reported as one line
naming the file (and line, key or flag), with nothing left at --output that this run created.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Callable

from dlmarch.errors import DlmarchError, os_error_line

from .checkpoints import TrainingError
from .loop import train
from .options import common_parser, parse


def run(name: str, description: str, add_options: Callable, objective_factory: Callable, argv=None, **train_kw) -> int:
    parser = common_parser(f"python -m trainers.{name}", description)
    add_options(parser)
    out = None
    try:
        args = parse(parser, argv)
        out = Path(args.output)
        fresh = not out.exists()
        train(objective_factory, args, name=name, **train_kw)
    except TrainingError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except (DlmarchError, FileExistsError, ValueError, OSError) as e:
        line = os_error_line(e) if isinstance(e, OSError) and not isinstance(e, FileExistsError) else str(e)
        print(f"error: {line.splitlines()[0] if line else type(e).__name__}", file=sys.stderr)
        if out is not None and fresh:
            _remove_if_only_started(out)
        return 2
    return 0


def _remove_if_only_started(out: Path) -> None:
    """Bad input found after the run directory was made: remove it when it holds nothing but what a
    start writes (run.json), so that a refused run leaves nothing behind. Anything else is kept."""
    try:
        if out.is_dir() and {p.name for p in out.iterdir()} <= {"run.json"}:
            shutil.rmtree(out)
    except OSError:
        pass
