"""diffu-GRPO against a transcription of dllm-reasoning/d1 `diffu-grpo/diffu_grpo_trainer.py`
(`forward_process`, `_get_per_token_logps`, the advantages of `_generate_and_score_completions`,
`compute_loss`) on fixed rollouts, rewards and mask seeds; the command end to end (LoRA, resume of a
killed run to the same losses, bad input)."""

import json
import shutil

import pytest
import torch
import torch.nn.functional as F

from dlmarch import DreamConfig, DreamModel
from tests.helpers import tiny_llada
from trainers.data import Example, pad_batch
from trainers.objectives.grpo import GRPOObjective, GRPOSettings, frozen_copy, per_token_logps

MASK, EOS = 60, 61


# --- transcription of d1 (test oracle; the LLaDA model's logits read as model(x).logits) -----------


class D1:
    def __init__(self, p_mask_prompt, num_iterations, epsilon, beta, shifted=False):
        self.p_mask_prompt, self.num_iterations, self.epsilon, self.beta = p_mask_prompt, num_iterations, epsilon, beta
        self.mask_id, self.cfg_scale, self.shifted = MASK, 0.0, shifted

    def forward_process(self, batch, prompt_index, mask_id, seed=None):
        torch.manual_seed(seed)  # accelerate's set_seed, as far as torch on CPU goes
        b, l = batch.shape
        t_p = torch.ones(b, device=batch.device) * self.p_mask_prompt
        random_matrix = torch.rand((b, l), device=batch.device)
        is_mask_prompt = prompt_index & (random_matrix < t_p.unsqueeze(1))
        is_mask_completion = ~prompt_index
        is_mask = is_mask_prompt | is_mask_completion
        noisy_batch = torch.where(is_mask, mask_id, batch)
        p_mask = torch.where(prompt_index, t_p.unsqueeze(1), torch.ones_like(t_p).unsqueeze(1))
        return noisy_batch, p_mask

    def get_logits(self, model, batch):
        logits = model(batch).logits
        if self.shifted:  # Dream's head: position j scored by logits[:, j - 1] (Dream-org generation_utils.py)
            logits = torch.cat([logits[:, :1], logits[:, :-1]], dim=1)
        return logits

    def _get_per_token_logps(self, model, input_ids, logits_to_keep, mask_seeds):
        num_iterations, batch_size, seq_len = input_ids.size()
        assert len(mask_seeds) == num_iterations
        prompt_length = seq_len - logits_to_keep
        prompt_index = torch.zeros(seq_len, dtype=torch.bool)
        prompt_index[:prompt_length] = True
        all_perturbed_seqs, all_expanded_inputs = [], []
        for iter_idx, mask_seed in enumerate(mask_seeds):
            expanded_input = input_ids[iter_idx]
            perturbed_seq, _ = self.forward_process(expanded_input, prompt_index, self.mask_id, seed=mask_seed)
            all_perturbed_seqs.append(perturbed_seq)
            all_expanded_inputs.append(expanded_input)
        perturbed_seq = torch.cat(all_perturbed_seqs, dim=0)
        expanded_input = torch.cat(all_expanded_inputs, dim=0)
        logits = self.get_logits(model, perturbed_seq)
        completion_logits = logits[:, -logits_to_keep:, :]
        completion_targets = expanded_input[:, -logits_to_keep:]
        flat_logits = completion_logits.reshape(-1, completion_logits.size(-1))
        flat_targets = completion_targets.reshape(-1)
        loss = F.cross_entropy(flat_logits, flat_targets, reduction="none")
        completion_log_probs = -loss.view(num_iterations * batch_size, logits_to_keep)
        per_token_logps = completion_log_probs.view(num_iterations, batch_size, logits_to_keep)
        return per_token_logps.to(torch.float32)

    def advantages(self, rewards, num_generations):
        mean_grouped_rewards = rewards.view(-1, num_generations).mean(dim=1)
        std_grouped_rewards = rewards.view(-1, num_generations).std(dim=1)
        mean_grouped_rewards = mean_grouped_rewards.repeat_interleave(num_generations, dim=0)
        std_grouped_rewards = std_grouped_rewards.repeat_interleave(num_generations, dim=0)
        return rewards - mean_grouped_rewards

    def compute_loss(self, model, inputs, step):
        prompt_ids = inputs["prompt_ids"]
        completion_ids, completion_mask = inputs["completion_ids"], inputs["completion_mask"]
        mask_seeds = inputs["mask_seeds"]
        input_ids = torch.cat([prompt_ids, completion_ids], dim=1)
        logits_to_keep = completion_ids.size(1)
        this_itr_idx = step % self.num_iterations
        this_itr_mask_seed = mask_seeds[this_itr_idx]
        input_ids = input_ids.unsqueeze(0)
        per_token_logps = self._get_per_token_logps(model, input_ids, logits_to_keep, [this_itr_mask_seed])
        if self.beta != 0.0:
            ref_per_token_logps = inputs["ref_per_token_logps"][this_itr_idx].squeeze(0)
            per_token_kl = torch.exp(ref_per_token_logps - per_token_logps) - (ref_per_token_logps - per_token_logps) - 1
        advantages = inputs["advantages"]
        old_per_token_logps = (inputs["old_per_token_logps"][this_itr_idx].squeeze(0) if self.num_iterations > 1
                               else per_token_logps.detach())
        coef_1 = torch.exp(per_token_logps - old_per_token_logps)
        coef_2 = torch.clamp(coef_1, 1 - self.epsilon, 1 + self.epsilon)
        per_token_loss1 = coef_1 * advantages.unsqueeze(1)
        per_token_loss2 = coef_2 * advantages.unsqueeze(1)
        per_token_loss = -torch.min(per_token_loss1, per_token_loss2)
        if self.beta != 0.0:
            per_token_loss = per_token_loss + self.beta * per_token_kl
        loss = (per_token_loss * completion_mask).sum() / completion_mask.sum()
        is_clipped = (per_token_loss1 < per_token_loss2).float()
        clip_ratio = (is_clipped * completion_mask).sum() / completion_mask.sum()
        return loss, clip_ratio

    def completion_mask(self, completion_ids, eos_token_id):
        is_eos = completion_ids == eos_token_id
        eos_idx = torch.full((is_eos.size(0),), is_eos.size(1), dtype=torch.long)
        eos_idx[is_eos.any(dim=1)] = is_eos.int().argmax(dim=1)[is_eos.any(dim=1)]
        sequence_indices = torch.arange(is_eos.size(1)).expand(is_eos.size(0), -1)
        return (sequence_indices <= eos_idx.unsqueeze(1)).int()


