"""Dream (a next-token head run bidirectionally) under every training objective, and its evaluation.

Dream's reference scores the masked token at position i with logits[:, i - 1] and the first token
with logits[:, 0] (Dream-org's generation_utils.py, `cat([logits[:, :1], logits[:, :-1]])`; LIFT's
trainer, divelab/LIFT SFT/sft_trainer.py `_shift_logits_if_dream`, shifts the same way). The checks
below transcribe that rule by hand over the full (B, L, V) logits and compare every objective with it.
"""

import json
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from dlmarch import DreamConfig, DreamModel
from tests.helpers import random_examples
from trainers.data import pack_rows, packed_batch, pad_batch
from trainers.objectives.blockwise import all_blocks, blockwise
from trainers.objectives.common import masked_forward
from trainers.objectives.gift import gift
from trainers.objectives.lift import lift
from trainers.objectives.sft import sft

MASK, EOS = 60, 61


def tiny_dream(seed=0):
    torch.manual_seed(seed)
    cfg = DreamConfig(vocab_size=64, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=48,
                      mask_token_id=MASK, eos_token_id=EOS, pad_token_id=EOS, max_position_embeddings=512)
    return DreamModel(cfg).init_weights(std=0.2).eval()


def examples(seed=0, n=4):
    return random_examples(seed, n, EOS)


def padded():
    return pad_batch(examples(), EOS, "train")


def packed():
    return packed_batch(pack_rows(examples(n=6), 24), 24, EOS)


class ReferenceShift(torch.nn.Module):
    """The reference's rule written out on the full logits: token i is scored by logits[:, i - 1], a
    document's first token by its own logits; then the objective's selection. Not a Dream model to
    the objectives (no `config`), so they read its logits as they are."""

    def __init__(self, dream):
        super().__init__()
        self.dream = dream

    def forward(self, x, logits_at=None, **kw):
        logits = self.dream(x, **kw).logits  # (B, L, V)
        shifted = torch.cat([logits[:, :1], logits[:, :-1]], 1)
        shifted = torch.where((kw["position_ids"] == 0)[..., None], logits, shifted)  # a packed document's start
        return SimpleNamespace(logits=shifted[logits_at])


