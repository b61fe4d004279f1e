"""Training objectives and data against their references, on the default paths that change what is
trained: GIFT and Blockwise SFT under EOS padding, the LLaDA chat template's tail, --pack with
--eos-pad train, LIFT's component choice, and the Blockwise paper's classical-SFT baseline."""

import json
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from tests.helpers import tiny_llada
from trainers.data import BatchSchedule, DataError, Example, load_examples, pad_batch
from trainers.objectives import common
from trainers.objectives.blockwise import blockwise_masks
from trainers.objectives.gift import gift
from trainers.objectives.lift import lift
from trainers.objectives.sft import sft
from trainers.tokenizer import build_char_tokenizer

MASK, EOS, PAD, V = 60, 61, 62, 64


def own_answers(batch, examples):
    """(B, L): each padded row's own answer, written from the examples (not read from the batch)."""
    out = torch.zeros(batch.input_ids.shape, dtype=torch.bool)
    for i, e in enumerate(examples):
        out[i, e.prompt_len:len(e.ids)] = True
    return out


def example(line, prompt_len, answer_len, seed):
    """prompt + answer, the answer ending with EOS (answer_len counts it)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 59, (prompt_len + answer_len - 1,), generator=g).tolist() + [EOS]
    return Example(ids, prompt_len, line)


# --- GIFT -----------------------------------------------------------------------------------------------------


class ConfidentOnPadding(torch.nn.Module):
    """Logits of the selected positions: a sure EOS on the padding positions given, uniform elsewhere
    (equal entropies on content). Records the input of every call."""

    def __init__(self, padding):
        super().__init__()
        self.padding, self.inputs = padding, []
        self.w = torch.nn.Parameter(torch.zeros(()))

    def forward(self, ids, logits_at=None, **kw):
        self.inputs.append(ids.clone())
        logits = torch.zeros(*ids.shape, V)
        logits[..., EOS] = torch.where(self.padding, 30.0, 0.0)
        return SimpleNamespace(logits=logits[logits_at] + self.w)


def test_gift_masks_content_at_rate_t_when_the_model_is_confident_on_padding():
    """Under --eos-pad train (padding in the loss), a model sure of its EOS padding must not lower
    beta_ref: with equal entropies on content, content is masked with probability t (the old rule
    gave about 0.86 on average instead of 0.5)."""
    ex = [example(i + 1, 4, 6, i) for i in range(4)]
    batch = pad_batch(ex, EOS, "train", length=48)
    content = own_answers(batch, ex)
    padding = batch.loss_mask & ~content
    assert padding.sum() > 3 * content.sum()
    model = ConfidentOnPadding(padding)
    diffs, rates, pad_diffs = [], [], []
    for seed in range(300):
        gift(model, batch, torch.Generator().manual_seed(seed), mask_id=MASK)
        t = torch.rand(batch.num_docs, generator=torch.Generator().manual_seed(seed))  # gift's first draw
        p = (1 - common.EPS) * t + common.EPS
        masked = model.inputs[-1] == MASK
        diffs.append((masked[content].float() - p[batch.seg[content]]).mean())
        pad_diffs.append((masked[padding].float() - p[batch.seg[padding]]).mean())
        rates.append(masked[content].float().mean())
    assert abs(float(torch.stack(diffs).mean())) < 0.03  # rate t, token by token (sd of the mean ~0.005)
    assert abs(float(torch.stack(rates).mean()) - 0.5) < 0.05  # 0.5 averaged over t ~ U(0, 1)
    assert abs(float(torch.stack(pad_diffs).mean())) < 0.03  # padding: the plain rate t


def lift_repo_gift_loss(model, clean, prompt_len, t, uniforms, pad_token_id, mask_token_id):
    """divelab/LIFT SFT/sft_trainer.py, dLLMTrainer.gift_loss (training branch), transcribed; the
    collator's t (B,) after eps; torch.bernoulli(t_i) is written as uniforms < t_i."""
    B, N = clean.shape
    t = t[:, None].repeat(1, N)
    prompt_mask = torch.arange(N)[None] < prompt_len[:, None]
    pad_mask = clean.eq(pad_token_id)
    response_mask = ~(prompt_mask | pad_mask)
    all_masked_ids = clean.masked_fill(response_mask, mask_token_id)
    with torch.no_grad():
        first_logits = model(all_masked_ids).logits
        log_probs = first_logits.log_softmax(dim=-1)
        probs = log_probs.exp()
        entropy = (probs * log_probs).sum(dim=-1).neg().clamp_min(0)
        beta = entropy.sqrt()
        beta_baseline = beta[response_mask].mean().clamp_min(1e-12)
        t_i = 1 - (1 - t).pow(beta / beta_baseline)
        should_mask = (uniforms < t_i) & response_mask
        assert should_mask.any()  # (the fallback branch is not compared)
        new_labels = clean.clone()
        new_labels[~should_mask] = -100
        new_inputs = clean.clone()
        new_inputs[should_mask] = mask_token_id
    logits = model(new_inputs).logits
    unscaled_loss = F.cross_entropy(logits.view(-1, logits.shape[-1]), new_labels.view(-1), reduction="none",
                                    ignore_index=-100).view(B, -1)
    loss = unscaled_loss / t_i
    return loss.sum() / should_mask.sum().clamp_min(1)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gift_exclude_equals_the_lift_repository_gift_loss(seed):
    model = tiny_llada()
    ex = [example(1, 3, 9, 0), example(2, 5, 7, 1), example(3, 4, 8, 2)]  # 12 tokens each, pad id unused
    batch = pad_batch(ex, PAD, "exclude")
    out = gift(model, batch, torch.Generator().manual_seed(seed), mask_id=MASK)
    g = torch.Generator().manual_seed(seed)  # replay gift's draws
    t = (1 - common.EPS) * torch.rand(batch.num_docs, generator=g) + common.EPS
    u = common.doc_uniform(batch, g, n=2)[0]
    want = lift_repo_gift_loss(model, batch.input_ids, batch.prompt_len, t, u, PAD, MASK)
    assert out.metrics["fallback"] == 0.0
    torch.testing.assert_close(out.loss_sum / out.denom, want, atol=1e-5, rtol=1e-5)


