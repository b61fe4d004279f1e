"""The experiment harness (trainers.experiments) and autoregressive SFT (trainers.ar), against code
someone else wrote: transformers' causal-LM loss and greedy generate, scipy's t quantiles, the
Sudoku task's own validity check."""

import json
import math
import random
import statistics
from pathlib import Path

import pytest
import torch

from tests.helpers import hf_llama, make_task


def test_ar_loss_is_transformers_causal_lm_loss(tmp_path):
    from dlmarch import CausalLM
    from trainers.data import Example, pad_batch
    from trainers.objectives.ar import ar

    hf, path = hf_llama(tmp_path / "hf")
    ours = CausalLM.from_pretrained(path)
    rng = random.Random(0)
    examples = []
    for line in range(3):  # prompt + response + EOS (id 95), different lengths
        p, r = rng.randint(2, 6), rng.randint(3, 9)
        examples.append(Example(ids=[rng.randrange(90) for _ in range(p + r)] + [95], prompt_len=p, line=line + 1))
    batch = pad_batch(examples, pad_id=0, eos_pad="exclude")
    out = ar(ours, batch, torch.Generator())
    labels = torch.where(batch.loss_mask, batch.input_ids, torch.full_like(batch.input_ids, -100))
    with torch.no_grad():
        want = hf(batch.input_ids, attention_mask=batch.attention_mask, labels=labels).loss  # shifted CE, mean over labels
    assert out.denom == float(batch.loss_mask.sum())
    torch.testing.assert_close(out.loss_sum.detach() / out.denom, want, atol=1e-5, rtol=1e-5)


def test_greedy_decoding_is_transformers_generate(tmp_path):
    from dlmarch import CausalLM
    from dlmarch.prompts import left_pad
    from dlmarch.sampling import generate_causal

    hf, path = hf_llama(tmp_path / "hf")
    ours = CausalLM.from_pretrained(path).eval()
    g = torch.Generator().manual_seed(0)
    ids, am = left_pad([torch.randint(0, 96, (n,), generator=g).tolist() for n in (5, 9, 2)], 0)
    got = generate_causal(ours, ids, am, 12)
    with torch.no_grad():
        want = hf.generate(ids, attention_mask=am, max_new_tokens=12, min_new_tokens=12, do_sample=False,
                           pad_token_id=0, eos_token_id=None)
    assert torch.equal(got, want)
    # Sampled: temperature then top-k, one torch.multinomial draw per step from the global generator.
    torch.manual_seed(3)
    got = generate_causal(ours, ids, am, 12, temperature=0.7, top_k=20)
    torch.manual_seed(3)
    with torch.no_grad():
        want = hf.generate(ids, attention_mask=am, max_new_tokens=12, min_new_tokens=12, do_sample=True, temperature=0.7,
                           top_k=20, top_p=1.0, pad_token_id=0, eos_token_id=None)
    assert torch.equal(got, want)


@pytest.mark.parametrize("extra", [[], ["--lora-rank", "8", "--lr", "1e-2", "--lora-targets", "q_proj", "k_proj", "v_proj",
                                   "attn_out", "ff_proj", "up_proj", "ff_out"]], ids=["full", "lora"])
def test_ar_training_lowers_the_loss(tmp_path, extra):
    import statistics

    from dlmarch import CausalLM, LlamaConfig
    from trainers.ar import main
    from trainers.tokenizer import build_char_tokenizer

    tok = build_char_tokenizer("abcdefgh", pad_to=8)
    torch.manual_seed(0)
    CausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                         intermediate_size=128, eos_token_id=tok.eos_token_id)).init_weights().save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    rng = random.Random(0)
    with open(tmp_path / "d.jsonl", "w") as f:
        for _ in range(256):
            s = "".join(rng.choice("abcdefgh") for _ in range(rng.randint(3, 8)))
            f.write(json.dumps({"prompt": s, "response": s[::-1]}) + "\n")
    rc = main(["--model", str(tmp_path / "m"), "--data", str(tmp_path / "d.jsonl"), "--output", str(tmp_path / "run"),
               "--max-steps", "80", "--max-length", "32", "--batch-size", "16", "--lr", "3e-3", "--warmup-steps", "5",
               "--no-progress", *extra])
    assert rc == 0
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    first, last = statistics.mean(r["ce"] for r in rows[:10]), statistics.mean(r["ce"] for r in rows[-10:])
    lora = "--lora-rank" in extra
    assert last < (0.95 if lora else 0.8) * first, (first, last)  # a rank-8 adapter on a random model learns slowly
    assert (tmp_path / "run" / "adapter").exists() == lora
    assert CausalLM.from_pretrained(tmp_path / "run" / "model").config.family == "llama"


