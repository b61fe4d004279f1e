"""Probes of an adversarial pass over files, outputs and resume: each one destroyed or trusted
something before it was fixed. For the data-loss and security probes every file of the user's is
hashed before and after, and must be unchanged."""

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dlmarch.errors import DlmarchError
import torch

from dlmarch import AutoModel, L2DModel
from dlmarch import safetensors_io as st
from tests.helpers import FIXTURES, L2D_TINY, hf_llama, make_task, tiny_model_dir

COMMON = ["--max-length", "32", "--batch-size", "4", "--lr", "3e-3", "--warmup-steps", "1", "--no-progress"]


def snapshot(root: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file under root (a link: its target, never followed)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            if p.is_symlink():
                out[rel] = "link:" + os.readlink(p)
            elif p.is_file():
                out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def one_error_line(text: str) -> str:
    lines = [x for x in text.strip().splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), text
    return lines[0]


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    return make_task(tmp_path_factory.mktemp("task"), n=64)


def sft(argv):
    from trainers.sft import main

    return main([str(a) for a in argv])


def sft_process(argv, **kw):
    return subprocess.run([sys.executable, "-m", "trainers.sft", *map(str, argv)], capture_output=True, text=True, **kw)


def convert(argv):
    from conversions.__main__ import main

    return main([str(a) for a in argv])


# --- 1. save_pretrained adds files, never deletes others ---------------------------------------------


def test_save_pretrained_keeps_the_files_it_does_not_write(tmp_path):
    model_dir = tmp_path / "m"
    tiny_model_dir(model_dir)
    (model_dir / "notes.txt").write_text("mine")
    (model_dir / "extra").mkdir()
    (model_dir / "extra" / "data.bin").write_bytes(b"\0" * 10)
    before = snapshot(model_dir)
    ours = {"config.json", "model.safetensors"}

    model = AutoModel.from_pretrained(model_dir)
    with torch.no_grad():
        model.ln_f.weight.add_(1.0)
    model.save_pretrained(model_dir)  # back in place: the tokenizer and chat template stay
    after = snapshot(model_dir)
    assert {k: v for k, v in after.items() if k not in ours} == {k: v for k, v in before.items() if k not in ours}
    assert torch.equal(AutoModel.from_pretrained(model_dir).ln_f.weight, model.ln_f.weight)

    # Into a non-empty directory that is not a checkpoint: only files are added.
    other = tmp_path / "other"
    other.mkdir()
    (other / "keep.txt").write_text("keep")
    model.save_pretrained(other)  # with the tokenizer of the directory it was loaded from
    assert (other / "keep.txt").read_text() == "keep" and (other / "tokenizer.json").exists()
    assert torch.equal(AutoModel.from_pretrained(other).ln_f.weight, model.ln_f.weight)


def test_a_single_file_save_replaces_an_older_sharded_one(tmp_path):
    model = AutoModel.from_pretrained(FIXTURES / "llada-tiny")
    model.save_pretrained(tmp_path / "m", max_shard_size=20_000)
    assert (tmp_path / "m" / "model.safetensors.index.json").exists()
    with torch.no_grad():
        model.ln_f.weight.mul_(2)
    model.save_pretrained(tmp_path / "m")  # the old index would otherwise shadow the new weights
    assert sorted(p.name for p in (tmp_path / "m").iterdir() if "safetensors" in p.name) == ["model.safetensors"]
    assert torch.equal(AutoModel.from_pretrained(tmp_path / "m").ln_f.weight, model.ln_f.weight)


# --- 2. --overwrite never deletes an input or the user's files -------------------------------------------


def test_training_output_that_is_contains_or_holds_inputs_is_refused(task, tmp_path, capsys):
    model, data = task
    root = model.parent
    before = snapshot(root)
    cases = [(model, "is the --model"), (root, "contains the --model"), (model / "run", "lies inside the --model")]
    for out, words in cases:
        rc = sft(["--model", model, "--data", data, "--output", out, "--max-steps", "1", "--overwrite", *COMMON])
        assert rc == 2
        assert words in one_error_line(capsys.readouterr().err)
    assert snapshot(root) == before

    # A run directory that also holds a file of the user's is not replaced.
    run = tmp_path / "run"
    assert sft(["--model", model, "--data", data, "--output", run, "--max-steps", "1", *COMMON]) == 0
    (run / "notes.txt").write_text("mine")
    capsys.readouterr()
    before = snapshot(run)
    assert sft(["--model", model, "--data", data, "--output", run, "--max-steps", "1", "--overwrite", *COMMON]) == 2
    assert "'notes.txt', which a run does not write" in one_error_line(capsys.readouterr().err)
    assert snapshot(run) == before


def test_conversion_destination_that_holds_the_source_is_refused(tmp_path, capsys):
    _, src = hf_llama(tmp_path / "m" / "llama")
    (tmp_path / "m" / "sibling.txt").write_text("mine")
    before = snapshot(tmp_path / "m")
    capsys.readouterr()
    assert convert(["import", src, tmp_path / "m", "--overwrite"]) == 2
    assert "contains the source" in one_error_line(capsys.readouterr().err)
    assert convert(["import", src, src, "--overwrite"]) == 2
    assert "is the source" in one_error_line(capsys.readouterr().err)
    assert snapshot(tmp_path / "m") == before

    # --overwrite replaces an earlier conversion, but not a directory holding anything else.
    dst = tmp_path / "dst"
    assert convert(["import", src, dst]) == 0
    assert convert(["import", src, dst, "--overwrite"]) == 0
    (dst / "mine.txt").write_text("mine")
    capsys.readouterr()
    before = snapshot(dst)
    assert convert(["import", src, dst, "--overwrite"]) == 2
    assert "'mine.txt', which a conversion does not write" in one_error_line(capsys.readouterr().err)
    assert snapshot(dst) == before


# --- 3. nothing from outside the source ------------------------------------------------------------------


def test_symlink_out_of_the_source_is_not_copied(tmp_path, capsys):
    _, src = hf_llama(tmp_path / "src")
    secret = tmp_path / "secret.txt"
    secret.write_text("password")
    (src / "tokenizer.json").symlink_to(secret)
    before = snapshot(tmp_path)
    capsys.readouterr()
    assert convert(["import", src, tmp_path / "dst"]) == 2
    assert "outside" in one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "dst").exists() and snapshot(tmp_path) == before

    # A Hugging Face cache snapshot links to its blobs: those are part of the checkpoint.
    repo = tmp_path / "hub" / "models--x--tiny"
    (repo / "blobs").mkdir(parents=True)
    snap = repo / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    for p in src.iterdir():
        if not p.is_symlink():
            shutil.copy(p, repo / "blobs" / hashlib.sha256(p.name.encode()).hexdigest())
            (snap / p.name).symlink_to(Path("../../blobs") / hashlib.sha256(p.name.encode()).hexdigest())
    (repo / "blobs" / "tok").write_text("{}")
    (snap / "special_tokens_map.json").symlink_to("../../blobs/tok")
    assert convert(["import", snap, tmp_path / "from-cache"]) == 0
    assert (tmp_path / "from-cache" / "special_tokens_map.json").read_text() == "{}"