# --- Blockwise SFT -------------------------------------------------------------------------------------------


def test_blockwise_example_is_independent_of_batch_mates_and_padding():
    """A 41-token answer has ceil(41 / 8) = 6 blocks whatever the padding and the batch-mates; its
    blocks and masks for a seed are the same in every batch, and no active block is padding."""
    E = example(7, 3, 41, 0)
    rows = [([E], "train", None), ([example(8, 2, 5, 1), E, example(9, 6, 60, 2)], "train", 256),
            ([E, example(10, 1, 3, 3)], "train", 100), ([example(11, 4, 20, 4), E], "exclude", None)]
    layouts = [(pad_batch(ex, EOS, pad, length=length), ex.index(E), own_answers(pad_batch(ex, EOS, pad, length), ex))
               for ex, pad, length in rows]  # (batch, row of E, the answers)
    n = len(E.ids)
    for epoch in range(7):
        for seed in range(3):
            for kw in ({}, {"prefix_mask_rate": 0.3, "suffix_mask_prob": 0.5}):
                seen = []
                for batch, row, answers in layouts:
                    batch.epoch = epoch
                    m = blockwise_masks(batch, torch.Generator().manual_seed(seed), block_size=8, seed=0, **kw)
                    assert (m["in_active"] <= answers).all()  # never a padding token
                    assert m["in_active"].any(1).all()  # every document's active block is in its answer
                    assert int(m["active_block"][row]) < 6
                    seen.append((int(m["active_block"][row]),
                                 *(m[k][row, :n].tolist() for k in ("active", "prefix_noise", "suffix", "in_active"))))
                assert all(s == seen[0] for s in seen[1:]), (epoch, seed, kw)


