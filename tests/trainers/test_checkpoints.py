"""trainers/checkpoints.py: a resume falls back past every damaged checkpoint, naming it; a full disk
ends the run with one line naming the last intact checkpoint, which stays loadable."""

from __future__ import annotations

import errno
import json
import shutil

import pytest
import torch

from dlmarch.manifests import write_manifest
from tests.helpers import make_task
from trainers.checkpoints import checkpoints, verify_checkpoint

COMMON = ["--max-length", "32", "--batch-size", "4", "--lr", "3e-3", "--warmup-steps", "1", "--no-progress"]


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    return make_task(tmp_path_factory.mktemp("task"), n=16)


def sft(argv):
    from trainers.sft import main

    return main([str(a) for a in argv])


def error_lines(err: str) -> list[str]:
    return [x for x in err.splitlines() if x.startswith("error: ")]


def test_resume_falls_back_past_damage_the_manifest_does_not_catch(task, tmp_path, capsys):
    model, data = task
    run = tmp_path / "run"
    args = ["--model", model, "--data", data, "--output", run, "--max-steps", "5", "--save-every", "1", "--keep", "10",
            *COMMON]
    assert sft(args) == 0
    ck = {int(p.name[5:]): p for p in checkpoints(run)}
    with open(ck[5] / "weights.safetensors", "r+b") as f:  # truncated, the manifest re-hashed to match
        f.truncate(200)
    write_manifest(ck[5])
    (ck[4] / "optimizer.pt").write_bytes(b"not a pickle at all" * 10)  # garbage, re-hashed
    write_manifest(ck[4])
    torch.save({"torch": "nope"}, ck[3] / "rng.pt")  # the wrong content, re-hashed
    write_manifest(ck[3])
    manifest = json.loads((ck[2] / "manifest.json").read_text())  # an entry of the wrong type
    manifest["files"]["weights.safetensors"] = "abc"
    (ck[2] / "manifest.json").write_text(json.dumps(manifest))
    capsys.readouterr()
    assert sft(args + ["--resume"]) == 0
    err = capsys.readouterr().err
    assert "step-00000005: weights.safetensors is unreadable" in err
    assert "step-00000004: optimizer.pt is unreadable" in err
    assert "step-00000003: rng.pt does not hold" in err
    assert "step-00000002: manifest.json: the entry of weights.safetensors is str" in err
    assert "step-00000001 at step 1" in err
    assert all(verify_checkpoint(p) is None for p in checkpoints(run))


def test_a_full_disk_at_a_checkpoint_names_the_last_intact_one(task, tmp_path, monkeypatch, capsys):
    model, data = task
    run = tmp_path / "run"
    real = torch.save
    calls = {"n": 0}

    def fills_the_disk(obj, f, *a, **kw):  # the second checkpoint's optimizer.pt: half written, then ENOSPC
        calls["n"] += 1
        if calls["n"] == 4:
            with open(f, "wb") as fh:
                fh.write(b"PK\x03\x04 half a zip")
            raise OSError(errno.ENOSPC, "No space left on device", str(f))
        return real(obj, f, *a, **kw)

    monkeypatch.setattr(torch, "save", fills_the_disk)
    capsys.readouterr()
    args = ["--model", model, "--data", data, "--output", run, "--max-steps", "3", "--save-every", "1", *COMMON]
    assert sft(args) == 2
    (line,) = error_lines(capsys.readouterr().err)
    assert "no space left on the device writing" in line and "step-00000002" in line and "MiB free" in line
    assert line.endswith(f"the last intact checkpoint is {run / 'checkpoints' / 'step-00000001'}")
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step-00000001"]  # no temporary directory
    assert verify_checkpoint(run / "checkpoints" / "step-00000001") is None
    monkeypatch.setattr(torch, "save", real)
    assert sft(args + ["--resume"]) == 0
    assert "resumed from" in capsys.readouterr().err


def test_a_full_disk_at_the_final_save_names_the_last_intact_checkpoint(task, tmp_path, monkeypatch, capsys):
    from dlmarch import safetensors_io as st

    model, data = task
    run = tmp_path / "run"
    real = st.Writer.write

    def fills_the_disk(self, name, tensor):
        if ".model.tmp-" in str(self.path):
            raise OSError(errno.ENOSPC, "No space left on device", str(self.path))
        return real(self, name, tensor)

    monkeypatch.setattr(st.Writer, "write", fills_the_disk)
    capsys.readouterr()
    assert sft(["--model", model, "--data", data, "--output", run, "--max-steps", "2", *COMMON]) == 2
    (line,) = error_lines(capsys.readouterr().err)
    assert f"writing {run / 'model'}" in line and "step-00000002" in line
    assert not [p for p in run.iterdir() if ".tmp-" in p.name] and not (run / "model").exists()
    assert verify_checkpoint(run / "checkpoints" / "step-00000002") is None
    shutil.rmtree(run)
