"""trainers/rundir.py: a run directory's entries that a run did not write are the user's (also when
named like our temporary directories), nothing is written through a link, and a --model that would
publish a file outside it is refused at the start."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.dlmarch.test_outputs import tree
from tests.helpers import make_task

COMMON = ["--max-length", "32", "--batch-size", "4", "--lr", "3e-3", "--warmup-steps", "1", "--no-progress"]


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    return make_task(tmp_path_factory.mktemp("task"), n=16)


@pytest.fixture(scope="module")
def finished(task, tmp_path_factory):
    """A finished one-step run (copied by each test that changes it)."""
    model, data = task
    run = tmp_path_factory.mktemp("finished") / "run"
    assert sft(["--model", model, "--data", data, "--output", run, "--max-steps", "1", *COMMON]) == 0
    return run


def sft(argv):
    from trainers.sft import main

    return main([str(a) for a in argv])


def copy_run(finished, tmp_path):
    import shutil

    import json

    run = tmp_path / "run"
    shutil.copytree(finished, run, symlinks=True)
    recorded = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps({**recorded, "output": str(run)}))  # as if it had run here
    return run


def dead_pid() -> int:
    return int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout)


def test_users_entries_named_like_temporaries_survive_resume_and_overwrite(task, finished, tmp_path):
    model, data = task
    run = copy_run(finished, tmp_path)
    pid = dead_pid()
    (run / ".notes.old-2024").write_text("mine")
    for name in (f".backup.tmp-{pid}", ".snap.old-12", f".model.tmp-{pid}-abcd"):  # no marker: not ours
        (run / name).mkdir()
        (run / name / "keep.txt").write_text("mine")
    (run / "checkpoints" / f".step-00000009.tmp-{pid}-0a1b").mkdir()
    (run / "checkpoints" / f".step-00000009.tmp-{pid}-0a1b" / "keep.txt").write_text("mine")
    users = {k: v for k, v in tree(run).items() if "keep.txt" in k or "notes" in k}
    args = ["--model", model, "--data", data, "--output", run, "--max-steps", "1", *COMMON]
    assert sft(args + ["--overwrite"]) == 2  # the user's entries are foreign: refused, not deleted
    assert sft(args + ["--resume"]) == 0
    after = tree(run)
    assert {k: after.get(k) for k in users} == users


def test_resume_never_writes_through_a_linked_model_directory(task, finished, tmp_path, capsys):
    model, data = task
    run = copy_run(finished, tmp_path)
    elsewhere = tmp_path / "users-model"
    (run / "model").rename(elsewhere)
    (run / "model").symlink_to(elsewhere)
    before = tree(elsewhere)
    capsys.readouterr()
    assert sft(["--model", model, "--data", data, "--output", run, "--max-steps", "1", "--resume", *COMMON]) == 2
    assert "symbolic link" in capsys.readouterr().err
    assert tree(elsewhere) == before


def test_a_linked_lock_file_is_refused_and_its_target_kept(task, tmp_path, capsys):
    model, data = task
    run = tmp_path / "run"
    run.mkdir()
    precious = tmp_path / "precious.txt"
    precious.write_text("keep")
    (run / ".lock").symlink_to(precious)
    capsys.readouterr()
    assert sft(["--model", model, "--data", data, "--output", run, "--max-steps", "1", *COMMON]) == 2
    assert "symbolic link" in capsys.readouterr().err
    assert precious.read_text() == "keep"


def test_a_model_linking_outside_itself_is_refused_at_the_start(task, tmp_path, capsys):
    import shutil

    model, data = task
    mine = tmp_path / "model"
    shutil.copytree(model, mine)
    secret = tmp_path / "secret.txt"
    secret.write_text("not to be published")
    (mine / "notes.txt").symlink_to(secret)
    run = tmp_path / "run"
    capsys.readouterr()
    assert sft(["--model", mine, "--data", data, "--output", run, "--max-steps", "1", *COMMON]) == 2
    err = capsys.readouterr().err
    assert "notes.txt: a symbolic link" in err and "sft:" not in err  # refused before any step
    assert not run.exists()
