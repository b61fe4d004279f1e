"""Atomic writes (dlmarch/atomic.py): marked temporary directories, rename without replace and the
races it closes, and a full disk leaving nothing behind."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dlmarch.atomic import TEMP_MARKER, atomic_directory, atomic_file, clean_stale_temps, rename_noreplace
from dlmarch.errors import DlmarchError
from tests.helpers import hf_llama


# --- temporary directories ------------------------------------------------------------------------------------


def dead_pid() -> int:
    return int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout)


def test_stale_cleanup_removes_only_marked_directories(tmp_path):
    pid = dead_pid()
    users = [tmp_path / f".dst.tmp-{pid}-0a1b", tmp_path / f".dst.old-{pid}", tmp_path / ".dst.old-12"]
    for d in users:
        d.mkdir()
        (d / "notes.txt").write_text("mine")
    ours = tmp_path / f".dst.tmp-{pid}-2c3d"
    ours.mkdir()
    (ours / TEMP_MARKER).write_text(json.dumps({"pid": pid}))
    assert clean_stale_temps(tmp_path, "dst", force=True) == [ours]
    assert all((d / "notes.txt").read_text() == "mine" for d in users)


def test_save_pretrained_keeps_a_users_directory_named_like_our_temps(tmp_path):
    from tests.helpers import tiny_llada

    pid = dead_pid()
    user = tmp_path / f".m.tmp-{pid}-abcd1234"
    user.mkdir()
    (user / "notes.txt").write_text("mine")
    old = tmp_path / f".m.old-{pid}"
    old.mkdir()
    tiny_llada().save_pretrained(tmp_path / "m")
    assert (user / "notes.txt").read_text() == "mine" and old.is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["m", user.name, old.name])


# --- rename without replace, races -----------------------------------------------------------------------------


@pytest.mark.parametrize("native", [True, False])
def test_rename_noreplace_never_replaces(tmp_path, monkeypatch, native):
    import dlmarch.atomic as atomic

    if not native:
        monkeypatch.setattr(atomic, "_RENAMEAT2", None)
    for kind in ("dir", "file"):
        src, dst = tmp_path / f"src-{kind}", tmp_path / f"dst-{kind}"
        (src.mkdir() if kind == "dir" else src.write_text("new"))
        (dst.mkdir() if kind == "dir" else dst.write_text("user"))
        if kind == "dir":
            (dst / "notes.txt").write_text("user")
        with pytest.raises(FileExistsError):
            rename_noreplace(src, dst)
        assert src.exists() and ((dst / "notes.txt") if kind == "dir" else dst).read_text() == "user"
        fresh = tmp_path / f"fresh-{kind}"
        rename_noreplace(src, fresh)
        assert fresh.exists() and not src.exists()


def test_atomic_directory_never_replaces_a_directory_made_meanwhile(tmp_path):
    dst = tmp_path / "dst"
    with pytest.raises(FileExistsError, match="appeared while"):
        with atomic_directory(dst) as tmp:
            (tmp / "config.json").write_text("{}")
            dst.mkdir()  # a user (or another process) makes DST while we write
            (dst / "notes.txt").write_text("mine")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dst"]
    assert sorted(p.name for p in dst.iterdir()) == ["notes.txt"]


def test_overwrite_checks_dst_again_at_rename_time(tmp_path):
    dst = tmp_path / "dst"
    dst.mkdir()
    (dst / "config.json").write_text("{}")

    def only_checkpoint_files(d):
        if any(p.name != "config.json" for p in d.iterdir()):
            raise DlmarchError(f"{d} holds a file of the user's")

    with pytest.raises(DlmarchError, match="the user's"):
        with atomic_directory(dst, overwrite=True, check=only_checkpoint_files) as tmp:
            (tmp / "config.json").write_text('{"new": 1}')
            (dst / "notes.txt").write_text("mine")  # added while the conversion ran
    assert (dst / "notes.txt").read_text() == "mine" and (dst / "config.json").read_text() == "{}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dst"]


def test_import_does_not_replace_a_directory_created_while_it_runs(tmp_path, monkeypatch, capsys):
    import conversions.hf as hf
    from conversions.__main__ import main

    _, src = hf_llama(tmp_path / "llama")
    dst = tmp_path / "dst"
    real = hf._stream

    def user_makes_dst(*a, **kw):
        dst.mkdir()
        (dst / "notes.txt").write_text("mine")
        return real(*a, **kw)

    monkeypatch.setattr(hf, "_stream", user_makes_dst)
    capsys.readouterr()
    assert main(["import", str(src), str(dst)]) == 2
    assert "appeared while" in capsys.readouterr().err
    assert sorted(p.name for p in dst.iterdir()) == ["notes.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dst", "llama"]


RACING_IMPORT = """
import os, sys, time
from pathlib import Path
import conversions.hf as hf
from conversions.__main__ import main
real, sync = hf._stream, Path(sys.argv[3])

def in_step(*a, **kw):  # both processes are past their start-up checks before either renames
    out = real(*a, **kw)
    (sync / f"ready-{os.getpid()}").touch()
    while not (sync / "go").exists():
        time.sleep(0.02)
    return out

hf._stream = in_step
sys.exit(main(["import", sys.argv[1], sys.argv[2]]))
"""


def test_two_concurrent_imports_to_one_fresh_dst_one_wins(tmp_path, monkeypatch, capsys):
    """Two processes (this one and a child) import to one fresh DST, both past their start-up checks
    before either renames: exactly one wins, the other exits 2 with one line."""
    import time

    import conversions.hf as hf
    from conversions.__main__ import main

    _, src = hf_llama(tmp_path / "llama")
    dst, sync = tmp_path / "dst", tmp_path / "sync"
    sync.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[2])}
    child = subprocess.Popen([sys.executable, "-c", RACING_IMPORT, str(src), str(dst), str(sync)], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    real = hf._stream

    def in_step(*a, **kw):
        out = real(*a, **kw)
        while not list(sync.glob("ready-*")) and child.poll() is None:
            time.sleep(0.02)
        (sync / "go").touch()
        return out

    monkeypatch.setattr(hf, "_stream", in_step)
    try:
        capsys.readouterr()
        results = [(main(["import", str(src), str(dst)]), capsys.readouterr().err)]
        results.append((child.wait(timeout=300), child.stderr.read()))
    finally:
        child.kill()
    assert sorted(rc for rc, _ in results) == [0, 2], results
    err = next(e for rc, e in results if rc == 2)
    assert len([x for x in err.splitlines() if x.strip()]) == 1 and "appeared while" in err, err
    assert (dst / "config.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dst", "llama", "sync"]


# --- disk full ----------------------------------------------------------------------------------------------------


def test_atomic_file_on_a_full_disk_leaves_nothing(tmp_path):
    path = tmp_path / "out.jsonl"
    path.write_text("before")
    with pytest.raises(DlmarchError, match=f"no space left on the device writing {path}.*free there"):
        with atomic_file(path) as f:
            f.write("half")
            raise OSError(errno.ENOSPC, "No space left on device")
    assert path.read_text() == "before" and sorted(p.name for p in tmp_path.iterdir()) == ["out.jsonl"]


def test_score_on_a_full_disk_leaves_no_temporary_file(pristine, tmp_path, monkeypatch, capsys):
    from trainers.evaluate import main

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    root = pristine
    out = tmp_path / "v.jsonl"
    capsys.readouterr()
    assert main(["--task", "countdown", "--score", str(root / "gens.jsonl"), "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert "no space left on the device writing" in err and str(out) in err
    assert list(tmp_path.iterdir()) == []