# --- the chat template --------------------------------------------------------------------------------------

LLADA_TEMPLATE = (  # LLaDA-8B-Instruct's template: the assistant header is appended whatever add_generation_prompt says
    "{% for message in messages %}{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'"
    " + message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}"
    "{% endif %}{{ content }}{% endfor %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
)


def llada_style_tokenizer():
    tok = build_char_tokenizer(pad_to=8, words=("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"))
    tok.chat_template = LLADA_TEMPLATE
    return tok


def test_llada_template_trains_the_answer_and_eos_by_default(tmp_path):
    tok = llada_style_tokenizer()
    eos = tok.eos_token_id
    path = tmp_path / "d.jsonl"
    rows = [{"prompt": "2+2?", "response": "4"},
            {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"},
                          {"role": "user", "content": "again"}, {"role": "assistant", "content": "ok then"}]}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    header = tok("<|start_header_id|>assistant<|end_header_id|>\n\n", add_special_tokens=False).input_ids
    ex, _ = load_examples(path, tok, 128, eos_id=eos)
    for e, answer in zip(ex, ["4", "ok then"]):  # ML-GSAI/LLaDA GUIDELINES.md: answer<EOS>
        assert e.ids[e.prompt_len:] == tok(answer, add_special_tokens=False).input_ids + [eos]
        assert e.ids[e.prompt_len - len(header):e.prompt_len] == header  # the prompt ends with the generation prompt
    assert tok.decode(ex[1].ids[:ex[1].prompt_len]).endswith("again<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")

    # --render-full-conversation: d1/LIFT render the whole conversation; the template's tail is in the response
    ex, _ = load_examples(path, tok, 128, eos_id=eos, full_conversation=True)
    for e, row in zip(ex, rows):
        msgs = row.get("messages") or [{"role": "user", "content": row["prompt"]}, {"role": "assistant", "content": row["response"]}]
        full = tok(tok.apply_chat_template(msgs, tokenize=False), add_special_tokens=False).input_ids
        prompt = tok(tok.apply_chat_template(msgs[:-1], tokenize=False), add_special_tokens=False).input_ids
        assert e.ids == full + [eos] and e.prompt_len == len(prompt)
        assert tok.decode(e.ids[e.prompt_len:]).endswith("<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n<|eos|>")


# --- --pack with --eos-pad train -----------------------------------------------------------------------------


