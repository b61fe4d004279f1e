"""trainers.evaluate: a run writes every generation, a killed run resumes to the same file, torchrun sharding."""

import json
import os
import subprocess
import sys

import pytest

from trainers import evaluate as ev


def _eval_args(model_dir, data, out, *extra):
    return ["--model", str(model_dir), "--task", "countdown", "--data", str(data), "--gen-length", "16",
            "--block-length", "8", "--batch-size", "2", "--no-system-prompt", "--output", str(out), *extra]


@pytest.fixture(scope="module")
def tiny_eval(tmp_path_factory):
    from tests.helpers import tiny_model_dir

    tmp = tmp_path_factory.mktemp("eval")
    tiny_model_dir(tmp / "m")
    data = tmp / "countdown_cd3_test.jsonl"  # d1's format
    data.write_text("".join(json.dumps({"input": f"{i},{i + 1},3", "output": str(2 * i + 4)}) + "\n" for i in range(7)))
    out = tmp / "one.jsonl"
    assert ev.main(_eval_args(tmp / "m", data, out, "--temperature", "1", "--samples", "2")) == 0
    return tmp, data, out


def test_one_process_run_writes_every_generation(tiny_eval):
    tmp, data, out = tiny_eval
    records = [json.loads(x) for x in out.read_text().splitlines()]
    assert [(r["index"], r["sample"]) for r in records] == [(i, s) for i in range(7) for s in range(2)]
    assert records[0]["reference"] == {"numbers": [0, 1, 3], "target": 4}
    summary = json.loads(out.with_suffix(".summary.json").read_text())
    assert summary["n"] == 14 and "pass@2" in summary and summary["tokens_per_s"] > 0
    assert not list(tmp.glob("one.jsonl.partial-*")) and not (tmp / "one.jsonl.run.json").exists()


def test_a_killed_run_resumes_to_the_same_file(tiny_eval, monkeypatch):
    import dlmarch.sampling.llada as sampler_module  # where the dispatcher finds LLaDA's sampler

    tmp, data, out = tiny_eval
    calls = {"n": 0}
    real = sampler_module.generate

    def dies_on_the_third_batch(*a, **kw):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # what a kill leaves: two batches flushed, nothing merged
        return real(*a, **kw)

    resumed = tmp / "resumed.jsonl"
    args = _eval_args(tmp / "m", data, resumed, "--temperature", "1", "--samples", "2")
    monkeypatch.setattr(sampler_module, "generate", dies_on_the_third_batch)
    with pytest.raises(KeyboardInterrupt):
        ev.main(args)
    monkeypatch.setattr(sampler_module, "generate", real)
    (part,) = tmp.glob("resumed.jsonl.partial-*.jsonl")
    assert len(part.read_text().splitlines()) == 4 and not resumed.exists()
    with open(part, "a") as f:
        f.write('{"index": 3, "sample": 0, "generat')  # a line cut by the kill
    assert ev.main(args) == 2  # partial files without --resume: refused
    assert ev.main(args + ["--seed", "7", "--resume"]) == 2  # other options: refused
    assert ev.main(args + ["--resume"]) == 0
    assert resumed.read_text() == out.read_text()


def test_torchrun_two_processes_give_the_one_process_file(tiny_eval):
    tmp, data, out = tiny_eval
    sharded = tmp / "two.jsonl"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29731",
                        "-m", "trainers.evaluate", *_eval_args(tmp / "m", data, sharded, "--temperature", "1",
                                                               "--samples", "2")],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert sharded.read_text() == out.read_text()
    summary = json.loads(sharded.with_suffix(".summary.json").read_text())
    one = json.loads(out.with_suffix(".summary.json").read_text())
    assert summary["processes"] == 2 and summary["accuracy"] == one["accuracy"] and summary["pass@2"] == one["pass@2"]