# --- fixed rollouts ----------------------------------------------------------------------------------


P, C, G = 5, 7, 3


def fixed_rollouts(seed=0):
    g = torch.Generator().manual_seed(seed)
    prompts = torch.randint(0, 50, (2, P), generator=g)
    completion = torch.randint(0, 50, (2 * G, C), generator=g)
    completion[0, 3] = EOS  # EOS inside: the tokens after it leave the loss
    completion[4, 0] = EOS
    completion[5, 6] = EOS
    return prompts, torch.cat([prompts.repeat_interleave(G, 0), completion], 1)


REWARDS = [1.0, 0.0, 2.5, 0.5, 0.5, 0.5]  # the second group has no spread: zero advantages


def tiny_dream(seed=0):
    torch.manual_seed(seed)
    cfg = DreamConfig(vocab_size=64, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=48,
                      mask_token_id=MASK, eos_token_id=EOS, pad_token_id=EOS, max_position_embeddings=512)
    return DreamModel(cfg).init_weights(std=0.2).eval()


def build(kind):
    """(policy as the objective calls it, reference for the oracle, objective)."""
    if kind == "llada-lora":
        from peft import LoraConfig, get_peft_model

        base = tiny_llada(seed=1)
        model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                init_lora_weights=False))
        ref = None
    else:
        model = tiny_llada(seed=1) if kind == "llada-full" else tiny_dream(seed=1)
        ref = frozen_copy(model)
    mu = 1 if kind == "llada-full" else 2
    s = GRPOSettings(task="t", num_generations=G, num_iterations=mu, p_mask_prompt=0.3, beta=0.04, epsilon=0.2)
    rows = {1: {}, 2: {}}
    obj = GRPOObjective(s, tokenizer=None, rows=rows, mask_id=MASK, eos_id=EOS, pad_id=EOS,
                        reward_fn=lambda texts, rows: {"r": REWARDS}, reward_names=["r"], ref_model=ref)
    return model, ref, obj