@pytest.mark.parametrize("layout", [padded, packed])
def test_masked_token_at_i_is_scored_by_logits_at_i_minus_1(layout):
    """By hand, position by position, position 0 included."""
    model, batch = tiny_dream(), layout()
    select = torch.zeros_like(batch.loss_mask)
    select[:, 0] = True
    select |= batch.loss_mask & (torch.arange(select.shape[1]) % 2 == 1)
    with torch.no_grad():
        got = masked_forward(model, batch.input_ids, batch, select)
        full = model(batch.input_ids, **batch.model_inputs()).logits
    want = []
    for b, i in select.nonzero().tolist():
        first = int(batch.positions[b, i]) == 0
        want.append(full[b, i] if first else full[b, i - 1])
    torch.testing.assert_close(got, torch.stack(want), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(got, full[select], atol=1e-3)  # the unshifted reading differs


OBJECTIVES = {
    "sft": lambda m, b, g: sft(m, b, g, mask_id=MASK),
    "sft_cart": lambda m, b, g: sft(m, b, g, mask_id=MASK, cart_p=0.3),
    "sft_classical": lambda m, b, g: sft(m, b, g, mask_id=MASK, weighting="classical"),
    "gift": lambda m, b, g: gift(m, b, g, mask_id=MASK),  # the entropy probe goes through the shift too
    "blockwise": lambda m, b, g: blockwise(m, b, g, mask_id=MASK, block_size=4),
    "lift": lambda m, b, g: lift(m, b, g, mask_id=MASK),  # and LIFT's gold-confidence probe
}


@pytest.mark.parametrize("layout", [padded, packed])
@pytest.mark.parametrize("name", list(OBJECTIVES))
def test_every_objective_scores_token_i_with_logits_i_minus_1(name, layout):
    model, batch = tiny_dream(), layout()
    out = OBJECTIVES[name](model, batch, torch.Generator().manual_seed(3))
    ref = OBJECTIVES[name](ReferenceShift(model), batch, torch.Generator().manual_seed(3))
    torch.testing.assert_close(out.loss_sum, ref.loss_sum, atol=1e-5, rtol=1e-5)
    assert out.denom == ref.denom and out.metrics == ref.metrics
    assert out.loss_sum.requires_grad and torch.isfinite(out.loss_sum)


def test_the_shift_is_seen_through_the_loops_wrappers():
    """LoRA (peft) and DDP (`module`) wrap the model the objectives get; LLaDA is never shifted."""
    from peft import LoraConfig, get_peft_model

    from tests.helpers import tiny_llada
    from trainers.objectives.common import predicts_next_token

    dream = tiny_dream()
    assert predicts_next_token(get_peft_model(dream, LoraConfig(r=2, target_modules=["q_proj"])))
    assert predicts_next_token(SimpleNamespace(module=dream))
    assert not predicts_next_token(tiny_llada())


def test_all_blocks_refuses_dream():
    with pytest.raises(ValueError, match="Dream"):
        all_blocks(tiny_dream(), padded(), torch.Generator().manual_seed(0), mask_id=MASK, block_size=4)


@pytest.mark.parametrize("name", ["sft", "gift", "blockwise", "lift"])
def test_training_lowers_the_loss_on_a_tiny_dream(name):
    """40 Adam steps on a fixed batch; the loss (mean over 8 fixed draws) falls by a third or more."""
    model, batch = tiny_dream(), padded()
    fn = OBJECTIVES[name]

    def loss():
        with torch.no_grad():
            outs = [fn(model, batch, torch.Generator().manual_seed(100 + k)) for k in range(8)]
        return sum(float(o.loss_sum) / max(o.denom, 1e-9) for o in outs) / len(outs)

    before = loss()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for step in range(40):
        out = fn(model, batch, torch.Generator().manual_seed(step))
        opt.zero_grad()
        (out.loss_sum / max(out.denom, 1e-9)).backward()
        opt.step()
    model.eval()
    after = loss()
    assert after < 0.67 * before, (name, before, after)


def _char_dream_dir(path):
    from trainers.tokenizer import build_char_tokenizer

    tok = build_char_tokenizer("0123456789 :Sudokpzle", words=("<reasoning>", "</reasoning>", "<answer>", "</answer>"),
                               pad_to=8)
    cfg = DreamConfig(vocab_size=len(tok), hidden_size=32, num_layers=1, num_heads=4, num_kv_heads=2,
                      intermediate_size=48, mask_token_id=tok.mask_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id, max_position_embeddings=512)
    torch.manual_seed(0)
    model = DreamModel(cfg).init_weights(std=0.2).eval()
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return model, tok


def test_command_lines_train_and_evaluate_a_dream_dir(tmp_path, capsys):
    """Each trainer runs on a Dream directory; --all-blocks is refused in one line; evaluate decodes the
    trained Dream with generate_dream (greedy, entropy order, steps = gen_length / 2)."""
    from dlmarch import generate_dream
    from dlmarch.prompts import encode_prompts, left_pad
    from trainers.evaluate import main as evaluate_main
    from trainers.tasks import REASONING_PREFIX, get_task

    _char_dream_dir(tmp_path / "m")
    (tmp_path / "d.jsonl").write_text('{"prompt": "1234", "response": "4321"}\n' * 8)
    common = ["--data", str(tmp_path / "d.jsonl"), "--max-steps", "2", "--batch-size", "4", "--no-progress"]
    runs = [("sft", "sft", []), ("gift", "gift", []), ("blockwise", "blockwise", ["--block-size", "4"]),
            ("lift", "lift", []), ("sft-lora", "sft", ["--lora-rank", "2"])]  # peft's wrapper keeps the shift
    for name, method, extra in runs:
        import importlib

        code = importlib.import_module(f"trainers.{method}").main(
            ["--model", str(tmp_path / "m"), "--output", str(tmp_path / name), *common, *extra])
        assert code == 0, (name, capsys.readouterr().err)
        assert json.loads((tmp_path / name / "model" / "config.json").read_text())["model"] == "DreamModel"
    from trainers.blockwise import main as blockwise_main

    capsys.readouterr()
    code = blockwise_main(["--model", str(tmp_path / "m"), "--output", str(tmp_path / "ab"), "--all-blocks", *common])
    err = capsys.readouterr().err
    assert code == 2 and "Dream" in err and len(err.strip().splitlines()) == 1 and not (tmp_path / "ab").exists()

    trained = tmp_path / "sft" / "model"
    out = tmp_path / "eval.jsonl"
    code = evaluate_main(["--model", str(trained), "--task", "sudoku", "--num", "3", "--gen-length", "8",
                          "--no-system-prompt", "--output", str(out)])
    assert code == 0, capsys.readouterr().err
    got = [json.loads(line)["generation"] for line in out.read_text().splitlines()]
    # The same decoding by hand: d1's prompt, then generate_dream with the stated settings.
    from dlmarch.sampling.cli import load_for_generation

    model, tok = load_for_generation(str(trained), None, "cpu")
    task = get_task("sudoku", with_system_prompt=False)
    rows = task.generate(3, 1234)
    ids, am = left_pad(encode_prompts(tok, [task.messages(r) for r in rows], True, REASONING_PREFIX), tok.pad_token_id)
    x = generate_dream(model, ids, am, max_new_tokens=8, steps=4, temperature=0.0, top_p=None, top_k=None,
                       alg="entropy", alg_temp=0.0)
    want = []
    for row in x[:, ids.shape[1]:].tolist():
        cut = row.index(tok.eos_token_id) + 1 if tok.eos_token_id in row else len(row)  # through the EOS
        want.append(tok.decode(row[:cut], skip_special_tokens=False))
    assert got == want


def test_ar_to_diffusion_demo_quick(tmp_path):
    """The toy AR -> diffusion recipe runs end to end and writes finite numbers (a few seconds)."""
    import math

    from trainers.ar_to_diffusion_demo import main

    assert main(["--quick", "--output", str(tmp_path / "run")]) == 0
    rows = json.loads((tmp_path / "run" / "results.json").read_text())["rows"]
    assert [r["model"].split(" ")[0] for r in rows] == ["causal", "converted", "converted", "control:"]
    assert all(math.isfinite(r["cell_accuracy"]) and 0 <= r["cell_accuracy"] <= 1 for r in rows)
    cfg = json.loads((tmp_path / "run" / "dream-sft" / "model" / "config.json").read_text())
    assert cfg["model"] == "DreamModel"


def test_to_diffusion_then_sft_uses_the_tokenizers_mask_token(tmp_path):
    """A source whose tokenizer already has a mask token: to-diffusion --style dream takes that id (it
    appended a row at id V, and trainers.sft then refused "the tokenizer's mask token id 4 differs from the
    model's 72"), and trainers.sft trains the result."""
    import json

    from conversions.to_diffusion import to_diffusion
    from dlmarch import AutoModel
    from tests.helpers import hf_llama
    from trainers.sft import main
    from trainers.tokenizer import build_char_tokenizer

    _, src = hf_llama(tmp_path / "hf")
    tok = build_char_tokenizer("abcdefgh", pad_to=8)
    tok.save_pretrained(src)
    to_diffusion(src, tmp_path / "dream", "dream")
    assert AutoModel.from_pretrained(tmp_path / "dream").config.mask_token_id == tok.mask_token_id
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"prompt": "abc", "response": "cba"}) + "\n" for _ in range(4)))
    assert main(["--model", str(tmp_path / "dream"), "--data", str(data), "--output", str(tmp_path / "run"),
                 "--max-steps", "1", "--batch-size", "4", "--max-length", "32", "--no-progress"]) == 0
    # and Dream's recipe end to end (configs/sft-dream-7b.yaml's three options)
    assert main(["--model", str(tmp_path / "dream"), "--data", str(data), "--output", str(tmp_path / "run-dream"),
                 "--max-steps", "2", "--batch-size", "2", "--max-length", "32", "--no-progress", "--weighting", "dream",
                 "--eos-pad", "hidden", "--response-cutoff", "batch"]) == 0


