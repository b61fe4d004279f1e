"""d1's evaluation protocol beyond its parsers: the items it scores (dllm-reasoning/d1 eval/eval.py)."""

import json
from pathlib import Path

from dlmarch.prompts import cut_at_eos
from trainers.tasks.countdown import Countdown
from trainers.tasks.d1 import d1_items
from trainers.tasks.sudoku import Sudoku

D1_SUDOKU = Path(__file__).resolve().parents[1] / "fixtures" / "d1-sudoku"


def test_sudoku_from_d1s_csv_is_the_item_set_d1_published():
    """d1 scores 256 of its 500 puzzles (np.random.seed(42), np.random.choice); its published baseline
    generations (seven processes, process r taking items r, r + 7, ...) hold exactly ours, in our order."""
    ours = [r["puzzle"] for r in Sudoku().load(D1_SUDOKU / "4x4_test_sudoku.csv")]
    published = json.loads((D1_SUDOKU / "published_items.json").read_text())["puzzles"]
    assert len(ours) == 256
    for rank, items in enumerate(published):
        assert items == ours[rank::7], rank


def test_countdown_from_d1s_file_takes_d1s_order(tmp_path):
    """d1's Countdown file has 256 rows and d1 draws 256 of them: every row, in numpy's permuted order."""
    rows = [{"input": f"{i},{i + 1},{i + 2}", "output": str(3 * i + 3)} for i in range(256)]
    path = tmp_path / "countdown_cd3_test.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    import numpy as np

    np.random.seed(42)  # d1: init_seed(42), then GSM8KDataset's subsample
    order = np.random.choice(256, 256, replace=False)
    got = Countdown().load(path)
    assert [r["target"] for r in got] == [int(rows[i]["output"]) for i in order]
    assert d1_items(list(range(10)), "gsm8k") == list(range(10))  # GSM8K, MATH-500: every row


def test_attend_padding_decodes_as_d1s_eval_without_an_attention_mask(tmp_path):
    """d1's eval.py calls generate(model, input_ids) on left-padded prompts with no attention mask, so a
    short prompt attends to its padding. --attend-padding does the same; the default hides the padding."""
    from dlmarch import generate
    from dlmarch.prompts import encode_prompts, left_pad
    from tests.helpers import tiny_model_dir
    from trainers import evaluate as ev
    from trainers.tasks import get_task

    model, tok = tiny_model_dir(tmp_path / "m")
    task = get_task("countdown")
    task.system_prompt = None  # short prompts for the character tokenizer
    rows = [{"numbers": [3, 5], "target": 8}, {"numbers": [12, 40, 7], "target": 59}]
    kw = dict(gen_length=8, block_length=8, steps=4, batch_size=2, progress=False, reasoning_prefix=False)
    _, d1_like = ev.evaluate(model, tok, task, rows, attend_padding=True, **kw)
    _, masked = ev.evaluate(model, tok, task, rows, **kw)
    encoded = encode_prompts(tok, [task.messages(r) for r in rows], True, "")
    assert len(encoded[0]) != len(encoded[1])  # one row is padded
    ids, _ = left_pad(encoded, tok.pad_token_id)
    out = generate(model, ids, steps=4, gen_length=8, block_length=8)  # d1: no attention mask
    want = [tok.decode(cut_at_eos(r, model.stop_token_ids, keep_eos=True)[0], skip_special_tokens=False)
            for r in out[:, ids.shape[1]:].tolist()]
    assert [r["generation"] for r in d1_like] == want
    assert [r["generation"] for r in masked] != want