@pytest.mark.parametrize("kind", ["llada-lora", "llada-full", "dream-full"])
def test_logps_advantages_and_loss_equal_d1(kind, monkeypatch):
    model, ref, obj = build(kind)
    model.train()
    prompts, ids = fixed_rollouts()
    monkeypatch.setattr(obj, "_generate", lambda m, p, g: (torch.testing.assert_close(p, ids[:, :P]), ids)[1])
    obj.tokenizer = type("T", (), {"batch_decode": staticmethod(lambda x, **k: ["" for _ in x])})()
    batch = pad_batch([Example(prompts[i].tolist(), P, i + 1) for i in range(2)], EOS, "exclude")
    d1 = D1(0.3, obj.s.num_iterations, 0.2, 0.04, shifted=kind.startswith("dream"))
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    for step in range(obj.s.num_iterations):
        obj.begin_step(step)
        gen = torch.Generator().manual_seed(step)
        out = obj(model, batch, gen)
        buf = obj.buffers[0]
        seeds = [int(x) for x in buf["seeds"]]
        if step == 0:  # what the rollout stored, against d1's
            mu = obj.s.num_iterations
            expanded = ids.unsqueeze(0).expand(mu, -1, -1)
            with torch.no_grad():
                if mu > 1:
                    torch.testing.assert_close(buf["old"], d1._get_per_token_logps(model, expanded, C, seeds))
                if kind == "llada-lora":
                    with model.disable_adapter():
                        d1_ref = d1._get_per_token_logps(model, expanded, C, seeds)
                else:
                    d1_ref = d1._get_per_token_logps(ref, expanded, C, seeds)
            torch.testing.assert_close(buf["ref"], d1_ref)
            if kind == "llada-lora":  # the adapter is not zero: the reference differs from the policy
                assert not torch.allclose(d1_ref, d1._get_per_token_logps(model, expanded, C, seeds).detach())
            torch.testing.assert_close(buf["advantages"], d1.advantages(torch.tensor(REWARDS), G))
            torch.testing.assert_close(buf["mask"], d1.completion_mask(ids[:, P:], EOS))
        inputs = {"prompt_ids": ids[:, :P], "completion_ids": ids[:, P:], "completion_mask": d1.completion_mask(ids[:, P:], EOS),
                  "mask_seeds": seeds, "advantages": d1.advantages(torch.tensor(REWARDS), G),
                  "old_per_token_logps": buf["old"], "ref_per_token_logps": d1_ref}
        d1_loss, d1_clip = d1.compute_loss(model, inputs, step)
        torch.testing.assert_close(out.loss_sum, d1_loss)
        assert out.denom == 1.0 and out.metrics["clip_ratio"] == pytest.approx(float(d1_clip))
        d1_grads = torch.autograd.grad(d1_loss, [p for p in model.parameters() if p.requires_grad])
        opt.zero_grad()
        out.loss_sum.backward()
        for p, g in zip([p for p in model.parameters() if p.requires_grad], d1_grads):
            torch.testing.assert_close(p.grad, g)
        opt.step()  # the next iteration's policy differs from the old one: ratios leave 1
    if obj.s.num_iterations > 1:
        assert out.metrics["clip_ratio"] > 0 or abs(out.metrics["kl"]) > 0


def test_mask_seed_is_fixed_without_random_masking():
    model = tiny_llada(seed=1)
    ids = fixed_rollouts()[1]
    a = per_token_logps(model, ids, P, MASK, 0.3, 42)
    b = per_token_logps(model, ids, P, MASK, 0.3, 7)
    assert not torch.allclose(a, b)  # the prompt's mask depends on the seed
    torch.testing.assert_close(a, D1(0.3, 1, 0.2, 0.0)._get_per_token_logps(model, ids[None], C, [42])[0])


# --- the command -------------------------------------------------------------------------------------


def varied_rewards(task, texts, rows):
    """A reward that differs within a group (a random tiny model never earns d1's Sudoku reward)."""
    return {"chars": [len(set(t)) / 10 for t in texts]}


def test_killed_run_resumes_to_the_same_losses(tmp_path, monkeypatch):
    from tests.helpers import tiny_model_dir
    from trainers import grpo

    monkeypatch.setattr(grpo, "score_completions", varied_rewards)
    tiny_model_dir(tmp_path / "model")
    data = tmp_path / "puzzles.jsonl"
    data.write_text("".join(json.dumps({"puzzle": f"{i:016d}", "solution": "1234" * 4}) + "\n" for i in range(6)))
    out = tmp_path / "run"
    argv = ["--model", str(tmp_path / "model"), "--data", str(data), "--task", "sudoku", "--system-prompt", "none",
            "--output", str(out), "--max-steps", "5", "--batch-size", "1", "--num-generations", "3",
            "--num-iterations", "2", "--gen-length", "8", "--block-length", "4", "--steps", "4",
            "--lr", "3e-2", "--schedule", "constant", "--warmup-steps", "0", "--save-every", "1", "--keep", "10",
            "--lora-rank", "4", "--lora-targets", "q_proj", "v_proj", "--no-progress"]
    assert grpo.main(argv) == 0
    first = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in first] == [0, 1, 0, 1, 0]
    assert all(r["rollout_s"] > 0 for r in first[::2]) and all("rewards/chars" in r and "kl" in r for r in first)
    assert any(r["loss"] != 0 for r in first) and any(r["kl"] > 0 for r in first[1:])
    assert (out / "adapter").is_dir() and (out / "model" / "config.json").exists()
    for step in (4, 5):  # killed after step 3: mid rollout batch (step 4 reuses step 3's rollouts)
        shutil.rmtree(out / "checkpoints" / f"step-{step:08d}")
    assert grpo.main(argv + ["--resume"]) == 0
    again = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in again] == [1, 2, 3, 4, 5]
    for a, b in zip(first[3:], again[3:]):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5, abs=1e-7)
        assert b["reward"] == pytest.approx(a["reward"]) and b["kl"] == pytest.approx(a["kl"], rel=1e-4, abs=1e-8)


