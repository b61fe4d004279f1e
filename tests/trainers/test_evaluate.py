"""trainers.evaluate: re-scoring d1's files, pass@k, math-verify beside d1, resume, torchrun sharding."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from trainers import evaluate as ev
from tests.helpers import FIXTURES
from trainers.tasks import get_task, pass_at_k

D1 = FIXTURES / "d1-generations"


def test_rescore_a_d1_generation_file(tmp_path, capsys):
    src = json.loads((D1 / "countdown.json").read_text())
    f = tmp_path / "countdown_instruct_256_128_0_generations.json"
    f.write_text(json.dumps({"generations": src["generations"]}))
    assert ev.main(["--task", "countdown", "--score", str(f)]) == 0
    verdicts = [json.loads(x) for x in (tmp_path / (f.stem + ".verdicts.jsonl")).read_text().splitlines()]
    assert [v["correct"] for v in verdicts] == [g["d1_verdict"] for g in src["generations"]]
    expected = sum(g["d1_verdict"] for g in src["generations"]) / len(src["generations"])
    assert f"{100 * expected:.2f}" in capsys.readouterr().out  # the table


def test_rescore_d1s_per_process_files_together(tmp_path):
    src = json.loads((D1 / "sudoku.json").read_text())["generations"]
    files = []
    for rank, items in enumerate((src[:10], src[10:])):  # d1 writes one file per process
        files.append(tmp_path / f"sudoku_instruct_256_128_{rank}_generations.json")
        files[-1].write_text(json.dumps({"generations": items}))
    summary, records = ev.rescore(get_task("sudoku"), files)
    assert [r["index"] for r in records] == list(range(len(src)))
    assert [r["correct_cells"] for r in records] == [g["d1_verdict"] for g in src]
    assert summary["cell_accuracy"] == sum(g["d1_verdict"] for g in src) / sum(r["empty_cells"] for r in records)


def test_rescore_our_jsonl_and_refuse_a_bad_file(tmp_path):
    row = {"puzzle": "0312010400201243", "solution": "4312213434211243"}
    f = tmp_path / "ours.jsonl"
    f.write_text(json.dumps({"index": 0, "sample": 0, "generation": "<answer>4312213434211243</answer>",
                             "reference": row}) + "\n")
    out = tmp_path / "v.jsonl"
    assert ev.main(["--task", "sudoku", "--score", str(f), "--output", str(out)]) == 0
    assert json.loads(out.read_text())["correct_cells"] == 6
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"generation": "x"}\n')
    r = subprocess.run([sys.executable, "-m", "trainers.evaluate", "--task", "sudoku", "--score", str(bad)],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "line 1" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_math_verify_is_a_column_beside_d1s(tmp_path):
    pytest.importorskip("math_verify")
    f = tmp_path / "gsm8k_x_0_generations.json"
    f.write_text(json.dumps({"generations": [
        {"question": "q", "generations": "<answer>\\boxed{1,234}</answer>", "ground_truth": 1234.0},  # d1: 1
        {"question": "q", "generations": "<answer>\\boxed{7}</answer>", "ground_truth": 7.0}]}))
    task = get_task("gsm8k")
    summary, records = ev.rescore(task, [f], ev.math_verify_scorer(task))
    assert [r["correct"] for r in records] == [False, True]
    assert [r["math_verify"] for r in records] == [True, True]
    assert summary["accuracy"] == 0.5 and summary["math_verify_accuracy"] == 1.0
    assert ev.main(["--task", "sudoku", "--score", str(f), "--scorer", "math-verify"]) == 2


def _pass_at_k_chen(n, c, k):
    """Chen et al. 2021, Fig. 3 (numpy version), transcribed: 1 - prod(1 - k / arange(n - c + 1, n + 1))."""
    import numpy as np

    if n - c < k:
        return 1.0
    return 1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1))


@pytest.mark.parametrize("n,c,k", [(16, 0, 1), (16, 1, 1), (16, 3, 4), (16, 15, 16), (16, 16, 16), (200, 7, 16)])
def test_pass_at_k_is_chen_et_al(n, c, k):
    assert pass_at_k(n, c, k) == pytest.approx(_pass_at_k_chen(n, c, k), abs=1e-12)
    assert pass_at_k(n, c, k) == pytest.approx(1 - math.comb(n - c, k) / math.comb(n, k), abs=1e-12)


def test_summary_reports_pass_at_k_over_items():
    task = get_task("gsm8k")
    records = [{"index": i, "sample": s, "correct": s < i} for i in range(3) for s in range(4)]  # 0, 1, 2 of 4
    out = ev.summarize(task, records, [1, 2])
    assert out["accuracy"] == pytest.approx(3 / 12)
    assert out["pass@1"] == pytest.approx((0 + 1 / 4 + 2 / 4) / 3)
    assert out["pass@2"] == pytest.approx((0 + (1 - 3 / 6) + (1 - 1 / 6)) / 3)


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
