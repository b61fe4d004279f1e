"""End-to-end training runs on a tiny model: learning, resuming after SIGKILL, torchrun, bad input."""

import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import time

import pytest
import torch

from dlmarch import AutoModel
from tests.helpers import make_task

COMMON = ["--max-length", "32", "--batch-size", "16", "--lr", "3e-3", "--warmup-steps", "10", "--no-progress"]
ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "attn_out", "ff_proj", "up_proj", "ff_out"]


def metrics(run):
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    # init std 0.1: a frozen LM head at 0.02 caps the logits near +-1, which no LoRA run can undo.
    return make_task(tmp_path_factory.mktemp("task"), init_std=0.1)


RUNS = {
    "sft": ("sft", []), "sft-lora": ("sft", ["--lora-rank", "8", "--lora-targets", *ALL_LINEAR, "--lr", "5e-3"]),
    "gift": ("gift", []), "gift-lora": ("gift", ["--lora-rank", "8", "--lora-targets", *ALL_LINEAR, "--lr", "5e-3"]),
    "blockwise": ("blockwise", ["--block-size", "4"]), "all-blocks": ("blockwise", ["--block-size", "4", "--all-blocks"]),
    "lift": ("lift", []), "lift2": ("lift", ["--lift-variant", "lift2"]),
}


@pytest.mark.parametrize("run", list(RUNS))
def test_a_few_hundred_steps_lower_the_loss(task, tmp_path, run):
    import importlib

    model, data = task
    method, extra = RUNS[run]
    lora = "--lora-rank" in extra
    main = importlib.import_module(f"trainers.{method}").main
    rc = main(["--model", str(model), "--data", str(data), "--output", str(tmp_path / "run"), "--max-steps", "200",
               "--save-every", "1000", *COMMON, *extra])
    assert rc == 0
    rows = metrics(tmp_path / "run")
    ce_first = statistics.mean(r["ce"] for r in rows[:20])
    ce_last = statistics.mean(r["ce"] for r in rows[-20:])
    loss_first = statistics.mean(r["loss"] for r in rows[:20])
    loss_last = statistics.mean(r["loss"] for r in rows[-20:])
    assert ce_last < 0.75 * ce_first, (ce_first, ce_last)
    assert loss_last < loss_first
    out = tmp_path / "run"
    assert (out / "loss.png").stat().st_size > 1000 and (out / "model" / "tokenizer.json").exists()
    if lora:
        assert (out / "adapter" / "adapter_config.json").exists()


def test_lora_adapter_is_peft_format_and_merged_model_exports_to_hf(task, tmp_path):
    from peft import PeftModel

    from trainers.sft import main

    model, data = task
    out = tmp_path / "run"
    assert main(["--model", str(model), "--data", str(data), "--output", str(out), "--max-steps", "20",
                 "--lora-rank", "4", "--export-hf", *COMMON]) == 0
    ids = torch.randint(0, 20, (2, 12))
    merged = AutoModel.from_pretrained(out / "model")
    hf = AutoModel.from_pretrained(out / "model-hf")  # the HF LLaDA layout, through the converters
    assert json.loads((out / "model-hf" / "config.json").read_text())["model_type"] == "llada"
    with_adapter = PeftModel.from_pretrained(AutoModel.from_pretrained(model), out / "adapter")
    with torch.no_grad():
        want = merged(ids).logits
        torch.testing.assert_close(hf(ids).logits, want, atol=0, rtol=0)
        torch.testing.assert_close(with_adapter(ids).logits, want, atol=1e-5, rtol=0)
        assert not torch.allclose(AutoModel.from_pretrained(model)(ids).logits, want)  # training changed it


def _run(args, **kw):
    return subprocess.run([sys.executable, "-m", "trainers.sft", *args], capture_output=True, text=True, **kw)


