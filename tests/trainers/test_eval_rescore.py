"""trainers.eval_rescore (`trainers.evaluate --score`): re-scoring d1's files, one per process or
together, and our JSONL; a bad file refused in one line."""

import json
import subprocess
import sys

from tests.helpers import FIXTURES
from trainers import evaluate as ev
from trainers.eval_rescore import rescore
from trainers.tasks import get_task

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
    summary, records = rescore(get_task("sudoku"), files)
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