def test_ar_refuses_a_masked_diffusion_model(tmp_path, capsys):
    from trainers.ar import main

    model, data = make_task(tmp_path, n=8)
    rc = main(["--model", str(model), "--data", str(data), "--output", str(tmp_path / "run"), "--max-steps", "1",
               "--no-progress"])
    assert rc == 2 and "not causal" in capsys.readouterr().err


def test_t_interval_is_scipys():
    stats = pytest.importorskip("scipy.stats")
    from trainers.experiments.stats import t_interval

    rng = random.Random(0)
    for n in (2, 3, 5, 10, 30):
        xs = [rng.random() for _ in range(n)]
        mean, (lo, hi) = t_interval(xs)
        want = stats.t.interval(0.95, n - 1, loc=mean, scale=stats.sem(xs))
        assert math.isclose(lo, want[0], abs_tol=1e-3) and math.isclose(hi, want[1], abs_tol=1e-3)


def test_difference_interval_is_scipys_two_sample_t_test():
    """The comparisons' test: the interval of the difference is scipy's ttest_ind (equal variances)
    confidence interval, and it excludes 0 exactly when scipy's p-value is below 5%."""
    stats = pytest.importorskip("scipy.stats")
    from trainers.experiments.stats import difference_interval

    rng = random.Random(1)
    rejected = kept = 0
    for n, m, shift in [(3, 3, 0.0), (3, 3, 0.4), (6, 6, 0.15), (6, 4, 0.3), (2, 5, 0.5), (10, 10, 0.1)] * 5:
        a = [rng.gauss(shift, 0.2) for _ in range(n)]
        b = [rng.gauss(0.0, 0.2) for _ in range(m)]
        diff, (lo, hi) = difference_interval(a, b)
        res = stats.ttest_ind(a, b)
        want = res.confidence_interval(0.95)
        assert math.isclose(lo, want.low, abs_tol=2e-3) and math.isclose(hi, want.high, abs_tol=2e-3)
        assert (lo > 0 or hi < 0) == (res.pvalue < 0.05)
        rejected, kept = rejected + (res.pvalue < 0.05), kept + (res.pvalue >= 0.05)
    assert rejected and kept  # both outcomes were exercised


def test_traces_lead_to_the_answer():
    from trainers.experiments.setting import countdown_trace, sudoku_trace, task_setup
    from trainers.tasks.d1 import countdown_correct, countdown_value
    from trainers.tasks.sudoku import is_valid_solution

    task, _ = task_setup("sudoku")
    for row in task.generate(20, 3):
        trace = sudoku_trace(row["puzzle"], row["solution"])
        assert len(trace) == 16 and [c == "." for c in trace] == [c != "0" for c in row["puzzle"]]
        filled = "".join(p if t == "." else t for p, t in zip(row["puzzle"], trace))
        assert is_valid_solution(filled) and filled == row["solution"]
    task, _ = task_setup("countdown")
    for row in task.generate(20, 3):
        last = countdown_trace(row["solution"]).split()[-1]
        assert countdown_correct(countdown_value(last.split("=")[1]), row["target"]), (row, last)


def test_every_character_of_the_rows_has_a_token():
    from trainers.experiments.setting import TASKS, mixture, task_setup, tokenizer

    tok = tokenizer()
    for row in mixture(200, 0):
        ids = tok(row["text"], add_special_tokens=False)["input_ids"]
        assert tok.unk_token_id not in ids, row
    for name in TASKS:
        task, response = task_setup(name)
        for row in task.generate(20, 0):
            prompt = tok.apply_chat_template(task.messages(row), tokenize=True, add_generation_prompt=True)
            ids = list(prompt["input_ids"] if hasattr(prompt, "keys") else prompt)
            ids += tok(response(row), add_special_tokens=False)["input_ids"]
            assert tok.unk_token_id not in ids, (name, tok.decode(ids))


def test_a_users_directory_is_refused_untouched(tmp_path, capsys):
    from trainers.experiments.command import main

    user = tmp_path / "notes"
    user.mkdir()
    (user / "report.md").write_text("mine")
    assert main(["--quick", "--output", str(user)]) == 2
    assert "no dlmarch demo or experiment wrote" in capsys.readouterr().err
    assert [p.name for p in user.iterdir()] == ["report.md"] and (user / "report.md").read_text() == "mine"


