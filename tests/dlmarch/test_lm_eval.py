"""Likelihoods against their references, and lm-evaluation-harness end to end on a tiny model and
local tasks (one process, no hub)."""

import json
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from dlmarch import LLaDAModel
from dlmarch.likelihood import causal_log_likelihood, llada_log_likelihood
from tests.helpers import LLADA_TINY, hf_llama, tiny_model_dir


@pytest.fixture(scope="module")
def llada():
    return LLaDAModel.from_pretrained(LLADA_TINY)


# --- ML-GSAI/LLaDA get_log_likelihood.py (commit b7e6c356), transcribed ------------------------------
def _ref_forward_process(batch, prompt_index, mask_id):
    b, l = batch.shape
    target_len = (l - prompt_index.sum()).item()
    k = torch.randint(1, target_len + 1, (), device=batch.device)
    x = torch.round(torch.linspace(float(k), k + (b - 1) * (target_len / b), steps=b, device=batch.device)).long()
    x = ((x - 1) % target_len) + 1
    indices = torch.arange(target_len, device=batch.device).repeat(b, 1)
    is_mask = indices < x.unsqueeze(1)
    for i in range(b):
        is_mask[i] = is_mask[i][torch.randperm(target_len)]
    is_mask = torch.cat((torch.zeros(b, prompt_index.sum(), dtype=torch.bool, device=batch.device), is_mask), dim=1)
    noisy_batch = torch.where(is_mask, mask_id, batch)
    return noisy_batch, (x / target_len).unsqueeze(1).repeat(1, l)


def _ref_get_logits(model, batch, prompt_index, cfg_scale, mask_id):
    if cfg_scale > 0.0:
        prompt_index = prompt_index.unsqueeze(0).repeat(batch.shape[0], 1)
        un_batch = batch.clone()
        un_batch[prompt_index] = mask_id
        batch = torch.cat([batch, un_batch])
    logits = model(batch).logits
    if cfg_scale > 0.0:
        logits, un_logits = torch.chunk(logits, 2, dim=0)
        logits = un_logits + (cfg_scale + 1) * (logits - un_logits)
    return logits