@pytest.mark.parametrize("where", ["absolute", "escaping"])
def test_index_naming_a_file_outside_the_source_is_refused(tmp_path, capsys, where):
    _, src = hf_llama(tmp_path / "src")
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    os.replace(src / "model.safetensors", outside / "model.safetensors")
    name = str(outside / "model.safetensors") if where == "absolute" else "../elsewhere/model.safetensors"
    names = st.read_header(outside / "model.safetensors")[0]
    (src / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {n: name for n in names}}))
    capsys.readouterr()
    assert convert(["import", src, tmp_path / "dst"]) == 2
    assert "weight_map" in one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "dst").exists()


# --- 4. no code from a model directory runs ---------------------------------------------------------------


def test_tokenizer_with_auto_map_runs_no_code(tmp_path):
    model, data = make_task(tmp_path, n=16)
    marker = tmp_path / "code-ran"
    (model / "evil_tokenizer.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n"
                                             "from transformers import PreTrainedTokenizerFast\n"
                                             "class EvilTokenizer(PreTrainedTokenizerFast):\n    pass\n")
    cfg = json.loads((model / "tokenizer_config.json").read_text())
    cfg.update(tokenizer_class="EvilTokenizer", auto_map={"AutoTokenizer": [None, "evil_tokenizer.EvilTokenizer"]})
    (model / "tokenizer_config.json").write_text(json.dumps(cfg))
    before = snapshot(model), data.read_bytes()
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf-home"), "HF_HUB_OFFLINE": "1"}
    r = sft_process(["--model", model, "--data", data, "--output", tmp_path / "run", "--max-steps", "1", *COMMON],
                    input="y\n", env=env, timeout=300)
    assert not marker.exists(), "the model directory's code ran"
    assert r.returncode == 2 and "tokenizer" in one_error_line(r.stderr)
    assert (snapshot(model), data.read_bytes()) == before
    assert not (tmp_path / "run").exists()