# --- Dream's SFT recipe (ZHZisZZ/dllm) ---------------------------------------------------------------------------


def dllm_cart_weight(masked_mask, p=0.3):
    """ZHZisZZ/dllm dllm/pipelines/dream/trainer.py cart_weight, transcribed."""
    b, l = masked_mask.shape
    idx = torch.arange(l)
    dist_matrix = idx[None, :] - idx[:, None]
    geo_matrix = (torch.log(torch.tensor(p)) + (dist_matrix.abs() - 1).clamp(min=0) * torch.log(torch.tensor(1 - p))).exp() * 0.5
    geo_matrix.masked_fill_(dist_matrix == 0, 0.0)
    valid_mask = (~masked_mask).float()
    weights = valid_mask @ geo_matrix.T
    return weights * masked_mask.float()


def dllm_mdlm_loss(dream, input_ids, labels, attention_mask, masked_mask, mask_token_id):
    """ZHZisZZ/dllm core/trainers/mdlm.py MDLMTrainer.compute_loss with DreamTrainer's CART weights, the
    right-shifted logits and loss_norm_type "token", transcribed for a given mask. dllm's Dream
    (models/modeling_dream.py) takes position_ids = arange whatever the attention mask."""
    maskable_mask = labels != -100
    noised_input_ids = torch.where(masked_mask, mask_token_id, input_ids)
    positions = torch.arange(input_ids.shape[1]).expand_as(input_ids)
    logits = dream(noised_input_ids, attention_mask=attention_mask, position_ids=positions).logits
    logits = torch.cat([logits[:, :1], logits[:, :-1]], dim=1)
    loss_weights = dllm_cart_weight(masked_mask)
    token_nll = F.cross_entropy(logits.transpose(1, 2), input_ids, reduction="none")
    token_nll = token_nll * loss_weights * masked_mask.to(token_nll.dtype)
    token_nll /= maskable_mask.sum().clamp_min(1)
    return token_nll.sum()