@torch.no_grad()
def _ref_get_log_likelihood(model, prompt, answer, mc_num=128, batch_size=16, cfg_scale=0.0, mask_id=150):
    seq = torch.concatenate([prompt, answer])[None, :]
    seq = seq.repeat((batch_size, 1))
    prompt_index = torch.arange(seq.shape[1]) < len(prompt)
    loss_ = []
    for _ in range(mc_num // batch_size):
        perturbed_seq, p_mask = _ref_forward_process(seq, prompt_index, mask_id)
        mask_index = perturbed_seq == mask_id
        logits = _ref_get_logits(model, perturbed_seq, prompt_index, cfg_scale, mask_id)
        loss = F.cross_entropy(logits[mask_index], seq[mask_index], reduction="none") / p_mask[mask_index]
        loss = loss.sum() / batch_size
        loss_.append(loss.item())
    return -sum(loss_) / len(loss_)


@pytest.mark.parametrize("mc_num,batch_size,cfg_scale", [(32, 8, 0.0), (12, 6, 0.0), (8, 4, 1.5)])
def test_llada_monte_carlo_estimate_is_the_reference(llada, mc_num, batch_size, cfg_scale):
    g = torch.Generator().manual_seed(0)
    prompt, answer = torch.randint(0, 140, (9,), generator=g), torch.randint(0, 140, (7,), generator=g)
    torch.manual_seed(5)
    want = _ref_get_log_likelihood(llada, prompt, answer, mc_num, batch_size, cfg_scale)
    got = llada_log_likelihood(llada, prompt, answer, mc_num, batch_size, cfg_scale, generator=torch.Generator().manual_seed(5))
    assert got == pytest.approx(want, rel=1e-6, abs=1e-6)
    torch.manual_seed(5)  # no generator: torch's global one, as the reference
    assert llada_log_likelihood(llada, prompt, answer, mc_num, batch_size, cfg_scale) == pytest.approx(want, rel=1e-6, abs=1e-6)


@torch.no_grad()
def _ref_suffix_greedy_prediction(model, prefix, target, cfg, mask_id=150):
    """eval_llada.py's suffix_greedy_prediction (is_check_greedy on), transcribed; also returns the
    decoded sequence."""
    seq = torch.full((1, len(prefix) + len(target)), mask_id)
    prompt_index = torch.arange(seq.shape[1]) < len(prefix)
    seq[0, :len(prefix)] = prefix
    for _ in range(len(target)):
        mask_index = seq == mask_id
        logits = _ref_get_logits(model, seq, prompt_index, cfg, mask_id)[mask_index]
        x0 = torch.argmax(logits, dim=-1)
        p = torch.softmax(logits.to(torch.float32), dim=-1)
        confidence = torch.gather(p, dim=-1, index=torch.unsqueeze(x0, -1)).squeeze(dim=-1)
        _, index = torch.sort(confidence, descending=True)
        x0[index[1:]] = mask_id
        seq[mask_index] = x0.clone()
    return bool(torch.all(target == seq[0, len(prefix):])), seq[0, len(prefix):]


@pytest.mark.parametrize("cfg_scale", [0.0, 1.5])
def test_llada_suffix_greedy_is_the_reference(llada, cfg_scale):
    from dlmarch.likelihood import llada_suffix_greedy

    prompt, other = torch.randint(0, 140, (9,), generator=torch.Generator().manual_seed(1)), torch.arange(5)
    want, decoded = _ref_suffix_greedy_prediction(llada, prompt, other, cfg_scale)
    assert not want and not llada_suffix_greedy(llada, prompt, other, cfg_scale)
    assert _ref_suffix_greedy_prediction(llada, prompt, decoded, cfg_scale)[0]
    assert llada_suffix_greedy(llada, prompt, decoded, cfg_scale)


def _requests(*args):
    return [SimpleNamespace(args=a) for a in args]


def _char_tokenizer(path):
    from trainers.tokenizer import build_char_tokenizer

    tok = build_char_tokenizer("abcdefgh ", pad_to=8)
    tok.save_pretrained(path)
    return tok


def test_causal_and_l2d_likelihood_are_the_autoregressive_one(tmp_path):
    from dlmarch import L2DConfig, L2DModel, generate_l2d
    from dlmarch.integrations.lm_eval import DlmarchLM

    hf, main_dir = hf_llama(tmp_path / "llama")
    tok = _char_tokenizer(main_dir)
    pairs = [("abc", " def"), ("h", "gg"), ("bad cafe ", "ace")]
    want = []
    for ctx, cont in pairs:  # transformers' Llama on the same token split
        c = tok(ctx.rstrip()).input_ids
        whole = tok(ctx + cont).input_ids
        with torch.no_grad():
            logp = hf(torch.tensor([whole])).logits.float().log_softmax(-1)[0]
        want.append(sum(float(logp[i - 1, whole[i]]) for i in range(len(c), len(whole))))
    lm = DlmarchLM(pretrained=str(main_dir), batch_size=2)
    got = lm.loglikelihood(_requests(*pairs))
    assert [g for g, _ in got] == pytest.approx(want, abs=1e-4)
    l2d = L2DModel.from_main(str(main_dir), L2DConfig(flow_dim=16, time_hidden=32, flow_in_hidden=32), seed=0)
    l2d.save_pretrained(tmp_path / "l2d", main_path=main_dir)
    _char_tokenizer(tmp_path / "l2d")
    lm = DlmarchLM(pretrained=str(tmp_path / "l2d"), gen_length=6, ode_steps=2, solver="euler")
    assert [g for g, _ in lm.loglikelihood(_requests(*pairs))] == pytest.approx(want, abs=1e-4)
    # generate_until: generate_l2d's tokens, decoded and cut at the first `until`.
    text = lm.generate_until(_requests(("abc", {"until": ["zz"]})))[0]
    ids = torch.tensor([tok("abc").input_ids])
    out = generate_l2d(lm.model, ids, torch.ones_like(ids), max_new_tokens=6, ode_steps=2, solver="euler",
                       eos_token_id=lm.eos_ids[0], generator=torch.Generator().manual_seed(1234))
    assert text == tok.decode(out[0, 3:].tolist(), skip_special_tokens=True).split("zz")[0]


def test_causal_log_likelihood_batches_like_single_rows():
    from tests.helpers import tiny_llada  # any model: batching must not change the values

    model = tiny_llada()
    model.config.causal = True  # the rule the model reads when building its mask
    reqs = [([1, 2, 3], [4, 5]), ([7], [8, 9, 10, 11])]
    one = causal_log_likelihood(model, reqs, batch_size=1)
    two = causal_log_likelihood(model, reqs, batch_size=2)
    assert [a for a, _ in one] == pytest.approx([a for a, _ in two], abs=1e-5)


GEN_TASK = """task: dlmarch_gen
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
  cache_dir: {cache}
test_split: test
output_type: generate_until
doc_to_text: "{{{{question}}}}"
doc_to_target: "{{{{answer}}}}"
generation_kwargs:
  until: ["h"]
metric_list:
  - metric: exact_match
"""

MC_TASK = """task: dlmarch_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
  cache_dir: {cache}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{label}}}}"
metric_list:
  - metric: acc
"""


def _local_tasks(tmp_path):
    """Two local tasks (generate_until, multiple_choice) of three rows each; returns their folder."""
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    gen_rows = [{"question": q, "answer": a} for q, a in [("abc", "d"), ("ba", "ab"), ("cab", "bac")]]
    mc_rows = [{"question": q, "choices": c, "label": y} for q, c, y in
               [("ab", ["a", "bb"], 0), ("ca", ["c", "d", "e"], 2), ("h", ["g", "hh"], 1)]]
    for name, rows, yaml in [("gen", gen_rows, GEN_TASK), ("mc", mc_rows, MC_TASK)]:
        (tasks / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        (tasks / f"{name}.yaml").write_text(yaml.format(data=tasks / f"{name}.jsonl", cache=tmp_path / "cache"))
    return tasks


def test_lm_eval_end_to_end_on_local_tasks(tmp_path, monkeypatch):
    from dlmarch.integrations.lm_eval import main

    import functools

    import lm_eval.tasks

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # Speed only: the command line indexes lm-eval's ~26k built-in task files (20 s) before it
    # reads --include_path; the local tasks alone are enough here.
    monkeypatch.setattr(lm_eval.tasks, "TaskManager", functools.partial(lm_eval.tasks.TaskManager, include_defaults=False))
    model, tok = tiny_model_dir(tmp_path / "m")
    tasks = _local_tasks(tmp_path)
    args = "pretrained={},gen_length=8,block_length=4,steps=8,mc_num=4,kv_cache=dual,gen_batch_size=2".format(tmp_path / "m")
    main(["--model", "dlmarch", "--model_args", args, "--tasks", "dlmarch_gen,dlmarch_mc", "--include_path", str(tasks),
          "--output_path", str(tmp_path / "out"), "--log_samples", "--batch_size", "2"])
    results = json.loads(next((tmp_path / "out").rglob("results_*.json")).read_text())["results"]
    assert "exact_match,none" in results["dlmarch_gen"] and "acc,none" in results["dlmarch_mc"]

    # The harness's numbers are the library's: each generation is dlmarch.generate's (alone equals
    # batched at temperature 0), cut at EOS and "h"; each choice's value is llada_log_likelihood's
    # with the generator reseeded per request.
    from dlmarch import generate
    from dlmarch.integrations.lm_eval import DlmarchLM

    samples = {p.name.split("_")[2]: [json.loads(x) for x in p.read_text().splitlines()]
               for p in (tmp_path / "out").rglob("samples_*.jsonl")}
    lm = DlmarchLM(pretrained=str(tmp_path / "m"), mc_num=4, batch_size=2)
    for s in samples["gen"]:
        ids = torch.tensor([tok(s["doc"]["question"]).input_ids])
        out = generate(lm.model, ids, steps=8, gen_length=8, block_length=4, kv_cache="dual")
        text = tok.decode(out[0, ids.shape[1]:].tolist(), skip_special_tokens=True).split("h")[0]
        assert s["resps"] == [[text]]
    for s in samples["mc"]:
        for i, choice in enumerate(s["doc"]["choices"]):
            ctx, cont = lm.encode_pair(s["doc"]["question"], " " + choice)
            want = llada_log_likelihood(lm.model, torch.tensor(ctx), torch.tensor(cont), 4, 2,
                                        generator=torch.Generator().manual_seed(1234))
            assert float(s["resps"][i][0][0]) == pytest.approx(want, abs=1e-6)


# --- Dream: DreamLM/Dream eval/eval.py, transcribed ----------------------------------------------------------
class _RefDream:
    """The likelihood half of Dream's lm-eval model (eval/eval.py: `_forward_process`, `get_logits`,
    `_eval_target_nll_mc`, `_encode_pair`) with nll_type "mc", log_type "ftb" and no CFG, transcribed."""

    def __init__(self, model, tokenizer, batch_size, mc_num=128, sampling_eps=1e-3, add_bos_token=False,
                 max_length=2048):
        self.model, self.tokenizer, self.batch_size, self.mc_num = model, tokenizer, batch_size, mc_num
        self.sampling_eps, self.add_bos_token, self.max_length = sampling_eps, add_bos_token, max_length
        self.device, self.log_type, self.classifier_free_guidance = torch.device("cpu"), "ftb", 1.0

    def _forward_process(self, batch):
        b, l = batch.shape
        u0 = torch.rand(1, device=batch.device, dtype=torch.float32)
        indices = torch.arange(b, device=batch.device).float()
        t = (u0 + indices / b) % 1
        p_mask = (1 - self.sampling_eps) * t + self.sampling_eps
        p_mask = p_mask[:, None].repeat(1, l)
        mask_indices = torch.rand((b, l), device=batch.device) < p_mask
        mask_indices[:, 0] = False
        mask_indices[:, -1] = False
        noisy_batch = torch.where(mask_indices, self.tokenizer.mask_token_id, batch)
        return noisy_batch, p_mask

    @torch.no_grad()
    def get_logits(self, batch, prompt_index):
        logits = self.model(batch).logits
        logits = torch.cat([logits[:, :1], logits[:, :-1]], dim=1)
        return logits[:, :batch.shape[1]]

    @torch.no_grad()
    def _eval_target_nll_mc(self, prefix, target):
        seq = torch.concatenate([prefix, target])[None, :]
        seq = seq.repeat((self.batch_size, 1)).to(self.device)
        prompt_index = torch.arange(seq.shape[1], device=self.device) < len(prefix)
        loss_acc = []
        for _ in range(max(self.mc_num // self.batch_size, 1)):
            perturbed_seq = seq.clone()
            perturbed_seq_, p_mask = self._forward_process(seq)
            perturbed_seq[:, -len(target):] = perturbed_seq_[:, -len(target):]
            mask_indices = perturbed_seq == self.tokenizer.mask_token_id
            logits = self.get_logits(perturbed_seq, prompt_index)
            loss = F.cross_entropy(logits[mask_indices], seq[mask_indices], reduction='none') / p_mask[mask_indices]
            loss = loss.sum() / self.batch_size
            loss_acc.append(loss.item())
        return sum(loss_acc) / len(loss_acc)

    def _encode_pair(self, context, continuation):
        if self.add_bos_token:
            context = self.tokenizer.bos_token + context
        n_spaces = len(context) - len(context.rstrip())
        if n_spaces > 0:
            continuation = context[-n_spaces:] + continuation
            context = context[:-n_spaces]
        whole_enc = self.tokenizer.encode(context + continuation) + [self.tokenizer.eos_token_id]
        context_enc = self.tokenizer.encode(context)
        return context_enc, whole_enc[len(context_enc):]


@pytest.fixture(scope="module")
def dream_dir(tmp_path_factory):
    from dlmarch import DreamConfig, DreamModel
    from trainers.tokenizer import build_char_tokenizer

    path = tmp_path_factory.mktemp("dream")
    tok = build_char_tokenizer(pad_to=8)
    cfg = DreamConfig(vocab_size=len(tok), hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2,
                      intermediate_size=48, mask_token_id=tok.mask_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, max_position_embeddings=512)
    torch.manual_seed(0)
    DreamModel(cfg).init_weights(std=0.2).save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.mark.parametrize("batch_size,mc_num,add_bos", [(2, 8, False), (4, 4, True), (1, 3, False)])
def test_dream_likelihood_is_dreams_harness(dream_dir, batch_size, mc_num, add_bos):
    from dlmarch.integrations.lm_eval import DlmarchLM

    lm = DlmarchLM(pretrained=str(dream_dir), batch_size=batch_size, mc_num=mc_num, add_bos_token=add_bos, seed=7)
    ref = _RefDream(lm.model, lm.tokenizer, batch_size, mc_num, add_bos_token=add_bos)
    pairs = [("abc", " def"), ("h", "gg"), ("bad cafe ", "ace")]
    got = lm.loglikelihood(_requests(*pairs))
    for (ctx, cont), (ll, greedy) in zip(pairs, got):
        prefix, target = ref._encode_pair(ctx, cont)
        assert lm.encode_pair(ctx, cont) == (prefix, target)  # continuation + EOS
        torch.manual_seed(7)  # the reference's draws come from torch's global generator
        want = -ref._eval_target_nll_mc(torch.tensor(prefix), torch.tensor(target))
        assert ll == pytest.approx(want, rel=1e-6, abs=1e-6) and greedy is False


def test_dream_generate_until_is_generate_dream_with_the_harness_defaults(dream_dir):
    from dlmarch import generate_dream
    from dlmarch.integrations.lm_eval import DlmarchLM

    lm = DlmarchLM(pretrained=str(dream_dir))
    o = lm.options  # DreamLM/Dream eval/eval.py's defaults
    assert (o.gen_length, o.steps, o.temperature, o.alg, o.alg_temp, o.top_p, o.top_k) == (128, 128, 0.0, "entropy", 0.0,
                                                                                            None, None)
    lm = DlmarchLM(pretrained=str(dream_dir), gen_length=8)  # one request per call (see docs/decoding.md)
    prompts = ["abc", "hgfedcba", "b"]
    got = lm.generate_until(_requests(*[(p, {"until": ["zz"]}) for p in prompts]))
    for p, text in zip(prompts, got):
        ids = torch.tensor([lm.tokenizer(p).input_ids])
        x = generate_dream(lm.model, ids, max_new_tokens=8, steps=8, temperature=0.0, top_p=None, top_k=None,
                           alg="entropy", alg_temp=0.0)
        cut = x[0, ids.shape[1]:].tolist()
        cut = cut[: next((i for i, t in enumerate(cut) if t in lm.eos_ids), len(cut))]
        assert text == lm.tokenizer.decode(cut, skip_special_tokens=True).split("zz")[0]


def test_batch_size_is_the_monte_carlo_mini_batch(tmp_path):
    """lm-eval's --batch_size is eval_llada.py's batch_size: the rows of one Monte Carlo forward."""
    from dlmarch.integrations.lm_eval import DlmarchLM

    tiny_model_dir(tmp_path / "m")
    lm = DlmarchLM(pretrained=str(tmp_path / "m"), batch_size=4, mc_num=8)
    calls = []
    real = lm.model.forward
    lm.model.forward = lambda ids, *a, **kw: calls.append(ids.shape[0]) or real(ids, *a, **kw)
    lm.loglikelihood(_requests(("ab", "cd")))
    assert calls == [4, 4]


BAD_MODEL_ARGS = [
    ("pretrained={missing}", "pretrained {missing}: not a directory"),
    ("pretrained={m},bogus=1", "unknown decoding option 'bogus'"),
    ("pretrained={m},gen_length=0", "gen_length must be at least 1, found 0"),
    ("pretrained={m},gen_length=-4", "gen_length must be at least 1, found -4"),
    ("pretrained={m},block_length=0", "block_length must be at least 1, found 0"),
    ("pretrained={m},gen_length=10,block_length=4", "block_length (4) must divide gen_length (10)"),
    ("pretrained={m},mc_num=10,batch_size=4", "mc_num (10) must be a multiple of batch_size (4)"),
    ("pretrained={m},temperature=-1", "temperature must be a finite number >= 0, found -1.0"),
    ("pretrained={m},temperature=nan", "temperature must be a number, found nan"),
    ("pretrained={m},kv_cache=triple", "kv_cache must be one of none, prefix, dual, found 'triple'"),
    ("pretrained={m},dtype=fp64", "dtype must be one of"),
    ("pretrained={m},remasking=best", "remasking must be one of low_confidence, random, found 'best'"),
    ("pretrained={m},threshold=1.5", "threshold must be in (0, 1], found 1.5"),
    ("pretrained={m},seed=1.5", "seed must be an integer, found 1.5"),
    ("pretrained={m},seed=abc", "seed must be an integer, found 'abc'"),
    ("pretrained={m},batch_size=0", "batch_size must be at least 1, found 0"),
    ("pretrained={m},steps=0", "steps must be at least 1, found 0"),
    ("pretrained={m},solver=bogus", "solver must be one of euler, midpoint"),
    ("pretrained={m},solver=euler", "solver does not apply to a llada model (its sampler generate takes"),
]


@pytest.mark.parametrize("args,message", BAD_MODEL_ARGS)
def test_bad_model_args_are_one_line_as_on_the_command_lines(tmp_path, capsys, args, message):
    """lm-eval's model_args and the generate command refuse a bad value with the same line (the
    command: exit 2), before any model is read."""
    from dlmarch.errors import DlmarchError
    from dlmarch.integrations.lm_eval import DlmarchLM
    from dlmarch.sampling.cli import main as generate

    tiny_model_dir(tmp_path / "m")
    args = args.format(m=tmp_path / "m", missing=tmp_path / "missing")
    message = message.format(missing=tmp_path / "missing")
    with pytest.raises(DlmarchError) as e:
        DlmarchLM.create_from_arg_string(args)
    assert str(e.value).startswith(message) and "\n" not in str(e.value)
    values = dict(kv.split("=", 1) for kv in args.split(","))
    if values.pop("pretrained") == str(tmp_path / "m") and not set(values) & {"mc_num", "batch_size", "dtype", "bogus"}:  # argparse refuses unknown flags
        flags = [x for k, v in values.items() for x in ("--" + k.replace("_", "-"), v)]
        assert generate(["--model", str(tmp_path / "m"), "--prompt", "a", *flags]) == 2
        line = capsys.readouterr().err.strip()
        assert line.startswith("error: " + message.replace("'bogus'", "'bogus'")) and "\n" not in line, line


def test_lm_eval_command_refuses_bad_model_args_in_one_line(tmp_path, capsys, monkeypatch):
    import functools

    import lm_eval.tasks

    from dlmarch.integrations.lm_eval import main

    monkeypatch.setattr(lm_eval.tasks, "TaskManager", functools.partial(lm_eval.tasks.TaskManager, include_defaults=False))
    tiny_model_dir(tmp_path / "m")
    tasks = _local_tasks(tmp_path)
    for args, message in [(f"pretrained={tmp_path / 'none'}", f"pretrained {tmp_path / 'none'}: not a directory"),
                          (f"pretrained={tmp_path / 'm'},temperature=nan", "temperature must be a number, found nan")]:
        with pytest.raises(SystemExit) as code:
            main(["--model", "dlmarch", "--model_args", args, "--tasks", "dlmarch_gen", "--include_path", str(tasks)])
        assert code.value.code == 2
        assert capsys.readouterr().err.strip().splitlines()[-1] == "error: " + message


LAUNCH = """import functools, sys
import lm_eval.tasks
# Speed only: skip indexing lm-eval's built-in task files; the local tasks are enough.
lm_eval.tasks.TaskManager = functools.partial(lm_eval.tasks.TaskManager, include_defaults=False)
import os
from dlmarch.integrations.lm_eval import DlmarchLM, main
real = DlmarchLM.generate_until
def counted(self, requests, disable_tqdm=False):  # how many requests this rank was given
    with open(os.environ["COUNTS"] + "." + os.environ.get("RANK", "0"), "a") as f:
        f.write(str(len(requests)) + "\\n")
    return real(self, requests, disable_tqdm)
DlmarchLM.generate_until = counted
main(sys.argv[1:])
"""


def test_two_processes_give_the_one_process_results(tmp_path, monkeypatch):
    """torchrun --nproc_per_node 2 (gloo, CPU): each rank its share of the requests, lm-eval gathers on
    rank 0; every score and every sample's answer equals the one-process run's."""
    import functools
    import os
    import subprocess
    import sys
    from pathlib import Path

    import lm_eval.tasks

    from dlmarch.integrations.lm_eval import main

    tiny_model_dir(tmp_path / "m")
    tasks = _local_tasks(tmp_path)
    (tmp_path / "launch.py").write_text(LAUNCH)
    args = ["--model", "dlmarch", "--model_args",
            f"pretrained={tmp_path / 'm'},gen_length=8,block_length=4,steps=8,mc_num=4,gen_batch_size=2", "--tasks",
            "dlmarch_gen,dlmarch_mc", "--include_path", str(tasks), "--log_samples", "--batch_size", "2",
            "--device", "cpu"]
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(Path(__file__).resolve().parents[2]), "COUNTS": str(tmp_path / "counts")}
    torchrun = Path(sys.executable).with_name("torchrun")
    r = subprocess.run([str(torchrun), "--nproc_per_node", "2", "--master_port", str(29500 + os.getpid() % 20000),
                        str(tmp_path / "launch.py"), *args, "--output_path", str(tmp_path / "out2")],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    # rank 0 docs 0 and 2, rank 1 doc 1 (and a padding copy of it: lm-eval evens the ranks' shares)
    shares = [int((tmp_path / f"counts.{rank}").read_text()) for rank in (0, 1)]
    assert shares == [2, 2], shares
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(lm_eval.tasks, "TaskManager", functools.partial(lm_eval.tasks.TaskManager, include_defaults=False))
    main([*args, "--output_path", str(tmp_path / "out1")])

    def read(out):
        results = json.loads(next(out.rglob("results_*.json")).read_text())["results"]
        # filtered_resps: lm-eval pads a rank's share with copies of its last request (for FSDP); the
        # metrics read the first answer, as here
        samples = {p.name.split("_")[2]: sorted((s["doc_id"], json.dumps(s["filtered_resps"])) for s in
                                                 map(json.loads, p.read_text().splitlines()))
                   for p in out.rglob("samples_*.jsonl")}
        return results, samples

    one, two = read(tmp_path / "out1"), read(tmp_path / "out2")
    assert len(one[1]["gen"]) == 3 and len(one[1]["mc"]) == 3
    assert two[1] == one[1] and two[0] == one[0]