# --- 5. one run per output ------------------------------------------------------------------------------


def test_a_second_run_on_the_same_output_is_refused_and_a_stale_lock_taken_over(task, tmp_path, capsys):
    model, data = task
    run = tmp_path / "run"
    args = ["--model", model, "--data", data, "--output", run, "--max-steps", "100000", "--save-every", "100000",
            *COMMON]
    a = subprocess.Popen([sys.executable, "-m", "trainers.sft", *map(str, args)], stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not (run / "metrics.jsonl").exists():
            time.sleep(0.05)
        assert (run / "metrics.jsonl").exists(), "the first run did not start"
        r = sft_process([*args, "--resume"], timeout=120)
        assert r.returncode == 2 and f"in use by another run (pid {a.pid}" in one_error_line(r.stderr)
    finally:
        a.send_signal(signal.SIGKILL)
        a.wait()
    # The killed run's lock is stale: the next run says so and takes the output over.
    rc = sft(["--model", model, "--data", data, "--output", run, "--max-steps", "2", "--overwrite", *COMMON])
    assert rc == 0
    assert f"lock of pid {a.pid} is stale" in capsys.readouterr().err
    assert not (run / ".lock").exists()


# --- 6. a killed writer's temporary directories are cleaned -----------------------------------------------


KILLED_WRITER = """
import sys, time
from dlmarch.atomic import atomic_directory
with atomic_directory(sys.argv[1]) as tmp:
    (tmp / "config.json").write_text("{}")
    print("ready", flush=True)
    time.sleep(120)
"""


def test_leftovers_of_a_killed_conversion_are_removed_by_the_next(tmp_path, capsys):
    dst = tmp_path / "dst"
    p = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(dst)], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "ready"
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert [x.name.startswith(".dst.tmp-") for x in tmp_path.iterdir()] == [True]
    assert convert(["import", FIXTURES / "llada-tiny", dst]) == 0
    assert "removed 1 temporary directory" in capsys.readouterr().err
    assert sorted(x.name for x in tmp_path.iterdir()) == ["dst"]


def test_leftovers_in_a_run_directory_are_removed_by_the_next_run(task, tmp_path, capsys):
    model, data = task
    run = tmp_path / "run"
    args = ["--model", model, "--data", data, "--output", run, "--max-steps", "2", *COMMON]
    assert sft(args) == 0
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    for d in (run / "checkpoints" / f".step-00000003.tmp-{pid}-0a1b", run / f".model.tmp-{pid}-2c3d"):
        d.mkdir()
        (d / "weights.safetensors").write_bytes(b"half")
        (d / ".dlmarch-temp").write_text(json.dumps({"pid": pid}))  # what every temporary directory of ours holds
    capsys.readouterr()
    assert sft(args + ["--resume"]) == 0
    assert "removed 1 temporary directory" in capsys.readouterr().err
    assert not [p for p in [*run.iterdir(), *(run / "checkpoints").iterdir()] if ".tmp-" in p.name]


# --- 7. resume verifies its checkpoint --------------------------------------------------------------------


def test_resume_skips_damaged_checkpoints_and_names_them(task, tmp_path, capsys):
    from dlmarch.manifests import write_manifest

    model, data = task
    run = tmp_path / "run"
    args = ["--model", model, "--data", data, "--output", run, "--max-steps", "5", "--save-every", "1", "--keep", "10",
            *COMMON]
    assert sft(args) == 0
    ck = run / "checkpoints"
    shutil.copytree(ck / "step-00000003", ck / "step-3-backup")  # a user's copy: not ours, ignored
    with open(ck / "step-00000005" / "weights.safetensors", "r+b") as f:  # truncated
        f.truncate(100)
    (ck / "step-00000004" / "optimizer.pt").unlink()  # missing
    state = json.loads((ck / "step-00000003" / "state.json").read_text())  # edited
    (ck / "step-00000003" / "state.json").write_text(json.dumps({**state, "step": 1}))
    w = st.load_file(ck / "step-00000002" / "weights.safetensors")  # non-finite, with a matching manifest
    w[next(iter(w))][0] = float("nan")
    st.save_file(w, ck / "step-00000002" / "weights.safetensors")
    write_manifest(ck / "step-00000002")
    capsys.readouterr()
    assert sft(args + ["--resume"]) == 0
    err = capsys.readouterr().err
    assert "step-00000005: weights.safetensors has 100 bytes" in err
    assert "step-00000004: optimizer.pt is missing" in err
    assert "step-00000003: state.json has" in err or "step-00000003: state.json differs" in err
    assert "step-00000002: non-finite weights" in err
    assert "resumed from" in err and "step-00000001 at step 1" in err
    assert [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3, 4, 5]
    assert (ck / "step-3-backup").exists()

    # Nothing intact: one line, exit status 2.
    for p in ck.glob("step-0*"):
        (p / "manifest.json").unlink()
    assert sft(args + ["--resume"]) == 2
    assert "no intact checkpoint" in one_error_line(capsys.readouterr().err.splitlines()[-1])


