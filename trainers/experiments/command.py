"""`python -m trainers.experiments`: run the experiments named (default: all), accumulating their
results in OUTPUT/results.json, then write report.md and the figures from the results alone."""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

from dlmarch.config import read_json
from dlmarch.errors import DlmarchError
from dlmarch.atomic import atomic_file

from ..toy import claim_output, pipeline_main
from . import blocks, cost, gap, l2d, methods, rl
from .plots import plots
from .report import report
from .setting import BLOCK_LENGTH, FULL, GEN_LENGTH, METHODS, QUICK

# name -> runner(out, plan) -> {results.json key: value}; in this order (later ones reuse earlier runs)
RUNNERS = {"methods": methods.run, "block_size": blocks.run, "gap": gap.run, "l2d_steps": l2d.run, "rl": rl.run,
           "cost": cost.run}
EXPERIMENTS = tuple(RUNNERS)
WRITES = ("base", "sudoku", "countdown", "gap", "l2d", "rl", "results.json", "report.md", "*.png")


def read_results(path: Path, quick: bool) -> dict:
    """The results of earlier commands on this output (resumed, --only), checked to be this command's."""
    try:
        results = read_json(path) if path.exists() else {}
        config = results.get("config", {})
        if not isinstance(config, dict) or isinstance(config.get("seconds", 0.0), bool) \
                or not isinstance(config.get("seconds", 0.0), (int, float)):
            raise DlmarchError(f"{path}: 'config' is not the object this command writes")
    except DlmarchError as e:
        raise DlmarchError(f"{e}; move it away to start over") from None
    if results and config.get("quick") != quick:
        held = {True: "a quick run", False: "a full run"}.get(config.get("quick"), "results this command did not write")
        raise DlmarchError(f"{path} holds {held}; use another --output")
    return results


def write_text(path: Path, text: str) -> None:
    with atomic_file(path) as f:  # a reader (or a resumed command) never sees half of it
        f.write(text)


def run(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m trainers.experiments", description=__doc__.split("\n\n")[0])
    p.add_argument("--output", required=True, help="directory of every run, results.json, report.md and the plots")
    p.add_argument("--quick", action="store_true", help="tiny budgets (a few minutes), used by the test suite")
    p.add_argument("--only", choices=EXPERIMENTS, action="append", help="run these experiments only (repeatable)")
    args = p.parse_args(argv)
    out, plan, t0 = Path(args.output), QUICK if args.quick else FULL, time.time()
    blocking = next((d for d in [out, *out.parents] if d.exists() and not d.is_dir()), None)
    if blocking is not None:  # a directory of the user's is refused before anything is written; ours is continued
        raise DlmarchError(f"--output {out}: {blocking} is a file, not a directory")
    claim_output(out, True, False, "trainers.experiments", WRITES)
    results_path = out / "results.json"
    results = read_results(results_path, args.quick)
    spent = results.get("config", {}).get("seconds", 0.0)
    for name in args.only or EXPERIMENTS:
        results.update(RUNNERS[name](out, plan))
        results["config"] = {"quick": args.quick, "plan": asdict(plan), "gen_length": GEN_LENGTH,
                             "block_length": BLOCK_LENGTH, "methods": {m: [t, *e] for m, (t, e) in METHODS.items()},
                             "tasks": list(methods.tasks_of(plan)),
                             "command": " ".join(["python -m trainers.experiments", *(argv or sys.argv[1:])]),
                             "seconds": spent + time.time() - t0}
        write_text(results_path, json.dumps(results, indent=2) + "\n")
        print(f"experiments: {name} done ({time.time() - t0:.0f}s)", file=sys.stderr)
    plots(out, results)
    write_text(out / "report.md", report(json.loads(json.dumps(results))))  # as read back from results.json
    print(f"experiments finished in {time.time() - t0:.0f}s: {out / 'report.md'}, {results_path}")
    return 0


def main(argv=None) -> int:
    return pipeline_main(run, argv)
