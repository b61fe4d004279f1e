"""trainers.evaluate's --output: --resume continues only generations of the same model, rows and
options, and a kill's torn last line (even inside a UTF-8 character) is dropped and regenerated."""

from __future__ import annotations

import json
import shutil

import pytest

import trainers.evaluate as ev
from dlmarch import safetensors_io as st
from tests.helpers import tiny_model_dir


def args_for(model, data, out, *extra):
    return ["--model", str(model), "--task", "countdown", "--data", str(data), "--gen-length", "8",
            "--block-length", "8", "--batch-size", "2", "--no-system-prompt", "--output", str(out), *extra]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("eval-out")
    tiny_model_dir(tmp / "m")
    other = tmp / "other"  # the same architecture and tokenizer, other weights
    shutil.copytree(tmp / "m", other)
    w = st.load_file(other / "model.safetensors")
    w = {k: v * 1.5 if v.is_floating_point() else v for k, v in w.items()}
    st.save_file(w, other / "model.safetensors")
    data = tmp / "d.jsonl"
    data.write_text("".join(json.dumps({"input": f"{i},{i + 1},3", "output": str(2 * i + 4)}) + "\n" for i in range(6)))
    data2 = tmp / "d2.jsonl"  # as many rows, other numbers
    data2.write_text("".join(json.dumps({"input": f"{i},{i + 2},5", "output": str(2 * i + 7)}) + "\n" for i in range(6)))
    full = tmp / "full.jsonl"
    assert ev.main(args_for(tmp / "m", data, full)) == 0
    return tmp, other, data, data2, full


def interrupted(tmp, model, data, out, monkeypatch):
    """A run killed after its first batch: one batch in the partial file, nothing merged."""
    import dlmarch.sampling.llada as llada  # what the dispatcher calls for LLaDA (dlmarch.sampling.dispatch)

    real, calls = llada.generate, {"n": 0}

    def dies(*a, **kw):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*a, **kw)

    monkeypatch.setattr(llada, "generate", dies)
    with pytest.raises(KeyboardInterrupt):
        ev.main(args_for(model, data, out))
    monkeypatch.setattr(llada, "generate", real)
    (part,) = tmp.glob(out.name + ".partial-*.jsonl")
    return part


def test_resume_refuses_generations_of_another_model_or_other_rows(setup, tmp_path, monkeypatch, capsys):
    tmp, other, data, data2, _ = setup
    out = tmp / "mixed.jsonl"
    part = interrupted(tmp, tmp / "m", data, out, monkeypatch)
    before = part.read_bytes()
    capsys.readouterr()
    assert ev.main(args_for(other, data, out, "--resume")) == 2
    assert "another --model" in capsys.readouterr().err
    assert ev.main(args_for(tmp / "m", data2, out, "--resume")) == 2
    assert "other --data rows" in capsys.readouterr().err
    assert part.read_bytes() == before and not out.exists()
    assert ev.main(args_for(tmp / "m", data, out, "--resume")) == 0  # the same model and rows: continued
    # A finished output keeps what it was made from (in its summary): a later --resume checks it too.
    assert ev.main(args_for(other, data, out, "--resume")) == 2
    assert ev.main(args_for(other, data, out, "--overwrite")) == 0


def test_a_line_torn_inside_a_utf8_character_is_dropped_and_regenerated(setup, monkeypatch, capsys):
    tmp, _, data, _, full = setup
    out = tmp / "torn.jsonl"
    part = interrupted(tmp, tmp / "m", data, out, monkeypatch)
    line = json.dumps({"index": 2, "sample": 0, "generation": "caf\u00e9"}, ensure_ascii=False).encode()
    with open(part, "ab") as f:
        f.write(line[: line.index("\u00e9".encode()) + 1])  # cut after the first byte of a two-byte character
    capsys.readouterr()
    assert ev.main(args_for(tmp / "m", data, out, "--resume")) == 0
    assert "dropped a torn last line" in capsys.readouterr().err
    strip = lambda text: [{k: v for k, v in json.loads(x).items()} for x in text.splitlines()]  # noqa: E731
    assert strip(out.read_text()) == strip(full.read_text())


def test_overwrite_removes_partial_files_only_with_the_record_a_run_made(setup, monkeypatch, capsys):
    """A killed run's partial files go with --overwrite (its OUT.run.json says a run made them); files
    of that name with no such record are the user's: refused in one line, left as they were."""
    tmp, _, data, _, _ = setup
    out = tmp / "killed.jsonl"
    part = interrupted(tmp, tmp / "m", data, out, monkeypatch)
    assert (tmp / "killed.jsonl.run.json").is_file()
    assert ev.main(args_for(tmp / "m", data, out, "--overwrite")) == 0 and not part.exists()
    theirs = tmp / "theirs.jsonl.partial-0.jsonl"
    theirs.write_text("not ours\n")
    capsys.readouterr()
    assert ev.main(args_for(tmp / "m", data, tmp / "theirs.jsonl", "--overwrite")) == 2
    err = capsys.readouterr().err
    assert "no theirs.jsonl.run.json" in err and len(err.strip().splitlines()) == 1
    assert theirs.read_text() == "not ours\n" and not (tmp / "theirs.jsonl").exists()


def test_partial_files_and_run_record_are_matched_literally_and_never_a_users(setup, capsys):
    """OUT.partial-RANK.jsonl is matched by name literally (`e[1].jsonl` never claims `e1.jsonl`'s
    files, nor `OUT.partial-notes.jsonl`), and a user's file named OUT.run.json is neither replaced,
    removed, nor taken as proof that OUT is ours."""
    from trainers.eval_records import partials

    tmp, _, data, _, _ = setup
    other = tmp / "e1.jsonl.partial-0.jsonl"
    notes = tmp / "e[1].jsonl.partial-notes.jsonl"
    other.write_text("theirs\n")
    notes.write_text("notes\n")
    assert partials(tmp / "e[1].jsonl") == []
    assert ev.main(args_for(tmp / "m", data, tmp / "e[1].jsonl")) == 0
    assert other.read_text() == "theirs\n" and notes.read_text() == "notes\n"
    user = tmp / "mine.jsonl"
    user.write_text("the user's generations\n")
    record = tmp / "mine.jsonl.run.json"
    record.write_text("{}")
    capsys.readouterr()
    assert ev.main(args_for(tmp / "m", data, user, "--overwrite")) == 2
    assert user.read_text() == "the user's generations\n" and record.read_text() == "{}"
    assert ev.main(args_for(tmp / "m", data, tmp / "fresh.jsonl")) == 0
    (tmp / "fresh2.jsonl.run.json").write_text("the user's notes")
    assert ev.main(args_for(tmp / "m", data, tmp / "fresh2.jsonl")) == 2
    assert (tmp / "fresh2.jsonl.run.json").read_text() == "the user's notes"