# --- 8. run.json: written after validation, binding on resume -----------------------------------------------


def test_run_json_is_written_after_validation_and_binds_a_resume(task, tmp_path, capsys):
    model, data = task
    run = tmp_path / "run"
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "abc", "response": \n')
    args = ["--model", model, "--output", run, "--max-steps", "2", *COMMON]
    assert sft(args + ["--data", bad]) == 2
    assert not run.exists()
    assert sft(args + ["--data", data]) == 0  # the corrected run is not refused
    capsys.readouterr()
    assert sft(args + ["--data", data, "--resume", "--lr", "0.5"]) == 2
    assert "--lr is 0.5 here but 0.003" in one_error_line(capsys.readouterr().err)
    assert sft(args + ["--data", data, "--resume", "--log-every", "2"]) == 0
    recorded = json.loads((run / "run.json").read_text())
    assert recorded["lr"] == 3e-3 and recorded["resumed"][-1]["changed"]["log_every"] == [1, 2]


# --- 9. directories honour the umask -------------------------------------------------------------------------


def test_written_directories_honour_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        AutoModel.from_pretrained(FIXTURES / "llada-tiny").save_pretrained(tmp_path / "m")
        assert convert(["import", FIXTURES / "llada-tiny", tmp_path / "c"]) == 0
    finally:
        os.umask(old)
    assert (tmp_path / "m").stat().st_mode & 0o777 == 0o755
    assert (tmp_path / "c").stat().st_mode & 0o777 == 0o755


# --- 14. an L2D checkpoint names the main path it was trained on ------------------------------------------------


def test_l2d_checkpoint_refuses_a_changed_main_path_of_the_same_shape(tmp_path):
    from dlmarch.errors import ConfigError

    native = tmp_path / "native"
    assert convert(["import", L2D_TINY / "l2d", native, "--base", L2D_TINY / "base",
                    "--l2d-options", L2D_TINY / "l2d" / "flow_kwargs.json"]) == 0
    L2DModel.from_pretrained(native)  # the base it was imported against
    changed = tmp_path / "changed-base"
    shutil.copytree(L2D_TINY / "base", changed)
    weights = changed / "model.safetensors"
    w = st.load_file(weights)
    name = sorted(k for k in w if k.endswith("norm.weight"))[0]
    w[name] = w[name] * 1.01
    st.save_file(w, weights)
    with pytest.raises(ConfigError, match="other weights than the one this L2D checkpoint was trained on"):
        L2DModel.from_pretrained(native, main_path=changed)

    # The same through save_pretrained of a model wrapped from its main path.
    model = L2DModel.from_main(L2D_TINY / "base", seed=0)
    model.save_pretrained(tmp_path / "mine")
    L2DModel.from_pretrained(tmp_path / "mine")
    with pytest.raises(ConfigError, match="other weights"):
        L2DModel.from_pretrained(tmp_path / "mine", main_path=changed)


def test_demo_overwrite_never_deletes_a_users_directory(tmp_path):
    """`trainers.demo --overwrite` replaces only a directory a demo wrote (its marker file)."""
    from trainers.demo import WRITES
    from trainers.toy import MARKER, claim_output

    def prepare_output(out, resume, overwrite):
        claim_output(out, resume, overwrite, "trainers.demo", WRITES)

    user = tmp_path / "mine"
    user.mkdir()
    (user / "notes.txt").write_text("keep me")
    for resume, overwrite in ((False, True), (True, False), (False, False)):
        with pytest.raises(DlmarchError, match="mine"):
            prepare_output(user, resume, overwrite)
    assert (user / "notes.txt").read_text() == "keep me" and not (user / MARKER).exists()
    ours = tmp_path / "demo"
    prepare_output(ours, False, False)
    (ours / "results.md").write_text("old")
    prepare_output(ours, True, False)  # resume keeps it
    assert (ours / "results.md").exists()
    prepare_output(ours, False, True)  # overwrite replaces a demo's own output
    assert (ours / MARKER).exists() and not (ours / "results.md").exists()
