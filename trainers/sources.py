"""Where training rows come from: `--data` as a file, a `datasets` folder or a hub dataset name.

- JSONL (`.jsonl`, or any file not named below): one JSON object per line (dlmarch.config.jsonl_rows).
- Parquet (`.parquet`), Arrow (`.arrow`, IPC file or stream, what `datasets` writes) and CSV (`.csv`,
  every value a string, as written) files.
- A folder written by `datasets`' `save_to_disk` (a Dataset, or a DatasetDict: `--data-split`
  picks one, "train" by default), read with `datasets.load_from_disk` (pip install 'dlmarch[datasets]').
- A hub dataset id (`owner/name`) not naming a local path: its snapshot in huggingface_hub's cache
  (offline; `huggingface-cli download --repo-type dataset owner/name` puts it there), whose data files
  for `--data-split` are found by the Hub's naming convention (`data/train-00000-of-00001.parquet`,
  `train.jsonl`, `train/0000.parquet`, ...).

Field mapping: `--prompt-field`, `--response-field`, `--messages-field` (and `--text-field` for
pretraining) name the columns that hold what the trainers call prompt, response, messages and text,
as TRL's and dllm's dataset options do.

Every source yields (row number, row, error) like `jsonl_rows`, with a label of what the number
counts ("line" for JSONL, "row" otherwise), so that a bad row is named the same way everywhere.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from dlmarch.config import jsonl_rows
from dlmarch.errors import DlmarchError
from dlmarch.hub import is_hub_id, snapshot

TABLE_SUFFIXES = (".parquet", ".arrow", ".csv")
DATA_SUFFIXES = (".parquet", ".arrow", ".csv", ".jsonl", ".json")
FIELDS = ("prompt", "response", "messages", "text")


class SourceError(DlmarchError):
    pass


@dataclass
class Source:
    """An opened --data: `name` for messages, `unit` what row numbers count, `rows` the iterator."""

    name: str
    unit: str
    rows: Iterator[tuple[int, object, str | None]]


def add_options(group) -> None:
    """The data-source flags (argparse group)."""
    group.add_argument("--data-split", default="train",
                       help="split of a datasets folder (DatasetDict) or a hub dataset")
    for field in FIELDS:
        group.add_argument(f"--{field}-field", default=None,
                           help=f"the column holding the {field} (default: \"{field}\")")


def field_map(args) -> dict[str, str]:
    """{column name in the data: our name} from --prompt-field etc. (only the renamed ones)."""
    out = {}
    for field in FIELDS:
        column = getattr(args, f"{field}_field", None)
        if column and column != field:
            out[column] = field
    return out


def open_source(data: str | Path, *, split: str = "train", fields: dict[str, str] | None = None) -> Source:
    """The rows of --data (see the module docstring); fields renames columns to our names."""
    text = str(data)
    path = Path(data)
    if path.is_dir():
        source = _dataset_folder(path, split)
    elif path.exists():
        source = _file(path)
    elif is_hub_id(text):
        source = _hub_dataset(text, split)
    else:
        raise SourceError(f"{path}: no such file")
    if fields:
        source.rows = _renamed(source.rows, fields, source)
    return source


def _renamed(rows, fields: dict[str, str], source: Source):
    for n, row, error in rows:
        if isinstance(row, dict):
            missing = [c for c in fields if c not in row]
            if missing:
                error = error or (f"{source.name}: {source.unit} {n}: no column {missing[0]!r} "
                                  f"(its columns: {', '.join(map(str, row))})")
                row = None
            else:
                row = {fields.get(k, k): v for k, v in row.items() if k not in fields.values() or k in fields}
        yield n, row, error


def _file(path: Path) -> Source:
    suffix = path.suffix.lower()
    if suffix not in TABLE_SUFFIXES:
        return Source(str(path), "line", jsonl_rows(path))
    if suffix == ".csv":
        return Source(str(path), "row", _csv_rows(path))
    table = _read_table(path)
    return Source(str(path), "row", _table_rows(table))


def _read_table(path: Path):
    import pyarrow as pa  # a dependency of datasets (the `datasets` extra)

    try:
        if path.suffix.lower() == ".parquet":
            import pyarrow.parquet as pq

            return pq.read_table(path)
        with pa.memory_map(str(path)) as f:  # .arrow: the IPC file format, or the stream format datasets writes
            try:
                return pa.ipc.open_file(f).read_all()
            except pa.ArrowInvalid:
                f.seek(0)
                return pa.ipc.open_stream(f).read_all()
    except (pa.ArrowException, OSError) as e:
        line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise SourceError(f"{path}: cannot read as {path.suffix[1:]} ({line})") from None


def _table_rows(table):
    for n, row in enumerate(table.to_pylist(), 1):
        yield n, row, None


def _csv_rows(path: Path):
    try:
        with open(path, newline="", encoding="utf-8") as f:
            for n, row in enumerate(csv.DictReader(f), 1):
                if None in row:  # more cells than header names
                    yield n, None, f"{path}: row {n}: {len(row) - 1 + len(row[None])} cells for {len(row) - 1} columns"
                else:
                    yield n, dict(row), None
    except UnicodeDecodeError as e:
        raise SourceError(f"{path}: invalid UTF-8 at byte {e.start}") from None
    except csv.Error as e:
        raise SourceError(f"{path}: invalid CSV ({e})") from None


def is_dataset_folder(path: Path) -> bool:
    """A folder written by datasets' save_to_disk (a Dataset or a DatasetDict)."""
    return any((path / name).exists() for name in ("state.json", "dataset_dict.json"))