def test_detectable_difference_has_80_percent_power():
    """The stated smallest detectable difference: a two-sided t-test at 5% with n seeds a side has
    power about 0.80 against it (exact, scipy's noncentral t: 0.77 at n = 2, closer above)."""
    stats = pytest.importorskip("scipy.stats")
    from trainers.experiments.stats import T80, detectable_difference, pooled_sd

    assert [round(stats.t.ppf(0.8, d), 3) for d in range(1, 31)] == list(T80)
    for n in (2, 3, 5, 10):
        sd = 0.013
        delta, df = detectable_difference(sd, n), 2 * n - 2
        nc = delta / (sd * math.sqrt(2 / n))
        crit = stats.t.ppf(0.975, df)
        power = 1 - stats.nct.cdf(crit, df, nc) + stats.nct.cdf(-crit, df, nc)
        assert 0.76 < power < 0.82 and (n < 3 or abs(power - 0.80) < 0.02), (n, power)
    xs, ys = [0.1, 0.3, 0.2], [0.5, 0.9]
    want = math.sqrt((2 * statistics.variance(xs) + statistics.variance(ys)) / 3)
    assert math.isclose(pooled_sd([xs, ys]), want)


def test_pretraining_mixture_never_shows_a_tasks_format():
    """The base's texts hold none of the fine-tuning rows' markers (tags, grid words, targets, chat
    turns), and every kind of text appears."""
    from trainers.experiments.setting import MIXTURE, mixture

    rows = mixture(400, 1)
    assert len({r["text"].split(" ")[0] for r in rows if not r["text"][0].isdigit()}) == len(MIXTURE) - 2
    for r in rows:
        for marker in ("<", "Sudoku", "puzzle", "numbers", "equals", "answer", "[", "user"):
            assert marker not in r["text"], r


def test_model_at_a_budget_is_that_checkpoints_weights(tmp_path):
    """A curve point is the run's weights at that step: the checkpoint's tensors, not the start's."""
    from dlmarch import safetensors_io as st
    from dlmarch.registry import load_pretrained
    from tests.helpers import tiny_model_dir
    from trainers.experiments.budgets import model_at

    start = tmp_path / "start"
    tiny_model_dir(start)
    run = tmp_path / "run"
    (run / "checkpoints" / "step-00000002").mkdir(parents=True)
    model = load_pretrained(start)
    weights = {k: v + 1.0 for k, v in model.state_dict().items()}
    st.save_file(weights, run / "checkpoints" / "step-00000002" / "weights.safetensors")
    (run / "summary.json").write_text(json.dumps({"steps": 4}))
    (run / "model").mkdir()
    got = load_pretrained(model_at(run, start, 2)).state_dict()
    assert all(torch.equal(got[k], weights[k]) for k in weights)
    assert model_at(run, start, 4) == run / "model"


def test_clue_copy_counts_given_digits_reproduced_in_place(tmp_path):
    """By hand: 3 given digits; the first answer keeps 2 of them in place, the second is one digit
    repeated (14 of 16 cells) and keeps 1, the third has no answer (nothing copied, not collapsed)."""
    from trainers.experiments.gap import clue_copy

    puzzle = "1000" "0200" "0030" "0000"
    rows = [{"answer": "1432" "3214" "2143" "4321"}, {"answer": "2222" "2222" "2222" "2211"}, {"answer": None}]
    path = tmp_path / "gens.jsonl"
    path.write_text("".join(json.dumps({**r, "reference": {"puzzle": puzzle}}) + "\n" for r in rows))
    got = clue_copy(path)
    assert got == {"copied": (2 + 1 + 0) / 9, "collapsed": 1 / 3}
    # d1's extraction pads a short answer with '0': padding is not a collapsed answer
    path.write_text(json.dumps({"answer": "1234" + "0" * 12, "reference": {"puzzle": puzzle}}) + "\n")
    assert clue_copy(path) == {"copied": 1 / 3, "collapsed": 0.0}