class Recording(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model, self.inputs = model, []
        self.kind, self.shifted_logits = model.kind, model.shifted_logits

    def forward(self, ids, **kw):
        self.inputs.append(ids.clone())
        return self.model(ids, **kw)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_dream_weighting_is_dllms_dream_sft_loss(seed):
    """--weighting dream with --eos-pad hidden: CART (p = 0.3) without 1/t over the response-token count,
    padding trained as EOS targets and hidden from attention (DataCollatorForSeq2Seq with
    label_pad_token_id = pad id): dllm's Dream loss on the same mask."""
    dream = tiny_dream()
    batch = pad_batch(examples(), EOS, "hidden")
    assert batch.attention_mask is not None and (batch.loss_mask & ~batch.attention_mask.bool()).any()
    model = Recording(dream)
    out = sft(model, batch, torch.Generator().manual_seed(seed), mask_id=MASK, weighting="dream")
    masked = model.inputs[-1] == MASK
    assert masked.any()
    labels = torch.where(batch.loss_mask, batch.input_ids, -100)
    want = dllm_mdlm_loss(dream, batch.input_ids, labels, batch.attention_mask, masked, MASK)
    torch.testing.assert_close(out.loss_sum / out.denom, want, atol=1e-5, rtol=1e-5)


def test_per_batch_cutoff_is_dllms():
    """DreamSFTCollator.apply_perbatch_cutoff: one response length drawn from the batch, longer responses cut."""
    import random

    from trainers.data import cut_responses

    ex = examples(n=4)
    rng = random.Random(3)
    kept = random.Random(3).choice([len(e.ids) - e.prompt_len for e in ex])
    cut = cut_responses(ex, rng)
    for e, c in zip(ex, cut):
        r_len = len(e.ids) - e.prompt_len
        assert c.ids == e.ids[:len(e.ids) - max(r_len - kept, 0)] and c.prompt_len == e.prompt_len
