"""Validation loss on fixed noise, plain log lines instead of progress frames, --report-to."""

from __future__ import annotations

import json

import pytest
import torch

from dlmarch.registry import load_pretrained
from tests.helpers import make_task
from trainers.objectives.sft import sft
from trainers.sft import main
from trainers.tokenizer import build_char_tokenizer
from trainers.data import load_examples
from trainers.validation import Validation
from types import SimpleNamespace
from functools import partial


def rows(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_validation_loss_is_logged_and_identical_for_the_same_weights(tmp_path, capsys):
    model_dir, data = make_task(tmp_path, n=64)
    held_out = tmp_path / "eval.jsonl"
    held_out.write_text("".join(data.read_text().splitlines(keepends=True)[:10]))
    out = tmp_path / "run"
    assert main(["--model", str(model_dir), "--data", str(data), "--eval-data", str(held_out), "--eval-every", "3",
                 "--output", str(out), "--max-steps", "6", "--batch-size", "4", "--lr", "3e-3", "--no-progress",
                 "--log-every", "2", "--report-to", "none", "--seed", "5"]) == 0
    evals = [r for r in rows(out / "metrics.jsonl") if "eval_loss" in r]
    assert [r["step"] for r in evals] == [3, 6] and evals[0]["eval_examples"] == 10
    # Plain lines every --log-every steps, no progress-bar frames.
    err = capsys.readouterr().err
    assert "\r" not in err
    assert [line.split()[2] for line in err.splitlines() if line.startswith("sft step") and "eval_loss" not in line] \
        == ["2/6", "4/6", "6/6"]
    assert [r["step"] for r in rows(out / "metrics.jsonl") if "loss" in r] == [2, 4, 6]
    assert "sft step 6/6 eval_loss" in err
    # The final weights, evaluated afresh in another process state: the number logged at step 6.
    tok = build_char_tokenizer("abcdefgh", pad_to=8)
    model = load_pretrained(out / "model")
    args = SimpleNamespace(pack=False, max_length=1024, batch_size=4, pad_to="batch", eos_pad="train")
    examples, _ = load_examples(held_out, tok, 1024, eos_id=tok.eos_token_id)
    torch.manual_seed(123)  # the global RNG plays no part
    val = Validation(examples, args, tok.eos_token_id)
    objective = partial(sft, mask_id=tok.mask_token_id)
    again = val.loss(model, objective, torch.device("cpu"), lambda: torch.autocast("cpu", enabled=False))
    assert again["eval_loss"] == pytest.approx(evals[-1]["eval_loss"], abs=1e-6)
    assert val.loss(model, objective, torch.device("cpu"), lambda: torch.autocast("cpu", enabled=False)) == again
    assert (out / "loss.png").exists()


def test_print_every_sets_the_console_cadence_apart_from_metrics(tmp_path, capsys):
    model_dir, data = make_task(tmp_path, n=64)
    assert main(["--model", str(model_dir), "--data", str(data), "--output", str(tmp_path / "run"), "--max-steps", "3",
                 "--batch-size", "2", "--print-every", "2", "--report-to", "none"]) == 0  # no terminal: plain lines
    err = capsys.readouterr().err
    assert [line.split()[2] for line in err.splitlines() if line.startswith("sft step")] == ["2/3", "3/3"]
    assert len(rows(tmp_path / "run" / "metrics.jsonl")) == 3  # metrics.jsonl keeps --log-every 1


def test_a_tracker_that_is_not_installed_is_refused_before_the_run(tmp_path, capsys, monkeypatch):
    import trainers.progress as progress

    monkeypatch.setattr(progress, "_tensorboard_writer_class", lambda: None)
    model_dir, data = make_task(tmp_path, n=16)
    out = tmp_path / "run"
    assert main(["--model", str(model_dir), "--data", str(data), "--output", str(out), "--max-steps", "1",
                 "--report-to", "tensorboard"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == "error: --report-to tensorboard needs the tensorboard package (pip install 'dlmarch[tensorboard]')"
    assert not out.exists()


def test_wandb_offline_run_records_the_metrics(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    model_dir, data = make_task(tmp_path, n=16)
    out = tmp_path / "run"
    assert main(["--model", str(model_dir), "--data", str(data), "--output", str(out), "--max-steps", "2",
                 "--batch-size", "4", "--report-to", "wandb", "--no-progress"]) == 0
    runs = list((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb"))


def test_validation_leaves_a_stateful_objective_as_it_was():
    """GIFT's amortised probe caches betas by row number: held-out rows must not land in that cache."""
    from tests.helpers import random_examples, tiny_llada
    from trainers.objectives.gift import GIFTObjective

    model = tiny_llada()
    objective = GIFTObjective(mask_id=60, probe_every=2)
    objective.cache = {99: torch.ones(3)}
    args = SimpleNamespace(pack=False, max_length=64, batch_size=2, pad_to="batch", eos_pad="train")
    val = Validation(random_examples(n=4), args, 61)
    out = val.loss(model, objective, torch.device("cpu"), lambda: torch.autocast("cpu", enabled=False))
    assert out["eval_loss"] > 0
    assert list(objective.cache) == [99] and objective.calls == 0 and objective.fresh == {}
