"""The shared runner of `python -m trainers.<method>`: options, the loop, one-line errors."""

from __future__ import annotations

import sys
from typing import Callable

from dlmarch.errors import DlmarchError

from .loop import TrainingError, train
from .options import common_parser, parse


def run(name: str, description: str, add_options: Callable, objective_factory: Callable, argv=None, **train_kw) -> int:
    parser = common_parser(f"python -m trainers.{name}", description)
    add_options(parser)
    try:
        args = parse(parser, argv)
        train(objective_factory, args, name=name, **train_kw)
    except TrainingError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except (DlmarchError, FileExistsError, ValueError) as e:
        print(f"error: {str(e).splitlines()[0]}", file=sys.stderr)
        return 2
    return 0