def test_pack_with_eos_pad_train_is_refused_before_anything_is_written(tmp_path, capsys):
    ex = [example(i + 1, 2, 3, i) for i in range(8)]
    kw = dict(micro_batch_size=2, micro_batches_per_step=1, max_length=16, pad_id=EOS, pack=True)
    with pytest.raises(DataError, match="--pack .* --eos-pad train"):
        BatchSchedule(ex, **kw)
    BatchSchedule(ex, **kw, eos_pad="exclude")
    from trainers.sft import main

    out = tmp_path / "run"
    assert main(["--model", str(tmp_path / "none"), "--data", str(tmp_path / "none.jsonl"), "--output", str(out),
                 "--pack"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--eos-pad exclude" in err[0]
    assert not out.exists()


# --- LIFT's component ----------------------------------------------------------------------------------------


def reference_component(t_batch, mix_vanilla_coef=3):
    """divelab/LIFT `_mix_probs_from_t` + `_sample_idx` under --loss_selection time (method lift3): the
    argmax of (vanilla, top, bottom) weights from the micro-batch's mean t (after eps)."""
    t_mean = float(t_batch.mean().item())
    w_top, w_bottom, w_van = t_mean, 1.0 - t_mean, mix_vanilla_coef * t_mean * (1.0 - t_mean)
    s = w_top + w_bottom + w_van
    probs = [w_van / s, w_top / s, w_bottom / s]
    return ["random", "top", "bottom"][int(torch.tensor(probs).argmax().item())]


def test_lift_picks_one_component_per_micro_batch_from_the_mean_t():
    model = tiny_llada()
    batch = pad_batch([example(1, 3, 8, 0), example(2, 2, 6, 1)], EOS, "exclude")
    checked = differs = 0
    for seed in range(24):
        out = lift(model, batch, torch.Generator().manual_seed(seed), mask_id=MASK)
        if "frac_top" not in out.metrics:  # nothing masked: no component to report
            continue
        t = (1 - common.EPS) * torch.rand(2, generator=torch.Generator().manual_seed(seed)) + common.EPS
        name = reference_component(t)
        assert out.metrics[f"frac_{name}"] == 1.0, (seed, t)
        per_doc = lift(model, batch, torch.Generator().manual_seed(seed), mask_id=MASK, component_from="document")
        differs += per_doc.metrics.get(f"frac_{name}", 0.0) < 1.0
        checked += 1
    assert checked >= 16 and differs > 0  # the per-document rule would have failed this test


# --- the classical SFT baseline ------------------------------------------------------------------------------


def test_sft_classical_weighting_is_blockwise_sft_full_sequence_baseline():
    """Bowen-Sun-0728/Blockwise-SFT train_fullseq.py: no 1/p; per sample the mean CE over its masked
    answer tokens (clamped count), then the mean over samples."""
    model = tiny_llada()
    ex = [example(1, 3, 9, 0), example(2, 5, 7, 1), example(3, 4, 8, 2)]
    batch = pad_batch(ex, PAD, "exclude")
    for seed in range(3):
        out = sft(model, batch, torch.Generator().manual_seed(seed), mask_id=MASK, weighting="classical")
        g = torch.Generator().manual_seed(seed)  # replay sft's draws
        p = (1 - common.EPS) * torch.rand(batch.num_docs, generator=g) + common.EPS
        mask_flags = batch.loss_mask & (common.doc_uniform(batch, g)[0] < p[:, None])
        labels = batch.input_ids.clone()
        labels[~mask_flags] = -100
        logits = model(torch.where(mask_flags, MASK, batch.input_ids)).logits
        ce = F.cross_entropy(logits.transpose(1, 2), labels, ignore_index=-100, reduction="none")
        want = (ce.sum(-1) / mask_flags.sum(-1).clamp(min=1)).mean()
        torch.testing.assert_close(out.loss_sum / out.denom, want, atol=1e-5, rtol=1e-5)


class Recording(torch.nn.Module):
    """Wraps a model and records the input ids of every call."""

    def __init__(self, model):
        super().__init__()
        self.model, self.inputs = model, []

    def forward(self, ids, **kw):
        self.inputs.append(ids.clone())
        return self.model(ids, **kw)


def test_sft_classical_weighting_leaves_eos_padding_clean_as_train_fullseq_does():
    """train_fullseq.py (Bowen-Sun-0728/Blockwise-SFT) masks [plen, len(ids)) only and right-pads with the
    clean pad id (= EOS), out of the loss; under the default --eos-pad train the padding must not be
    masked or scored (before: 58.5% of the loss tokens were padding at the blockwise config's setting)."""
    model = Recording(tiny_llada())
    ex = [example(1, 6, 12, 0), example(2, 4, 5, 1)]
    batch = pad_batch(ex, EOS, "train", length=32)
    padding = batch.loss_mask & ~own_answers(batch, ex)
    for seed in range(4):
        out = sft(model, batch, torch.Generator().manual_seed(seed), mask_id=MASK, weighting="classical")
        noisy = model.inputs[-1]
        assert not (noisy[padding] == MASK).any()
        # the reference's loss from its own (noisy, mask_flags) rows, padding visible and unmasked
        mask_flags = noisy == MASK
        labels = batch.input_ids.clone()
        labels[~mask_flags] = -100
        logits = model.model(noisy).logits
        ce = F.cross_entropy(logits.transpose(1, 2), labels, ignore_index=-100, reduction="none")
        want = (ce.sum(-1) / mask_flags.sum(-1).clamp(min=1)).mean()
        torch.testing.assert_close(out.loss_sum / out.denom, want, atol=1e-5, rtol=1e-5)


# --- the lr schedule -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("schedule", ["linear", "cosine", "constant"])
def test_lr_schedule_is_transformers_schedule_with_warmup(schedule):
    """The warmup starts at 0 (step / warmup), as transformers' get_*_schedule_with_warmup; ours started at
    1 / warmup, one step ahead."""
    import transformers
    from trainers.optimizer import lr_lambda

    total, warmup = 50, 7
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(()))], lr=1.0)
    if schedule == "constant":
        ref = transformers.get_constant_schedule_with_warmup(opt, warmup)
    else:
        ref = getattr(transformers, f"get_{schedule}_schedule_with_warmup")(opt, warmup, total)
    ours = lr_lambda(total, warmup, schedule, 0.0)
    for step in range(total + 1):
        assert ours(step) == pytest.approx(ref.lr_lambdas[0](step), abs=1e-12), step
    if schedule == "cosine":  # with a floor: get_cosine_with_min_lr_schedule_with_warmup(min_lr_rate)
        ref = transformers.get_cosine_with_min_lr_schedule_with_warmup(opt, warmup, total, min_lr_rate=0.1)
        ours = lr_lambda(total, warmup, schedule, 0.1)
        for step in range(warmup, total + 1):  # (its warmup is the same; it only floors the decay)
            assert ours(step) == pytest.approx(ref.lr_lambdas[0](step), abs=1e-12), step


