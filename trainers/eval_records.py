"""The files of one `trainers.evaluate` run: generations appended batch by batch to
`OUT.partial-RANK.jsonl` (a line torn by a kill dropped and its batch redone) and merged into OUT;
what they were made from (`OUT.run.json` while under way, the summary's `made_from` once done:
the model's fingerprint, the rows' digest, the options), which `--resume` must match; and the
output guard's policy for OUT and the summary beside it."""

from __future__ import annotations

import glob
import hashlib
import json
import os
import re
import sys
from pathlib import Path

from dlmarch.config import read_json
from dlmarch.errors import DlmarchError
from dlmarch.atomic import atomic_file, write_json
from dlmarch.outputs import check_file_output
from dlmarch.sampling import DecodingOptions

# What generations are made from: --resume continues only a run that agrees on every one.
RUN_KEYS = ("model_fingerprint", "data_sha256", "task", "rows", "samples", "batch_size", "seed", "reasoning_prefix",
            "system_prompt", "attend_padding", *(n for n in DecodingOptions.names() if n != "seed"))


# ---------------------------------------------------------------------------------------------
# Generations: partial files, merged output


def partials(out: Path) -> list[Path]:
    """Every process's partial file of OUT (OUT.partial-RANK.jsonl, RANK a number), in name order: the
    name is matched literally, so `eval[1].jsonl` never claims `eval1.jsonl`'s files."""
    pattern = re.compile(re.escape(out.name) + r"\.partial-\d+\.jsonl")
    return sorted(p for p in out.parent.glob(glob.escape(out.name) + ".partial-*.jsonl") if pattern.fullmatch(p.name))


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


def read_done(out: Path, with_final: bool) -> dict[tuple[int, int], dict]:
    """Finished records of a run: every complete line of its partial files (a line cut by a kill is
    dropped, and its batch redone), and with `with_final` those of a merged output already there."""
    done = {}
    for p in ([out] if with_final and out.exists() else []) + partials(out):
        for rec in _read_lines(p):
            done.setdefault((rec["index"], rec["sample"]), rec)
    return done


def open_partial(out: Path, rank: int):
    """This process's partial file, opened for appending, a line cut by a kill removed first."""
    path = out.parent / f"{out.name}.partial-{rank}.jsonl"
    if path.exists():
        data = path.read_bytes()
        if data and not data.endswith(b"\n"):
            with open(path, "r+b") as f:
                f.truncate(data.rfind(b"\n") + 1)
    return open(path, "a")


def append_batch(part, records: list[dict]) -> None:
    """One batch's records appended and synced in one write: a kill loses at most this batch."""
    part.write("".join(json.dumps(r) + "\n" for r in records))
    part.flush()
    os.fsync(part.fileno())


def merge(output: Path, units: list[tuple[int, int]], with_final: bool) -> list[dict]:
    """Once every process is done: the records of every (row, sample) of `units`, in order, written
    to `output` in one atomic replace, and the partial files removed."""
    merged = read_done(output, with_final)
    lost = [u for u in units if u not in merged]
    if lost:
        raise DlmarchError(f"{output}: {len(lost)} generations missing after every process finished, first {lost[0]}")
    records = [merged[u] for u in units]
    with atomic_file(output) as f:
        f.write("".join(json.dumps(r) + "\n" for r in records))
    for p in partials(output):
        p.unlink()
    return records


# ---------------------------------------------------------------------------------------------
# What a run is made from; the output guard


def summary_path(out: Path) -> Path:
    """The summary beside OUT (OUT.summary.json)."""
    return out.with_suffix(".summary.json")


def marker_path(out: Path) -> Path:
    """The record of a run under way (OUT.run.json): what its generations are made from."""
    return out.with_name(out.name + ".run.json")


def has_run_record(out: Path) -> bool:
    """Whether OUT.run.json is a record this command wrote (a JSON object naming the model's fingerprint
    and the rows' digest, which every record holds), not merely a file of that name."""
    try:
        raw = json.loads(marker_path(out).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(raw, dict) and all(isinstance(raw.get(k), str) for k in ("model_fingerprint", "data_sha256"))


def _summary_names(out: Path, key: str) -> bool:
    """Whether the summary beside `out` is ours and names `out` as its generations (or verdicts)."""
    try:
        summary = json.loads(summary_path(out).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(summary, dict) and summary.get(key) == str(out)


def check_output(out: Path, inputs: dict, args, key: str) -> None:
    """The output guard's one-file policy for --output and the summary beside it: never an input or
    inside a model directory; an existing file only with --resume (generations) or, with
    --overwrite, when this command wrote it (its summary names it, or an interrupted run's record is
    there)."""
    ours = lambda p: _summary_names(p, key) or has_run_record(p)  # noqa: E731
    resume = getattr(args, "resume", False)
    check_file_output(out, inputs, "--output", args.overwrite, ours, may_exist=resume and ours(out))
    summary = summary_path(out)
    check_file_output(summary, inputs, "the summary of --output", True, lambda p: _summary_names(out, key),
                      may_exist=_summary_names(out, key))


def made_from(model: str | Path, rows: list[dict]) -> dict:
    """What generations are made from, beside the options: the model's files and the rows."""
    from dlmarch.manifests import directory_fingerprint

    digest = hashlib.sha256(json.dumps(rows, sort_keys=True, default=str).encode()).hexdigest()
    return {"model_fingerprint": directory_fingerprint(model), "data_sha256": digest}


def check_run(out: Path, run: dict, args, rank: int) -> None:
    """Refuse to mix runs: partial files without --resume (--overwrite removes them, ours), or
    --resume of generations made from another model, other rows or other options (recorded in
    OUT.run.json while a run is under way, and in the summary once it is done)."""
    marker = marker_path(out)
    if partials(out) and not args.resume:
        if not args.overwrite:
            raise DlmarchError(f"{out}: an interrupted run's partial files are there; pass --resume to continue it, "
                               f"--overwrite to replace it, or another --output")
        if not has_run_record(out):  # a run writes OUT.run.json before its first partial file
            raise DlmarchError(f"{out}: {partials(out)[0].name} and no {marker.name} beside it: no record that a "
                               f"dlmarch run made them, so --overwrite does not remove them; move them away")
        if rank == 0:
            for p in partials(out):
                p.unlink()
    if args.resume and (out.exists() or partials(out)):
        before = None
        if marker.is_file():
            before = read_json(marker)  # one line naming it when it is not a JSON object
        elif _summary_names(out, "generations"):
            before = json.loads(summary_path(out).read_text()).get("made_from")
        if not isinstance(before, dict):
            raise DlmarchError(f"{out}: no record of what these generations were made from ({marker}); "
                               f"--resume refused (pass --overwrite to start over)")
        changed = [k for k in RUN_KEYS if before.get(k) != run.get(k)]
        if changed:
            what = {"model_fingerprint": "another --model", "data_sha256": "other --data rows"}
            named = ", ".join(what.get(k, k) for k in changed)
            raise DlmarchError(f"{marker if marker.is_file() else summary_path(out)}: --resume with {named} than "
                               f"the generations in {out} were made from; refused (another --output, or --overwrite)")
    if marker.exists() and not has_run_record(out):
        raise DlmarchError(f"{marker} exists and is not a run record this command wrote; not replaced: move it away")
    if rank == 0:
        out.parent.mkdir(parents=True, exist_ok=True)
        write_json(marker, run)

