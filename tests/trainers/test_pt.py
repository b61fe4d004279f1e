"""`python -m trainers.pt`: LLaDA's pretraining objective, checked against a transcription of its
guideline, and a tiny model's loss falling on {"text"} rows."""

from __future__ import annotations

import json
from types import SimpleNamespace

import torch
import torch.nn.functional as F

from tests.helpers import make_task, tiny_llada
from trainers.data import Example, pad_batch
from trainers.objectives.pt import pretrain
from trainers.pt import load_text, main
from trainers.tokenizer import build_char_tokenizer


def guideline_loss(model, input_ids, mask_id, t, u, eps=1e-3):
    """ML-GSAI/LLaDA GUIDELINES.md, pre-training (transcribed; its torch.rand draws passed in)."""
    b, l = input_ids.shape
    p_mask = (1 - eps) * t + eps
    p_mask = p_mask[:, None].repeat(1, l)
    masked_indices = u < p_mask
    noisy_batch = torch.where(masked_indices, mask_id, input_ids)
    logits = model(input_ids=noisy_batch).logits
    token_loss = F.cross_entropy(logits[masked_indices], input_ids[masked_indices], reduction="none") / p_mask[masked_indices]
    return token_loss.sum() / (input_ids.shape[0] * input_ids.shape[1])


def test_objective_equals_llada_guideline():
    model = tiny_llada()
    g = torch.Generator().manual_seed(0)
    rows = [Example(torch.randint(0, 59, (24,), generator=g).tolist(), 0, i) for i in range(3)]
    batch = pad_batch(rows, 61, "train")
    for fraction, seed in ((0.0, 1), (1.0, 2)):  # full rows, then a random length
        gen = torch.Generator().manual_seed(seed)
        out = pretrain(model, batch, gen, mask_id=60, random_length_fraction=fraction)
        # Replay the generator: the length draws, then t per row, then u per token.
        rep = torch.Generator().manual_seed(seed)
        torch.rand(1, generator=rep)
        length = int(torch.randint(1, 25, (1,), generator=rep))
        ids = batch.input_ids if fraction == 0.0 else batch.input_ids[:, :length]
        t = torch.rand(3, generator=rep)
        u = torch.rand(1, 3, ids.shape[1], generator=rep)[0]
        want = guideline_loss(model, ids, 60, t, u)
        assert torch.allclose(out.loss_sum / out.denom, want, atol=1e-6), fraction
        assert out.metrics["seq_len"] == ids.shape[1]


def test_text_rows_are_concatenated_with_eos_and_cut_into_rows(tmp_path):
    tok = build_char_tokenizer(pad_to=8)
    p = tmp_path / "t.jsonl"
    p.write_text("".join(json.dumps({"body": s}) + "\n" for s in ["abcde", "fgh", "ijklmnop"]))
    args = SimpleNamespace(max_length=6, skip_bad_rows=False, data_split="train", text_field="body")
    ex, report = load_text(args, tok, tok.eos_token_id, p)
    eos = "<|eos|>"
    stream = "abcde" + eos + "fgh" + eos + "ijklmnop" + eos
    assert [tok.decode(e.ids) for e in ex] == ["abcde" + eos, "fgh" + eos + "ij", "klmnop"]
    assert [e.line for e in ex] == [1, 2, 3] and all(e.prompt_len == 0 for e in ex)
    assert report.kept == 3 and report.tokens == 18 and len(tok(stream, add_special_tokens=False).input_ids) == 19


def test_pretraining_lowers_the_loss(tmp_path):
    model_dir, _ = make_task(tmp_path)
    data = tmp_path / "text.jsonl"
    data.write_text("".join(json.dumps({"text": "abcdefgh" * 2}) + "\n" for _ in range(64)))
    out = tmp_path / "run"
    assert main(["--model", str(model_dir), "--data", str(data), "--output", str(out), "--max-length", "32",
                 "--batch-size", "4", "--max-steps", "30", "--lr", "1e-2", "--no-progress"]) == 0
    losses = [json.loads(x)["loss"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    # From chance (about ln V, weighted by 1/p) to below the letters' unigram entropy within 30 steps.
    first, last = sum(losses[:3]) / 3, sum(losses[-10:]) / 10
    assert last < 0.8 * first, (first, last)
    assert (out / "model" / "config.json").exists()
