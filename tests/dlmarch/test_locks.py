"""One owner per output (dlmarch/locks.py): the lock is never followed through a link, and a second
run on a locked output is refused with the owner's pid."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dlmarch.errors import DlmarchError
from dlmarch.locks import OutputLock, lock_path_of
from tests.helpers import tiny_model_dir


# --- the lock ------------------------------------------------------------------------------------------------


def test_lock_never_follows_a_link(tmp_path):
    target = tmp_path / "precious.txt"
    target.write_text("keep")
    out = tmp_path / "run"
    out.mkdir()
    (out / ".lock").symlink_to(target)
    with pytest.raises(DlmarchError, match="symbolic link"):
        OutputLock(out)
    assert target.read_text() == "keep"


HOLD_LOCK = """
import sys, time
from pathlib import Path
from dlmarch.locks import OutputLock, lock_path_of
out = Path(sys.argv[1])
lock = OutputLock(out, path=lock_path_of(out))
print("ready", flush=True)
time.sleep(60)
"""


def test_one_evaluate_run_owns_an_output(tmp_path, capsys):
    from trainers.evaluate import main

    model = tmp_path / "m"
    tiny_model_dir(model)
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"input": "1,2,3", "output": "6"}) + "\n")
    out = tmp_path / "gens.jsonl"
    p = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(out)], stdout=subprocess.PIPE, text=True,
                         env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])})
    try:
        assert p.stdout.readline().strip() == "ready"
        capsys.readouterr()
        assert main(["--model", str(model), "--task", "countdown", "--data", str(data), "--output", str(out),
                     "--gen-length", "4", "--block-length", "4"]) == 2
        assert f"in use by another run (pid {p.pid}" in capsys.readouterr().err
        assert not out.exists() and not list(tmp_path.glob("gens.jsonl.partial-*"))
    finally:
        p.kill()
        p.wait()
    assert lock_path_of(out).name == ".gens.jsonl.lock"
