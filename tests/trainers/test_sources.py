"""--data sources: JSONL, parquet, arrow, CSV, a datasets folder and a cached hub dataset give the same
examples; field mapping; splits; bad rows named by file and row."""

from __future__ import annotations

import csv
import json

import pytest

from tests.dlmarch.test_hub import fake_hub_cache
from trainers.data import DataError, load_examples
from trainers.sources import open_source, split_files
from trainers.tokenizer import build_char_tokenizer

datasets = pytest.importorskip("datasets")
pa = pytest.importorskip("pyarrow")
import pyarrow.parquet as pq  # noqa: E402

TOK = build_char_tokenizer(pad_to=8)
ROWS = [{"question": f"{i}+{i}?", "answer": str(2 * i)} for i in range(5)]
TEST_ROWS = [{"question": "9+9?", "answer": "18"}]
FIELDS = {"question": "prompt", "answer": "response"}


def jsonl_reference(tmp_path, rows=ROWS):
    p = tmp_path / "ref.jsonl"
    p.write_text("".join(json.dumps({"prompt": r["question"], "response": r["answer"]}) + "\n" for r in rows))
    return load_examples(p, TOK, 64, eos_id=TOK.eos_token_id)[0]


def ids(examples):
    return [(e.ids, e.prompt_len) for e in examples]


def write_csv(path, rows):
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def test_every_file_kind_gives_the_jsonl_examples(tmp_path):
    want = ids(jsonl_reference(tmp_path))
    table = pa.Table.from_pylist(ROWS)
    pq.write_table(table, tmp_path / "d.parquet")
    with pa.OSFile(str(tmp_path / "d.arrow"), "wb") as f, pa.ipc.new_file(f, table.schema) as w:
        w.write_table(table)
    write_csv(tmp_path / "d.csv", ROWS)
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    datasets.Dataset.from_list(ROWS).save_to_disk(str(tmp_path / "saved"))  # its .arrow: the IPC stream format
    (tmp_path / "saved" / "data-00000-of-00001.arrow").rename(tmp_path / "stream.arrow")
    for name in ("d.parquet", "d.arrow", "stream.arrow", "d.csv", "d.jsonl"):
        got, report = load_examples(tmp_path / name, TOK, 64, eos_id=TOK.eos_token_id, fields=FIELDS)
        assert ids(got) == want, name
        assert report.kept == 5


def test_datasets_folder_with_splits(tmp_path):
    dd = datasets.DatasetDict({"train": datasets.Dataset.from_list(ROWS), "test": datasets.Dataset.from_list(TEST_ROWS)})
    dd.save_to_disk(str(tmp_path / "dd"))
    datasets.Dataset.from_list(ROWS).save_to_disk(str(tmp_path / "one"))
    got, _ = load_examples(tmp_path / "dd", TOK, 64, eos_id=TOK.eos_token_id, fields=FIELDS)
    assert ids(got) == ids(jsonl_reference(tmp_path))
    got, _ = load_examples(tmp_path / "dd", TOK, 64, eos_id=TOK.eos_token_id, fields=FIELDS, split="test")
    assert ids(got) == ids(jsonl_reference(tmp_path, TEST_ROWS))
    got, _ = load_examples(tmp_path / "one", TOK, 64, eos_id=TOK.eos_token_id, fields=FIELDS)  # a plain Dataset
    assert ids(got) == ids(jsonl_reference(tmp_path))
    with pytest.raises(DataError, match=r"no split 'validation' \(its splits: train, test\)"):
        load_examples(tmp_path / "dd", TOK, 64, eos_id=TOK.eos_token_id, fields=FIELDS, split="validation")
    (tmp_path / "plain").mkdir()
    with pytest.raises(DataError, match="not one written by datasets' save_to_disk"):
        load_examples(tmp_path / "plain", TOK, 64, eos_id=TOK.eos_token_id)


def test_hub_dataset_from_the_cache_offline(tmp_path, monkeypatch):
    src = tmp_path / "repo"
    (src / "data").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(ROWS[:3]), src / "data" / "train-00000-of-00002.parquet")
    pq.write_table(pa.Table.from_pylist(ROWS[3:]), src / "data" / "train-00001-of-00002.parquet")
    pq.write_table(pa.Table.from_pylist(TEST_ROWS), src / "data" / "test-00000-of-00001.parquet")
    (src / "README.md").write_text("card")
    cache = tmp_path / "hub"
    fake_hub_cache(cache, "someone/arith", src, repo_type="dataset")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    got, _ = load_examples("someone/arith", TOK, 64, eos_id=TOK.eos_token_id, fields=FIELDS)
    assert ids(got) == ids(jsonl_reference(tmp_path))
    got, _ = load_examples("someone/arith", TOK, 64, eos_id=TOK.eos_token_id, fields=FIELDS, split="test")
    assert ids(got) == ids(jsonl_reference(tmp_path, TEST_ROWS))
    with pytest.raises(DataError, match="someone/absent: not a local path, and not in the hub cache"):
        load_examples("someone/absent", TOK, 64, eos_id=TOK.eos_token_id)


def test_split_files_follow_the_hub_naming_convention(tmp_path):
    for rel in ("data/train-00000-of-00001.parquet", "train.jsonl", "test/0000.parquet", "default/train/0.parquet",
                "data/trainer-notes.parquet", ".cache/train.parquet", "README.md"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("")
    got = [str(p.relative_to(tmp_path)) for p in split_files(tmp_path, "train")]
    assert got == ["data/train-00000-of-00001.parquet", "default/train/0.parquet", "train.jsonl"]


def test_bad_rows_are_named_by_source_and_row(tmp_path):
    write_csv(tmp_path / "d.csv", [{"question": "a", "answer": "b"}, {"question": "c", "answer": ""}])
    with pytest.raises(DataError, match=r"d.csv: row 2: empty response"):
        load_examples(tmp_path / "d.csv", TOK, 64, eos_id=TOK.eos_token_id, fields=FIELDS)
    with pytest.raises(DataError, match=r"d.csv: row 1: no column 'question' \(its columns: q, answer\)"):
        write_csv(tmp_path / "d.csv", [{"q": "a", "answer": "b"}])
        load_examples(tmp_path / "d.csv", TOK, 64, eos_id=TOK.eos_token_id, fields=FIELDS)
    source = open_source(tmp_path / "d.csv")
    assert source.unit == "row" and list(source.rows) == [(1, {"q": "a", "answer": "b"}, None)]
