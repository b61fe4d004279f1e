"""The output guard (dlmarch/outputs.py) against every writer.

The probe matrix: each command that writes x {output = an input, inside an input, containing an
input, through a symbolic link, through `..`, an existing user file, a user's directory}. Each probe
must be refused with one line and exit status 2, and leave every file under the test's root as it
was (hashed before and after, with the set of paths)."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dlmarch.errors import DlmarchError
from dlmarch.outputs import (TEMP_MARKER, Claim, OutputLock, atomic_directory, atomic_file, clean_stale_temps,
                             lock_path_of, rename_noreplace)
from tests.helpers import hf_llama, make_task, tiny_model_dir


def tree(root: Path) -> dict[str, str]:
    """Relative path -> sha256 (files), 'dir' (directories), 'link:TARGET' (links, never followed)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            if p.is_symlink():
                out[rel] = "link:" + os.readlink(p)
            elif p.is_dir():
                out[rel] = "dir"
            else:
                out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """Inputs of every writer, and files of the user's beside them."""
    r = tmp_path_factory.mktemp("probes")
    make_task(r, n=16)  # r/model (a native LLaDA with its tokenizer), r/reverse.jsonl
    hf_llama(r / "llama")
    (r / "prompts.jsonl").write_text(json.dumps({"prompt": "abc"}) + "\n")
    (r / "countdown.jsonl").write_text("".join(json.dumps({"input": f"{i},{i + 1},3", "output": str(2 * i + 4)}) + "\n"
                                               for i in range(3)))
    (r / "gens.jsonl").write_text(json.dumps({"index": 0, "sample": 0, "generation": "<answer>4</answer>",
                                              "reference": {"numbers": [0, 1, 3], "target": 4}}) + "\n")
    (r / "notes.txt").write_text("the user's notes")
    (r / "userdir").mkdir()
    (r / "userdir" / "notes.txt").write_text("mine")
    (r / "userdir" / "config.json").write_text("{}")
    return r


@pytest.fixture
def root(pristine, tmp_path):
    """A fresh copy for each probe: one probe's damage never decides another's outcome."""
    import shutil

    return Path(shutil.copytree(pristine, tmp_path / "root", symlinks=True))


def generate(out, r, overwrite):
    from dlmarch.sampling.cli import main

    return main(["--model", str(r / "model"), "--prompts", str(r / "prompts.jsonl"), "--output", str(out),
                 "--gen-length", "4", "--block-length", "4", *(["--overwrite"] if overwrite else [])])


def evaluate(out, r, overwrite):
    from trainers.evaluate import main

    return main(["--model", str(r / "model"), "--task", "countdown", "--data", str(r / "countdown.jsonl"),
                 "--output", str(out), "--gen-length", "4", "--block-length", "4",
                 *(["--overwrite"] if overwrite else [])])


def score(out, r, overwrite):
    from trainers.evaluate import main

    return main(["--task", "countdown", "--score", str(r / "gens.jsonl"), "--output", str(out),
                 *(["--overwrite"] if overwrite else [])])


def conversion(command, src, *extra):
    def run(out, r, overwrite):
        from conversions.__main__ import main

        return main([command, str(r / src), str(out), *extra, *(["--overwrite"] if overwrite else [])])
    return run


def sft(out, r, overwrite):
    from trainers.sft import main

    return main(["--model", str(r / "model"), "--data", str(r / "reverse.jsonl"), "--output", str(out),
                 "--max-steps", "1", "--no-progress", *(["--overwrite"] if overwrite else [])])


# writer -> (the function, the inputs it reads, relative to root)
WRITERS = {
    "generate": (generate, ["prompts.jsonl", "model"]),
    "evaluate": (evaluate, ["countdown.jsonl", "model"]),
    "evaluate --score": (score, ["gens.jsonl"]),
    "to-diffusion": (conversion("to-diffusion", "llama", "--style", "dream"), ["llama"]),
    "import": (conversion("import", "llama"), ["llama"]),
    "export": (conversion("export", "model"), ["model"]),
    "trainers.sft": (sft, ["model", "reverse.jsonl"]),
}
OVERLAPS = ("is the input", "inside the input", "contains the input", "through a link", "through ..")


def probe_path(r: Path, inp: str, kind: str) -> Path:
    i = r / inp
    if kind == "is the input":
        return i
    if kind == "inside the input":
        return i / "config.json" if i.is_dir() else i / "x"
    if kind == "contains the input":
        return r
    if kind == "through a link":
        link = r / f"link-to-{inp}"
        if not link.is_symlink():
            link.symlink_to(i)
        return link
    return r / "userdir" / ".." / inp  # through ..