def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
    from tests.helpers import tiny_model_dir
    from trainers import grpo

    tiny_model_dir(tmp_path / "model")
    data = tmp_path / "rows.jsonl"
    data.write_text(json.dumps({"question": "q"}) + "\n")
    base = ["--model", str(tmp_path / "model"), "--data", str(data), "--output", str(tmp_path / "run"), "--no-progress"]
    assert grpo.main(base) == 2
    assert "--task is required" in capsys.readouterr().err
    assert grpo.main(base + ["--task", "gsm8k"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "line 1" in err[0] and "answer" in err[0]
    assert grpo.main(base + ["--task", "gsm8k", "--num-generations", "1"]) == 2
    assert not (tmp_path / "run").exists()


def test_scale_rewards_is_trls_normalisation():
    from trainers.objectives.grpo import group_advantages

    r = torch.tensor([1.0, 0.0, 2.5, 0.5, 0.5, 0.5])
    adv, std = group_advantages(r, 3, scale=True)
    g = r.view(-1, 3)  # TRL GRPOTrainer: (r - mean) / (std + 1e-4), per group
    expected = (r - g.mean(1).repeat_interleave(3)) / (g.std(1).repeat_interleave(3) + 1e-4)
    torch.testing.assert_close(adv, expected)
    assert adv[3:].abs().max() == 0


def test_rollout_options_reach_the_sampler(monkeypatch):
    import dlmarch.sampling.llada as llada
    from dlmarch.sampling.options import DecodingOptions

    seen = {}

    def fake_generate(model, prompt, **kw):
        seen.update(kw)
        return torch.cat([prompt, torch.full((prompt.shape[0], kw["gen_length"]), EOS)], 1)

    monkeypatch.setattr(llada, "generate", fake_generate)
    s = GRPOSettings(task="t", num_generations=2, decoding=DecodingOptions(
        gen_length=8, block_length=4, steps=4, kv_cache="dual", threshold=0.8, temperature=0.9, remasking="random"))
    obj = GRPOObjective(s, tokenizer=None, rows={}, mask_id=MASK, eos_id=EOS, pad_id=EOS, reward_fn=None)
    obj._generate(tiny_llada(), torch.zeros(2, 3, dtype=torch.long), None)
    assert {k: seen[k] for k in ("kv_cache", "threshold", "temperature", "remasking", "block_length", "steps")} == \
        {"kv_cache": "dual", "threshold": 0.8, "temperature": 0.9, "remasking": "random", "block_length": 4, "steps": 4}
    assert seen["attention_mask"] is None  # d1's rollouts attend to the prompts' padding
    # left out: d1's rollout settings
    left_out = GRPOObjective(GRPOSettings(task="t"), tokenizer=None, rows={}, mask_id=MASK, eos_id=EOS, pad_id=EOS,
                      reward_fn=None).rollout_options(tiny_llada())
    assert (left_out.gen_length, left_out.block_length, left_out.steps, left_out.temperature) == (256, 64, 64, 0.9)


def test_grpo_demo_never_writes_its_figure_over_a_users_file(tmp_path, capsys):
    """--figure names a path outside --output: an existing file is refused (and kept) before any work;
    with --overwrite only a PNG this command wrote (its text chunk names it) is replaced."""
    from trainers import grpo_demo

    mine = tmp_path / "notes.png"
    mine.write_bytes(b"\x89PNG user's picture")
    rc = grpo_demo.main(["--output", str(tmp_path / "run"), "--figure", str(mine), "--overwrite"])
    assert rc == 2 and "not written by this command" in capsys.readouterr().err
    assert mine.read_bytes() == b"\x89PNG user's picture" and not (tmp_path / "run").exists()
    ours = tmp_path / "ours.png"
    ours.write_bytes(b"\x89PNG tEXtSoftware\x00" + grpo_demo.FIGURE_TAG.encode())
    assert grpo_demo._our_figure(ours) and not grpo_demo._our_figure(mine)