# --- GIFT: the pad id is not content; the probe in the model's mode ------------------------------------------


@pytest.mark.parametrize("seed", [0, 1])
def test_gift_leaves_every_pad_id_token_out_as_the_lift_repository_does(seed):
    """LLaDA's pad id is its EOS: the re-implementation's response_mask drops every token equal to it, the
    answer's own EOS included (never masked, probed or scored); under --eos-pad exclude we must too."""
    model = tiny_llada()
    ex = [example(1, 3, 9, 0), example(2, 5, 7, 1), example(3, 4, 8, 2)]  # 12 tokens each, ending with EOS
    batch = pad_batch(ex, EOS, "exclude")
    out = gift(model, batch, torch.Generator().manual_seed(seed), mask_id=MASK, pad_id=EOS, train_padding=False)
    g = torch.Generator().manual_seed(seed)
    t = (1 - common.EPS) * torch.rand(batch.num_docs, generator=g) + common.EPS
    u = common.doc_uniform(batch, g, n=2)[0]
    want = lift_repo_gift_loss(model, batch.input_ids, batch.prompt_len, t, u, EOS, MASK)
    assert out.metrics["fallback"] == 0.0
    torch.testing.assert_close(out.loss_sum / out.denom, want, atol=1e-5, rtol=1e-5)


class ModeRecording(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model, self.modes = model, []

    def forward(self, ids, **kw):
        self.modes.append(self.training)
        return self.model(ids, **kw)


def test_gift_probe_and_lift_confidence_run_in_the_models_mode_as_the_reference():
    """The re-implementations run their no-grad passes (GIFT's probe, LIFT's confidence) without model.eval():
    in training, LoRA dropout is active there too."""
    ex = [example(1, 3, 9, 0), example(2, 5, 7, 1)]
    batch = pad_batch(ex, PAD, "exclude")
    model = ModeRecording(tiny_llada()).train()
    gift(model, batch, torch.Generator().manual_seed(0), mask_id=MASK)
    assert model.modes == [True, True]
    model.modes.clear()
    for seed in range(6):  # some draw takes a confidence-ranked component
        lift(model, batch, torch.Generator().manual_seed(seed), mask_id=MASK)
    assert len(model.modes) > 6 and all(model.modes)