CASES = [(w, inp, kind) for w, (_, inputs) in WRITERS.items() for inp in inputs for kind in OVERLAPS]
CASES += [(w, None, kind) for w in WRITERS for kind in ("a user's file", "a user's directory")]


@pytest.mark.parametrize("writer,inp,kind", CASES, ids=[f"{w}-{i}-{k}" for w, i, k in CASES])
def test_every_writer_refuses_every_probe_and_touches_nothing(root, writer, inp, kind, capsys):
    fn, _ = WRITERS[writer]
    out = probe_path(root, inp, kind) if inp else root / ("notes.txt" if kind == "a user's file" else "userdir")
    before = tree(root)
    for overwrite in (False, True):
        capsys.readouterr()
        assert fn(out, root, overwrite) == 2, (writer, inp, kind, overwrite)
        err = [x for x in capsys.readouterr().err.splitlines() if x.startswith("error: ")]
        assert len(err) == 1, err
        assert tree(root) == before, (writer, inp, kind, overwrite)


@pytest.mark.parametrize("tool", ["demo", "experiments"])
def test_demo_and_experiments_refuse_a_users_file_or_directory(root, tool):
    from trainers.demo import WRITES
    from trainers.toy import claim_output

    before = tree(root)
    for out in (root / "notes.txt", root / "userdir", root / "model"):
        for resume, overwrite in ((False, False), (True, False), (False, True)):
            with pytest.raises(DlmarchError):
                claim_output(out, resume, overwrite, f"trainers.{tool}", WRITES)
    assert tree(root) == before


# --- what --overwrite replaces ------------------------------------------------------------------------------


def test_demo_overwrite_replaces_only_what_the_demo_wrote(tmp_path):
    from trainers.demo import WRITES
    from trainers.toy import MARKER, claim_output

    def prepare_output(out, resume, overwrite):
        claim_output(out, resume, overwrite, "trainers.demo", WRITES)

    out = tmp_path / "demo"
    prepare_output(out, False, False)
    (out / "results.md").write_text("old")
    (out / "sft").mkdir()
    (out / "sft" / "run.json").write_text("{}")
    (out / "analysis.ipynb").write_text("the user's notebook")
    prepare_output(out, False, True)
    assert sorted(p.name for p in out.iterdir()) == [MARKER, "analysis.ipynb"]
    assert (out / "analysis.ipynb").read_text() == "the user's notebook"
    assert json.loads((out / MARKER).read_text())["tool"] == "trainers.demo"


def test_generate_overwrite_replaces_only_its_own_file(tmp_path):
    from dlmarch.sampling.cli import main

    model = tmp_path / "m"
    tiny_model_dir(model)
    out = tmp_path / "out.jsonl"
    args = ["--model", str(model), "--prompt", "ab", "--gen-length", "4", "--block-length", "4", "--output", str(out)]
    assert main(args) == 0
    first = out.read_text()
    assert json.loads(first)["prompt"] == "ab"
    assert main(args) == 2  # exists: --overwrite needed
    assert main(args + ["--overwrite"]) == 0 and out.read_text() == first
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


def test_evaluate_default_output_is_in_the_current_directory_not_the_model(tmp_path, monkeypatch):
    from trainers.evaluate import main

    model = tmp_path / "m"
    tiny_model_dir(model)
    before = tree(model)
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"input": "1,2,3", "output": "6"}) + "\n")
    monkeypatch.chdir(tmp_path)
    args = ["--model", str(model), "--task", "countdown", "--data", str(data), "--gen-length", "4", "--block-length", "4",
            "--no-system-prompt"]
    assert main(args) == 0
    assert tree(model) == before
    assert (tmp_path / "eval-m-countdown.jsonl").exists() and (tmp_path / "eval-m-countdown.summary.json").exists()
    assert main(args) == 2  # its own file: only with --overwrite
    assert main(args + ["--overwrite"]) == 0
    monkeypatch.chdir(model)  # the default path would lie inside the model directory
    assert main(args) == 2 and tree(model) == before


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
    import dlmarch.outputs as outputs

    if not native:
        monkeypatch.setattr(outputs, "_RENAMEAT2", None)
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
from dlmarch.outputs import OutputLock, lock_path_of
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


def test_claim_records_what_the_tool_writes(tmp_path):
    out = tmp_path / "o"
    Claim(out, ".marker", "tool", ("a", "b-*")).prepare(False, False)
    assert json.loads((out / ".marker").read_text()) == {"tool": "tool", "writes": ["a", "b-*"]}