def _dataset_folder(path: Path, split: str) -> Source:
    if not is_dataset_folder(path):
        raise SourceError(f"--data {path} is a directory, but not one written by datasets' save_to_disk "
                          f"(no dataset_dict.json or state.json); pass a JSONL, parquet, arrow or CSV file")
    try:
        import datasets
    except ImportError:
        raise SourceError(f"{path}: reading a datasets folder needs the datasets package "
                          f"(pip install 'dlmarch[datasets]')") from None
    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as e:
        line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise SourceError(f"{path}: cannot load the datasets folder ({line})") from None
    name = str(path)
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise SourceError(f"{path}: no split {split!r} (its splits: {', '.join(ds)}); choose one with --data-split")
        ds, name = ds[split], f"{path} [{split}]"
    return Source(name, "row", ((n, row, None) for n, row in enumerate(ds, 1)))


def split_files(root: Path, split: str) -> list[Path]:
    """The data files of `split` in a dataset repository, by the Hub's naming convention: a file or
    folder named after the split (`train.jsonl`, `data/train-00000-of-00001.parquet`, `train/x.parquet`,
    `default/train/0000.parquet`), in name order."""
    pattern = re.compile(rf"(^|[/_.-]){re.escape(split)}([/_.-]|$)")
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in DATA_SUFFIXES
                   and not any(part.startswith(".") for part in p.relative_to(root).parts))
    return [p for p in files if pattern.search(str(p.relative_to(root).with_suffix("")))]


def _hub_dataset(repo_id: str, split: str) -> Source:
    root = snapshot(repo_id, "dataset", what="--data")
    files = split_files(root, split)
    if not files:
        raise SourceError(f"--data {repo_id}: no data files for split {split!r} in its cached snapshot {root}; "
                          f"choose one with --data-split")
    kinds = {p.suffix.lower() for p in files}
    if len(kinds) > 1:
        raise SourceError(f"--data {repo_id}: split {split!r} mixes {', '.join(sorted(kinds))} files; pass one file")

    def rows():
        n = 0
        for f in files:
            for _, row, error in _file(f).rows:
                n += 1
                yield n, row, error

    return Source(f"{repo_id} [{split}]", "row", rows())


__all__ = ["Source", "SourceError", "add_options", "field_map", "is_dataset_folder", "open_source", "split_files"]
