"""`python -m trainers.evaluate --task TASK --score FILE [FILE ...]`: re-score generations without a
model. Reads d1's generation files ({"generations": [{"question", "generations", "ground_truth"}]},
one per process) or this command's JSONL, checks every value where it is read, and writes the
per-item verdicts (FILE.verdicts.jsonl) and the summary beside them."""

from __future__ import annotations

import json
from pathlib import Path

from dlmarch.config import read_text
from dlmarch.errors import DlmarchError
from dlmarch.atomic import atomic_file, write_json

from .eval_records import check_output, summary_path
from .eval_scoring import score_record, summarize, table
from .tasks.common import checked_jsonl, is_int, wrong


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
        return _read_d1_file(task, path, data)
    return checked_jsonl(path, lambda rec: _record_problem(task, rec), "generations")


def _read_d1_file(task, path: Path, data: dict) -> list[dict]:
    """The records of d1's generation file `data` (read from `path`), item i as row i."""
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


def _record_problem(task, rec) -> str | None:
    """What is wrong with one record of our JSONL (index, sample, generation, reference), or None."""
    if not isinstance(rec, dict) or "generation" not in rec or "reference" not in rec:
        return "expected a record with \"generation\" and \"reference\""
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
    """(summary, verdicts) over the generations of every file. d1 writes one file per process, its
    items numbered from 0 in each: a file's items follow the previous files' (ours carry their index)."""
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


def rescore_main(task, args, extra, ks) -> int:
    """The --score mode of the command: verdicts to --output (default FILE.verdicts.jsonl), the
    summary beside them, the table printed."""
    paths = [Path(f) for f in args.score]
    out = Path(args.output) if args.output else paths[0].with_name(paths[0].stem + ".verdicts.jsonl")
    check_output(out, {f"--score file {p}": p for p in paths}, args, "verdicts")
    summary, records = rescore(task, paths, extra, ks)
    with atomic_file(out) as f:  # a failure (a full disk) leaves neither half a file nor a temporary one
        f.write("".join(json.dumps(r) + "\n" for r in records))
    summary.update(task=task.name, primary=task.primary, sources=[str(p) for p in paths], verdicts=str(out))
    write_json(summary_path(out), summary)
    print(table(task, summary))
    print(f"verdicts: {out}")
    return 0