@pytest.mark.parametrize("method,extra", [("sft", []), ("gift", ["--probe-every", "2"])])
def test_sigkill_then_resume_equals_an_uninterrupted_run(task, tmp_path, method, extra):
    model, data = task
    args = ["--model", str(model), "--data", str(data), "--max-steps", "400", "--save-every", "25", *COMMON,
            "--batch-size", "4", *extra]

    def run(more):
        return subprocess.run([sys.executable, "-m", f"trainers.{method}", *args, *more], capture_output=True, text=True)

    full = tmp_path / "full"
    assert run(["--output", str(full)]).returncode == 0
    killed = tmp_path / "killed"
    stop_after = random.Random().randint(60, 300)
    proc = subprocess.Popen([sys.executable, "-m", f"trainers.{method}", *args, "--output", str(killed)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    m = killed / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline:
        if m.exists() and m.read_text().count("\n") >= stop_after:
            break
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "the run finished before it could be killed"
    last_ckpt = max(int(p.name[5:]) for p in (killed / "checkpoints").iterdir() if p.name.startswith("step-"))
    assert last_ckpt < 400
    r = run(["--output", str(killed), "--resume"])
    assert r.returncode == 0, r.stderr
    assert "resumed from" in r.stderr
    a, b = metrics(full), metrics(killed)
    assert [x["step"] for x in b] == list(range(1, 401))
    assert [x["loss"] for x in a] == [x["loss"] for x in b]  # exactly
    wa, wb = AutoModel.from_pretrained(full / "model"), AutoModel.from_pretrained(killed / "model")
    for (n, p), (_, q) in zip(wa.state_dict().items(), wb.state_dict().items()):
        assert torch.equal(p, q), n


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("method,mode,steps,extra", [("sft", "ddp", 5, []), ("sft", "fsdp", 5, []), ("gift", "fsdp", 5, []),
                                                    ("gift", "ddp", 70, ["--probe-every", "2"])])
def test_torchrun_two_processes_equal_one(task, tmp_path, method, mode, steps, extra):
    model, data = task
    args = ["--model", str(model), "--data", str(data), "--max-steps", str(steps), "--max-length", "32", "--lr", "3e-3",
            "--no-progress", "--batch-size", "2", "--lora-rank", "0", *extra]
    one = tmp_path / "one"
    r = subprocess.run([sys.executable, "-m", f"trainers.{method}", *args, "--output", str(one), "--grad-accum", "2"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    two = tmp_path / "two"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                        str(_free_port()), "-m", f"trainers.{method}", *args, "--output", str(two), "--distributed", mode],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    la, lb = [x["loss"] for x in metrics(one)], [x["loss"] for x in metrics(two)]
    assert len(la) == len(lb) == steps
    for x, y in zip(la, lb):
        assert abs(x - y) <= 1e-5 * max(1.0, abs(x))
    wa, wb = AutoModel.from_pretrained(one / "model"), AutoModel.from_pretrained(two / "model")
    for (n, p), (_, q) in zip(wa.state_dict().items(), wb.state_dict().items()):
        torch.testing.assert_close(p, q, atol=1e-5, rtol=1e-4, msg=n)


# --- bad input --------------------------------------------------------------------------------------------


def test_output_holding_another_run_is_refused(task, tmp_path):
    from trainers.sft import main

    model, data = task
    args = ["--model", str(model), "--data", str(data), "--output", str(tmp_path / "run"), "--max-steps", "2", *COMMON]
    assert main(args) == 0
    r = _run(args)
    assert r.returncode == 2 and "already holds another run" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert main(args + ["--overwrite"]) == 0


def test_malformed_row_stops_with_its_line_or_is_skipped(task, tmp_path):
    model, data = task
    bad = tmp_path / "bad.jsonl"
    lines = data.read_text().splitlines()
    lines.insert(6, '{"prompt": "abc", "response": ')
    bad.write_text("\n".join(lines) + "\n")
    args = ["--model", str(model), "--data", str(bad), "--max-steps", "2", *COMMON]
    r = _run(args + ["--output", str(tmp_path / "a")])
    assert r.returncode == 2 and f"{bad}: line 7: invalid JSON" in r.stderr
    r = _run(args + ["--output", str(tmp_path / "b"), "--skip-bad-rows"])
    assert r.returncode == 0 and "1 bad rows skipped" in r.stderr


def test_tokenizer_without_the_mask_token_is_refused(tmp_path):
    from trainers.tokenizer import build_char_tokenizer

    model, data = make_task(tmp_path, vocab_size=64, mask_token_id=60)
    build_char_tokenizer("ab").save_pretrained(model)  # 14 tokens: no id 60, no mask token of that id
    (model / "tokenizer_config.json").write_text(
        (model / "tokenizer_config.json").read_text().replace('"mask_token": "<|mask|>"', '"mask_token": null'))
    r = _run(["--model", str(model), "--data", str(data), "--output", str(tmp_path / "r"), "--max-steps", "2", *COMMON])
    assert r.returncode == 2 and "tokenizer" in r.stderr and "mask" in r.stderr


def test_unmatched_lora_target_is_refused(task, tmp_path):
    model, data = task
    r = _run(["--model", str(model), "--data", str(data), "--output", str(tmp_path / "r"), "--max-steps", "2",
              "--lora-rank", "4", "--lora-targets", "q_proj", "o_proj", *COMMON])
    assert r.returncode == 2 and "'o_proj' matches no linear module" in r.stderr


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(task, tmp_path):
    from trainers.cli import run
    from trainers.objectives.sft import sft

    def factory(ctx):
        def objective(model, batch, gen):
            out = sft(model, batch, gen, mask_id=ctx.mask_id)
            if factory.calls == 5:
                out = out._replace(loss_sum=out.loss_sum * float("nan"))
            factory.calls += 1
            return out

        return objective

    factory.calls = 0
    model, data = task
    out = tmp_path / "run"
    rc = run("sft", "", lambda p: None, factory, ["--model", str(model), "--data", str(data), "--output", str(out),
                                                   "--max-steps", "10", "--save-every", "2", *COMMON])
    assert rc == 1
    names = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert names == ["step-00000002", "step-00000004"]
    assert len(metrics(out)) == 5


def test_yaml_config_with_flag_override(task, tmp_path):
    from trainers.options import common_parser, parse

    model, data = task
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"model: {model}\ndata: {data}\noutput: {tmp_path / 'o'}\nlr: 0.5\nlora-rank: 8\n")
    args = parse(common_parser("x", ""), ["--config", str(cfg), "--lr", "0.25"])
    assert args.lr == 0.25 and args.lora_rank == 8 and args.model == str(model)
    cfg.write_text("learning_rate: 1\n")
    from dlmarch.errors import DlmarchError

    with pytest.raises(DlmarchError, match="unknown option 'learning_rate'"):
        parse(common_parser("x", ""), ["--config", str(cfg)])



@pytest.mark.parametrize("name", ["llada-8b-lora.yaml", "l2d-llama-3.2-1b.yaml", "demo-sudoku.yaml"])
def test_example_configs_parse(name):
    from pathlib import Path

    from trainers.l2d import add_options as l2d_options
    from trainers.options import common_parser, parse

    parser = common_parser("x", "")
    l2d_options(parser)
    path = Path(__file__).resolve().parents[2] / "configs" / name
    args = parse(parser, ["--config", str(path), "--model", "m", "--data", "d", "--output", "o"])
    assert args.model == "m"