@pytest.mark.slow
def test_quick_run_writes_every_result(tmp_path):
    """The one end-to-end run: every experiment at tiny budgets; the schema, finite scores, plots and
    report; a second run with the same command reuses every finished stage."""
    from trainers.experiments.blocks import BLOCKS
    from trainers.experiments.command import main
    from trainers.experiments.l2d import ODE_EVALS
    from trainers.experiments.setting import METHODS, QUICK, TASKS

    out = tmp_path / "exp"
    assert main(["--quick", "--output", str(out)]) == 0
    r = json.loads((out / "results.json").read_text())
    assert set(r) == {"methods", "block_size", "l2d_steps", "cost", "config", "base", "cost_per_item", "curves",
                      "detectable", "gap", "rl"}
    assert set(r["methods"]) == set(TASKS) and all(set(r["methods"][t]) == set(METHODS) for t in TASKS)

    def score(x):
        assert isinstance(x, float) and math.isfinite(x) and 0 <= x <= 1, x
        return x

    assert [score(r["base"][t]) for t in TASKS]
    for task in TASKS:
        for m in METHODS:
            e, c = r["methods"][task][m], r["curves"][task][m]
            assert len(e["seeds"]) == len(e["scores"]) >= 2 and [score(s) for s in e["scores"]]
            assert e["ci95"][0] <= score(e["mean"]) <= e["ci95"][1] and all(map(math.isfinite, e["ci95"]))
            assert c["budgets"] == list(QUICK.budgets) and c["scores"][-1] == e["scores"] and len(c["mean"]) == len(c["budgets"])
        assert math.isfinite(r["detectable"][task]["difference"])
    b = r["block_size"]
    assert b["train"] == b["decode"] == list(BLOCKS) and [[score(x) for x in row] for row in b["accuracy"]]
    assert len(b["accuracy"]) == 3 and all(len(row) == 3 for row in b["accuracy"]) and len(b["sft"]) == 3
    for solver, counts in ODE_EVALS.items():
        assert sorted(map(int, r["l2d_steps"][solver])) == list(counts)
        [score(x) for x in r["l2d_steps"][solver].values()]
        for n in counts:  # the sampler spent what the key says (+ the final read-out)
            s = json.loads((out / "l2d" / f"eval-l2d-s0-{solver}-{n}.summary.json").read_text())
            assert s["evaluations_per_token"] == n + 1
    score(r["l2d_steps"]["main_only"]), score(r["l2d_steps"]["ar_finetune"])
    g = r["gap"]
    assert len(g["causal"]) == len(g["mdm"]) == 3 and [score(x) for x in [*g["causal"], *g["mdm_decoding"].values()]]
    assert len(g["copy"]["causal"]) == len(g["copy"]["mdm"]) == 3 and len(g["copy"]["pretrained_sft"]) == len(QUICK.seeds)
    assert [score(c["copied"]) + score(c["collapsed"]) for c in [*g["copy"]["causal"], *g["copy"]["pretrained_sft"]]]
    for start in ("sft", "gift"):
        x = r["rl"]["starts"][start]
        assert len(x["reward"]) == len(QUICK.seeds) and all(len(c) == QUICK.rl_steps for c in x["reward"])
        [score(v) for v in x["after"]]
    assert set(r["cost"]) == set(r["cost_per_item"]) == {*METHODS, "ar", "l2d"}
    assert r["cost"]["sft"] == r["cost_per_item"]["sft"] == 1.0
    assert all(isinstance(v, float) and math.isfinite(v) and v > 0 for v in [*r["cost"].values(), *r["cost_per_item"].values()])
    for png in ("methods", "block_size", "l2d_steps", "cost", "gap", "rl"):
        assert (out / f"{png}.png").stat().st_size > 5000
    text = (out / "report.md").read_text()
    assert "## What comes out" in text and "method_lr" in text
    stamps = {p: p.stat().st_mtime for p in out.rglob("summary.json")}
    assert main(["--quick", "--output", str(out)]) == 0  # the same command again: nothing is retrained
    assert {p: p.stat().st_mtime for p in out.rglob("summary.json")} == stamps
    assert json.loads((out / "results.json").read_text())["methods"] == r["methods"]


def test_the_published_report_is_computed_from_the_published_results():
    """docs/experiments: report.md is exactly what the report code makes of results.json (no number
    typed by hand), on at least one task every fine-tune moves its base by 10 points or more at the
    largest budget, and the design's detectable difference is stated."""
    from trainers.experiments.report import report

    docs = Path(__file__).resolve().parents[2] / "docs" / "experiments"
    r = json.loads((docs / "results.json").read_text())
    assert (docs / "report.md").read_text() == report(r)
    moved = [t for t, ms in r["methods"].items() if all(m["mean"] - r["base"][t] >= 0.10 for m in ms.values())]
    assert moved and all(math.isfinite(r["detectable"][t]["difference"]) for t in moved)
    assert "are told apart (t-test at 5%, power 80%)" in (docs / "report.md").read_text()


def test_t_quantiles_are_scipys_beyond_the_tables_too():
    stats = pytest.importorskip("scipy.stats")
    from trainers.experiments.stats import t80, t975

    for df in range(1, 300):
        assert abs(t975(df) - stats.t.ppf(0.975, df)) < 1e-3 and abs(t80(df) - stats.t.ppf(0.80, df)) < 1e-3
