"""The output guard (dlmarch/outputs.py) against every writer.

The probe matrix: each command that writes x {output = an input, inside an input, containing an
input, through a symbolic link, through `..`, an existing user file, a user's directory}. Each probe
must be refused with one line and exit status 2, and leave every file under the test's root as it
was (hashed before and after, with the set of paths)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from dlmarch.errors import DlmarchError
from dlmarch.outputs import Claim
from tests.helpers import tiny_model_dir


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


def test_a_tool_never_continues_or_replaces_another_tools_output(tmp_path, capsys):
    """One marker name serves every toy pipeline; its record names the tool. Another tool's --resume or
    --overwrite there is refused in one line before anything changes, so its patterns (the experiments'
    *.png) are never merged into the demo's claim and a user's file there is never removed."""
    from trainers.demo import WRITES
    from trainers.experiments.command import main as experiments
    from trainers.toy import MARKER, claim_output

    out = tmp_path / "demo"
    claim_output(out, False, False, "trainers.demo", WRITES)
    (out / "results.json").write_text(json.dumps({"plan": {}, "rows": []}))
    (out / "mine.png").write_text("the user's figure")
    before = tree(out)
    for flag in ("--resume", "--overwrite"):
        with pytest.raises(DlmarchError, match="holds the output of trainers.demo"):
            claim_output(out, flag == "--resume", flag == "--overwrite", "trainers.experiments", ("*.png",))
        assert tree(out) == before
    assert experiments(["--quick", "--only", "cost", "--output", str(out)]) == 2
    assert "holds the output of trainers.demo" in capsys.readouterr().err and tree(out) == before
    claim_output(out, False, True, "trainers.demo", WRITES)  # the demo's own --overwrite
    assert sorted(p.name for p in out.iterdir()) == [MARKER, "mine.png"]


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


def test_claim_records_what_the_tool_writes(tmp_path):
    out = tmp_path / "o"
    Claim(out, ".marker", "tool", ("a", "b-*")).prepare(False, False)
    assert json.loads((out / ".marker").read_text()) == {"tool": "tool", "writes": ["a", "b-*"]}
