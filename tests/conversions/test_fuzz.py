"""A corpus of malformed configs, safetensors headers, JSONL rows and option files fed to the CLIs.

Every refusal must be: exit status 2, one line on stderr naming the file (and the line for JSONL),
no traceback, nothing at the destination. The CLIs run in-process through their `main(argv)` (an
uncaught exception fails the test outright); two cases run as real subprocesses to check what a
user sees.
"""

import json
import random
import shutil
import struct
import subprocess
import sys

import pytest

from tests.helpers import FIXTURES, L2D_TINY, LLADA_TINY, make_task

LLAMA_TINY = L2D_TINY / "base"  # a transformers Llama checkpoint
CONFIG = json.loads((LLADA_TINY / "config.json").read_text())
LLAMA_CONFIG = json.loads((LLAMA_TINY / "config.json").read_text())
DREAM_TINY = FIXTURES / "dream-tiny"
DREAM_CONFIG = json.loads((DREAM_TINY / "config.json").read_text())


def assert_refused(rc, stderr: str, dst, *names):
    """Exit 2, one line naming one of `names` (the file, or file and line), no traceback, nothing at dst."""
    lines = stderr.strip().splitlines()
    assert rc == 2, stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    assert "Traceback" not in stderr
    assert any(str(name) in lines[0] for name in names), (names, lines[0])
    assert not dst.exists()
    if dst.parent.exists():
        leftovers = [p.name for p in dst.parent.iterdir() if p.name.startswith(f".{dst.name}")]
        assert not leftovers, leftovers


# --- config.json ---------------------------------------------------------------------------------------------

INT_FIELDS = ["d_model", "n_heads", "n_kv_heads", "n_layers", "mlp_hidden_size", "embedding_size", "max_sequence_length"]
BAD_INTS = [0, -1, 1.5, "8", [4], {"a": 1}, True, 10**6]
CONFIG_CASES = [{f: v} for f in INT_FIELDS for v in BAD_INTS if (f, v) != ("max_sequence_length", 10**6)] + [
    {"d_model": None}, {"n_heads": None},
    {"rope_theta": "x"}, {"rope_theta": -1}, {"rms_norm_eps": 0}, {"rms_norm_eps": [1e-5]},
    {"weight_tying": "yes"}, {"include_bias": 1}, {"include_qkv_bias": None},
    {"eos_token_id": 160}, {"eos_token_id": -3}, {"eos_token_id": "151"}, {"mask_token_id": 10**9},
    {"bos_token_id": 2.5}, {"eos_token_id": ["x"]},
    {"model_type": 5}, {"model_type": None}, {"block_type": "sequential"},
]
LLAMA_CASES = [
    {"rope_scaling": "linear"}, {"rope_scaling": {"rope_type": "linear"}}, {"rope_scaling": {"rope_type": "yarn", "factor": 2}},
    {"rope_scaling": {"rope_type": "llama3", "factor": 8}}, {"rope_parameters": [1]}, {"rope_parameters": {"rope_type": "linear"}},
    {"rope_scaling": {"rope_type": "llama3", "factor": 8, "low_freq_factor": 4, "high_freq_factor": 1,
                      "original_max_position_embeddings": 8192}},
    {"head_dim": 0.5}, {"head_dim": -16}, {"num_key_value_heads": 3}, {"attention_bias": "false"}, {"hidden_act": "gelu"},
    {"vocab_size": 100.5}, {"eos_token_id": 100}, {"num_hidden_layers": "2"}, {"tie_word_embeddings": None},
]
RAW_CONFIGS = [b"", b"[]", b"{", b'"llada"', b"\xff\xfe{}", b"[" * 100_000 + b"]" * 100_000, b'{"model_type": "llada"}']


def _src(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(LLADA_TINY, src)
    return src


def _convert(argv, capsys):
    from conversions.__main__ import main

    rc = main([str(a) for a in argv])
    return rc, capsys.readouterr().err


@pytest.mark.parametrize("change", CONFIG_CASES, ids=[json.dumps(c)[:40] for c in CONFIG_CASES])
def test_malformed_config_values(tmp_path, capsys, change):
    src, dst = _src(tmp_path), tmp_path / "out" / "native"
    (src / "config.json").write_text(json.dumps({**CONFIG, **change}))
    rc, err = _convert(["import", src, dst], capsys)
    # Sizes that are valid numbers but disagree with the weights are named by the weights file.
    assert_refused(rc, err, dst, src / "config.json", "model.safetensors")


@pytest.mark.parametrize("change", LLAMA_CASES, ids=[json.dumps(c)[:40] for c in LLAMA_CASES])
def test_malformed_llama_config_values(tmp_path, capsys, change):
    src, dst = tmp_path / "src", tmp_path / "out" / "native"
    shutil.copytree(LLAMA_TINY, src)
    (src / "config.json").write_text(json.dumps({**LLAMA_CONFIG, **change}))
    rc, err = _convert(["import", src, dst], capsys)
    assert_refused(rc, err, dst, src / "config.json")


DREAM_CASES = [{"mask_token_id": "159"}, {"mask_token_id": 159.0}, {"mask_token_id": True}, {"mask_token_id": []},
               {"mask_token_id": {"id": 159}}, {"mask_token_id": None}, {"mask_token_id": 160}, {"mask_token_id": ["x"]},
               {"pad_token_id": "150"}, {"pad_token_id": 1.5}, {"pad_token_id": False}, {"eos_token_id": "150"},
               {"use_sliding_window": True}, {"vocab_size": "160"}, {"tie_word_embeddings": True}]


@pytest.mark.parametrize("change", DREAM_CASES, ids=[json.dumps(c)[:40] for c in DREAM_CASES])
def test_malformed_dream_config_values(tmp_path, capsys, change):
    """Dream's config.json, refused as LLaDA's and Llama's are: by import, and by loading it directly.
    tie_word_embeddings true beside the fixture's own (distinct) lm_head.weight would drop the head."""
    from dlmarch import AutoModel
    from dlmarch.errors import DlmarchError

    src, dst = tmp_path / "src", tmp_path / "out" / "native"
    shutil.copytree(DREAM_TINY, src)
    (src / "config.json").write_text(json.dumps({**DREAM_CONFIG, **change}))
    rc, err = _convert(["import", src, dst], capsys)
    assert_refused(rc, err, dst, src / "config.json", src / "model.safetensors")
    with pytest.raises(DlmarchError, match="config.json|model.safetensors") as e:
        AutoModel.from_pretrained(src)
    assert len(str(e.value).splitlines()) == 1


def test_a_tied_dream_config_with_the_embedding_as_head_loads(tmp_path):
    """The refusal above is for a head that differs: a stored head equal to the embedding is what a
    tied checkpoint may hold (HF writes it or not)."""
    import torch
    from safetensors.torch import load_file, save_file

    from dlmarch import AutoModel

    src = tmp_path / "src"
    shutil.copytree(DREAM_TINY, src)
    (src / "config.json").write_text(json.dumps({**DREAM_CONFIG, "tie_word_embeddings": True}))
    sd = load_file(src / "model.safetensors")
    sd["lm_head.weight"] = sd["model.embed_tokens.weight"].clone()
    save_file(sd, src / "model.safetensors", metadata={"format": "pt"})
    model = AutoModel.from_pretrained(src)
    assert model.config.tie_word_embeddings and torch.equal(model.wte.weight, sd["model.embed_tokens.weight"])


@pytest.mark.parametrize("raw", RAW_CONFIGS, ids=range(len(RAW_CONFIGS)))
def test_malformed_config_files(tmp_path, capsys, raw):
    src, dst = _src(tmp_path), tmp_path / "out" / "native"
    (src / "config.json").write_bytes(raw)
    rc, err = _convert(["import", src, dst], capsys)
    assert_refused(rc, err, dst, src / "config.json")


NATIVE_CASES = [{"format": "dlmarch"}, {"format": "dlmarch", "config": [1]}, {"format": "dlmarch", "config": "llada"},
                {"format": "dlmarch", "config": {"family": "gpt9"}}, {"format": "dlmarch", "config": {"family": "llada"}},
                {"format": "dlmarch", "config": {"family": "llada", "vocab_size": 8, "hidden_size": 8, "num_layers": 1,
                                                 "num_heads": 0, "num_kv_heads": 1, "intermediate_size": 8}}]


@pytest.mark.parametrize("raw", NATIVE_CASES, ids=range(len(NATIVE_CASES)))
def test_malformed_native_configs(tmp_path, capsys, raw):
    src, dst = tmp_path / "native", tmp_path / "out" / "hf"
    src.mkdir()
    (src / "config.json").write_text(json.dumps(raw))
    dst.parent.mkdir()
    rc, err = _convert(["export", src, dst], capsys)
    assert_refused(rc, err, dst, src / "config.json")


# --- safetensors headers ---------------------------------------------------------------------------------------


def _header(path):
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8:8 + n]), data[8 + n:]


def _write(path, header, body, raw=None):
    raw = raw if raw is not None else json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + body)


def _first(h):
    return next(k for k in h if k != "__metadata__")


def _dup(path, h, body):
    name = _first(h)
    text = json.dumps(h)
    entry = json.dumps({name: h[name]})[1:-1]
    _write(path, None, body, raw=(text[:-1] + ", " + entry + "}").encode())


HEADER_CASES = {
    "negative offset": lambda h: h[_first(h)].update(data_offsets=[-8, h[_first(h)]["data_offsets"][1]]),
    "overlap": lambda h: h[_first(h)].update(data_offsets=[o + 4 for o in h[_first(h)]["data_offsets"]]),
    "negative dim": lambda h: h[_first(h)].update(shape=[-s for s in h[_first(h)]["shape"]]),
    "string dim": lambda h: h[_first(h)].update(shape=[str(s) for s in h[_first(h)]["shape"]]),
    "float offsets": lambda h: h[_first(h)].update(data_offsets=[float(o) for o in h[_first(h)]["data_offsets"]]),
    "unknown dtype": lambda h: h[_first(h)].update(dtype="F128"),
    "entry not an object": lambda h: h.__setitem__(_first(h), 5),
    "no offsets": lambda h: h[_first(h)].pop("data_offsets"),
    "metadata not strings": lambda h: h.__setitem__("__metadata__", {"format": 1}),
    "beyond the file": lambda h: h[_first(h)].update(data_offsets=[10**12, 10**12 + 4]),
}


@pytest.mark.parametrize("case", list(HEADER_CASES) + ["duplicate name", "not json", "a list", "huge length", "deep"])
def test_malformed_safetensors_headers(tmp_path, capsys, case):
    src, dst = _src(tmp_path), tmp_path / "out" / "native"
    path = src / "model.safetensors"
    h, body = _header(path)
    if case in HEADER_CASES:
        HEADER_CASES[case](h)
        _write(path, h, body)
    elif case == "duplicate name":
        _dup(path, h, body)
    elif case == "not json":
        _write(path, None, body, raw=b"{not json")
    elif case == "a list":
        _write(path, None, body, raw=b"[]")
    elif case == "deep":
        _write(path, None, body, raw=b"[" * 50_000 + b"]" * 50_000)
    else:
        path.write_bytes(struct.pack("<Q", 2**40) + b"{}")
    rc, err = _convert(["import", src, dst], capsys)
    assert_refused(rc, err, dst, path)


def test_random_header_corruptions(tmp_path, capsys):
    """Seeded byte flips inside the header: refused as above, or (a flip in a metadata value) accepted."""
    rng = random.Random(0)
    clean = (LLADA_TINY / "model.safetensors").read_bytes()
    (n,) = struct.unpack("<Q", clean[:8])
    refused = 0
    for i in range(25):
        src, dst = tmp_path / f"src{i}", tmp_path / f"out{i}" / "native"
        shutil.copytree(LLADA_TINY, src)
        data = bytearray(clean)
        for _ in range(rng.randint(1, 3)):
            data[8 + rng.randrange(n)] = rng.choice(b'{}[]",:0123456789-eE.aZ \xff')
        (src / "model.safetensors").write_bytes(bytes(data))
        rc, err = _convert(["import", src, dst], capsys)
        if rc == 0:
            assert dst.exists()
            continue
        refused += 1
        assert_refused(rc, err, dst, src / "model.safetensors", src / "config.json", "model.safetensors")
    assert refused >= 15


# --- JSONL rows, through python -m trainers.sft --------------------------------------------------------------


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    return make_task(tmp_path_factory.mktemp("task"), n=16)


BAD_ROWS = [
    b'{"prompt": "ab", "response": ', b'{"prompt": "a\xc3(", "response": "b"}', b"[1, 2]", b'"ab"', b"7", b"null",
    b"[" * 100_000 + b"]" * 100_000,
    b'{"prompt": 1, "response": "ab"}', b'{"prompt": "ab", "response": null}', b'{"prompt": "ab", "response": ""}',
    b'{"prompt": "ab"}', b'{"question": "ab", "answer": "cd"}', b'{"messages": "hi"}', b'{"messages": []}',
    b'{"messages": [1, 2]}', b'{"messages": [{"role": "user"}]}',
    b'{"messages": [{"role": 1, "content": "ab"}, {"role": "assistant", "content": "cd"}]}',
    b'{"messages": [{"role": "user", "content": ["ab"]}, {"role": "assistant", "content": "cd"}]}',
    b'{"messages": [{"role": "user", "content": "ab"}, {"role": "assistant", "content": {"t": 1}}]}',
    b'{"messages": [{"role": "user", "content": "ab"}]}', b'{"messages": [{"role": "assistant", "content": "ab"}]}',
    b'{"prompt": "ab", "response": "cd", "class": "x"}', b'{"prompt": "ab", "response": "cd", "class": true}',
    b'{"prompt": "' + b"a" * 200 + b'", "response": "cd"}',
]


@pytest.mark.parametrize("row", BAD_ROWS, ids=range(len(BAD_ROWS)))
def test_malformed_jsonl_rows(tmp_path, capsys, task, row):
    from trainers.sft import main

    model, good = task
    first = good.read_bytes().splitlines()[0]
    data, out = tmp_path / "d.jsonl", tmp_path / "run"
    data.write_bytes(first + b"\n" + row + b"\n" + first + b"\n")
    rc = main(["--model", str(model), "--data", str(data), "--output", str(out), "--max-steps", "1",
               "--batch-size", "1", "--max-length", "64", "--no-progress"])
    assert_refused(rc, capsys.readouterr().err, out, f"{data}: line 2:")


def _random_value(rng, depth=0):
    kinds = ["str", "int", "float", "none", "bool"] + (["list", "dict"] if depth < 3 else [])
    kind = rng.choice(kinds)
    if kind == "list":
        return [_random_value(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    if kind == "dict":
        keys = ["prompt", "response", "messages", "role", "content", "class", "x"]
        return {rng.choice(keys): _random_value(rng, depth + 1) for _ in range(rng.randint(0, 3))}
    return {"str": lambda: rng.choice(["", "ab", "assistant", "user", "\u00e9\x00"]), "int": lambda: rng.randint(-2, 2),
            "float": lambda: rng.choice([0.5, float("inf")]), "none": lambda: None, "bool": lambda: rng.random() < 0.5}[kind]()


def test_random_rows_are_accepted_or_name_their_line(tmp_path):
    """Seeded random JSON values as rows: each is either usable or a DataError naming its line,
    never another exception; with --skip-bad-rows every bad one is counted."""
    from trainers.data import DataError, load_examples
    from trainers.tokenizer import build_char_tokenizer

    tok = build_char_tokenizer(pad_to=8)
    rng = random.Random(0)
    rows = [{"prompt": "ab", "response": "cd"}] + [_random_value(rng) for _ in range(300)]
    for i, row in enumerate(rows[1:], 2):
        p = tmp_path / f"r{i}.jsonl"
        p.write_text(json.dumps(rows[0]) + "\n" + json.dumps(row) + "\n")
        try:
            load_examples(p, tok, 64, eos_id=tok.eos_token_id)
        except DataError as e:
            assert str(e).startswith(f"{p}: line 2: ") and len(str(e).splitlines()) == 1, str(e)
    p = tmp_path / "all.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    ex, report = load_examples(p, tok, 64, eos_id=tok.eos_token_id, skip_bad_rows=True)
    assert report.kept + report.skipped_bad + report.dropped_long == len(rows) and report.skipped_bad > 250


# --- option files ---------------------------------------------------------------------------------------------

YAML_CASES = ["bf16: maybe", "schedule: 3", "batch-size: 0", "batch-size: 1.5", "batch-size: [1]", "lr: fast",
              "lr: .nan", "grad-accum: -2", "adam-betas: 0.9", "adam-betas: [0.9, 1.5]", "pack: 2", "lora-targets: []",
              "min-lr-ratio: 2", "nope: 1", "- a list", "a: [1", "max-steps: 0", "save-every: 0", "log-every: -1"]


@pytest.mark.parametrize("text", YAML_CASES)
def test_malformed_option_files(tmp_path, capsys, text):
    from trainers.sft import main

    cfg, out = tmp_path / "c.yaml", tmp_path / "run"
    cfg.write_text(text + "\n")
    rc = main(["--config", str(cfg), "--model", str(tmp_path), "--data", str(tmp_path / "d.jsonl"), "--output", str(out)])
    assert_refused(rc, capsys.readouterr().err, out, cfg)


# --- what a user sees: real processes --------------------------------------------------------------------------


def test_subprocesses_print_one_line(tmp_path):
    src, dst = _src(tmp_path), tmp_path / "out" / "native"
    h, body = _header(src / "model.safetensors")
    HEADER_CASES["overlap"](h)
    _write(src / "model.safetensors", h, body)
    r = subprocess.run([sys.executable, "-m", "conversions", "import", str(src), str(dst)], capture_output=True, text=True)
    assert_refused(r.returncode, r.stderr, dst, src / "model.safetensors")

    cfg, out = tmp_path / "c.yaml", tmp_path / "run"
    cfg.write_text("bf16: maybe\n")
    r = subprocess.run([sys.executable, "-m", "trainers.sft", "--config", str(cfg), "--model", str(src), "--data",
                        str(tmp_path / "d.jsonl"), "--output", str(out)], capture_output=True, text=True)
    assert_refused(r.returncode, r.stderr, out, cfg)


# --- evaluate: data files and --score files --------------------------------------------------------------------

GOOD_D1 = {"gsm8k": {"question": "q", "generations": "\\boxed{3}", "ground_truth": 3.0},
           "countdown": {"question": "q", "generations": "\\boxed{1+2}", "ground_truth": [[1, 2], 3]},
           "sudoku": {"question": "Solve the following Sudoku puzzle: 3102200002100320\n", "generations": "x",
                      "ground_truth": "3142243142131324"},
           "math500": {"question": "q", "generations": "\\boxed{3}", "ground_truth": "3"}}
GOOD_ROW = {"gsm8k": {"question": "q", "answer": "#### 3"}, "countdown": {"numbers": [1, 2], "target": 3},
            "sudoku": {"puzzle": "3102200002100320", "solution": "3142243142131324"},
            "math500": {"problem": "p", "answer": "3"}}


def _ours(task, **changes):
    return json.dumps({"index": 0, "sample": 0, "generation": "g", "reference": GOOD_ROW[task], **changes}).encode()


SCORE_CASES = [  # (task, file bytes, what the one line must name besides the file)
    ("gsm8k", b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    ("gsm8k", b'{"generations": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "nested too deeply"),
    ("sudoku", _ours("sudoku")[:-1] + b', "x": "\xff"}', "invalid UTF-8"),
    ("gsm8k", _ours("gsm8k", index="0"), "index must be a non-negative integer"),
    ("gsm8k", _ours("gsm8k", index=1.5), "index must be a non-negative integer"),
    ("gsm8k", _ours("gsm8k", index=True), "index must be a non-negative integer"),
    ("gsm8k", _ours("gsm8k", sample=-1), "sample must be a non-negative integer"),
    ("gsm8k", _ours("gsm8k", reference="#### 3"), "reference must be an object"),
    ("gsm8k", _ours("gsm8k", generation=5), "generation must be a string"),
    ("countdown", _ours("countdown", reference={"numbers": ["1", "2"], "target": 3}), "numbers must be"),
    ("countdown", _ours("countdown", reference={"numbers": [1, 2], "target": None}), "target must be an integer"),
    ("sudoku", _ours("sudoku", reference={"puzzle": 3102200002100320, "solution": "3142243142131324"}), "puzzle must be"),
    ("math500", _ours("math500", reference={"problem": ["p"], "answer": "3"}), "problem must be a string"),
    ("gsm8k", b'{"index": 0, "generation": "\\ud800", "reference": {"question": "q", "answer": "#### 3"}}',
     "lone surrogate"),
    ("gsm8k", json.dumps({"generations": [{**GOOD_D1["gsm8k"], "generations": 5}]}).encode(), "generations[0]"),
    ("gsm8k", json.dumps({"generations": [{**GOOD_D1["gsm8k"], "ground_truth": "3"}]}).encode(), "ground_truth must be"),
    ("gsm8k", json.dumps({"generations": [{**GOOD_D1["gsm8k"], "question": ["q"]}]}).encode(), "question must be"),
    ("countdown", json.dumps({"generations": [{**GOOD_D1["countdown"], "ground_truth": [["1"], 3]}]}).encode(),
     "numbers must be"),
    ("countdown", json.dumps({"generations": [{**GOOD_D1["countdown"], "ground_truth": [[1, 2], None]}]}).encode(),
     "target must be"),
    ("sudoku", json.dumps({"generations": [{**GOOD_D1["sudoku"], "ground_truth": 3142243142131324}]}).encode(),
     "solution must be"),
    ("sudoku", json.dumps({"generations": [{**GOOD_D1["sudoku"], "question": "no puzzle"}]}).encode(), "generations[0]"),
    ("math500", json.dumps({"generations": [{**GOOD_D1["math500"], "ground_truth": 3}]}).encode(), "ground_truth must be"),
]


@pytest.mark.parametrize("task,raw,what", SCORE_CASES, ids=range(len(SCORE_CASES)))
def test_malformed_score_files(tmp_path, capsys, task, raw, what):
    from trainers.evaluate import main

    f = tmp_path / "gen.json"
    f.write_bytes(raw)
    out = tmp_path / "verdicts.jsonl"
    rc = main(["--task", task, "--score", str(f), "--output", str(out)])
    assert_refused(rc, capsys.readouterr().err, out, f)


@pytest.mark.parametrize("task,raw,what", SCORE_CASES, ids=range(len(SCORE_CASES)))
def test_malformed_score_files_say_what(tmp_path, task, raw, what):
    from dlmarch.errors import DlmarchError
    from trainers.eval_rescore import read_generations
    from trainers.tasks import get_task

    f = tmp_path / "gen.json"
    f.write_bytes(raw)
    with pytest.raises(DlmarchError) as e:
        read_generations(get_task(task), f)
    assert str(e.value).startswith(str(f)) and what in str(e.value) and len(str(e.value).splitlines()) == 1, str(e.value)


def test_good_score_files_still_score(tmp_path):
    from trainers.eval_rescore import rescore
    from trainers.tasks import get_task

    for task in GOOD_D1:
        d1_file, ours = tmp_path / f"{task}.json", tmp_path / f"{task}.jsonl"
        d1_file.write_text(json.dumps({"generations": [GOOD_D1[task]]}))
        ours.write_bytes(_ours(task) + b"\n")
        for f in (d1_file, ours):
            summary, records = rescore(get_task(task), [f])
            assert summary["n"] == 1 and len(records) == 1


DATA_CASES = [
    ("countdown", {"numbers": ["1", "2"], "target": 3}, "numbers must be a non-empty list of integers"),
    ("countdown", {"numbers": [1, 2], "target": None}, "target must be an integer"),
    ("countdown", {"numbers": [1, 2], "target": "3"}, "target must be an integer"),
    ("countdown", {"numbers": [], "target": 3}, "numbers must be"),
    ("countdown", {"input": "1,a", "output": "3"}, "input must be comma-separated integers"),
    ("countdown", {"input": [1, 2], "output": "3"}, "input must be"),
    ("countdown", {"input": "1,2", "output": None}, "output must be an integer"),
    ("gsm8k", {"question": "q", "answer": None}, "answer must be a string"),
    ("gsm8k", {"question": ["q"], "answer": "#### 3"}, "question must be a string"),
    ("math500", {"problem": ["p"], "answer": "3"}, "problem must be a string"),
    ("math500", {"problem": "p", "answer": None}, "answer must be a string"),
    ("sudoku", {"puzzle": 3102200002100320, "solution": "3142243142131324"}, "puzzle must be 16 digits"),
]


@pytest.mark.parametrize("task,row,what", DATA_CASES, ids=range(len(DATA_CASES)))
def test_malformed_task_data(tmp_path, capsys, task, row, what):
    """Through `trainers.evaluate --data` (the rows are read before any model is)."""
    from trainers.evaluate import main

    f, out = tmp_path / "data.jsonl", tmp_path / "out" / "eval.jsonl"
    f.write_text(json.dumps(GOOD_ROW[task]) + "\n" + json.dumps(row) + "\n")
    rc = main(["--task", task, "--data", str(f), "--model", str(tmp_path / "none"), "--output", str(out)])
    err = capsys.readouterr().err
    assert_refused(rc, err, out, f"{f}: line 2: {what}")


@pytest.mark.parametrize("raw,what", [(b"Puzzle,Solution\n3102200002100320,314224314213132\xff\n", "invalid UTF-8"),
                                      (b"Puzzle,Solution\n3102200002100320,31422431421313\n", "solution must be 16 digits")])
def test_malformed_sudoku_csv(tmp_path, capsys, raw, what):
    from trainers.evaluate import main

    f, out = tmp_path / "4x4_test_sudoku.csv", tmp_path / "out" / "eval.jsonl"
    f.write_bytes(raw)
    rc = main(["--task", "sudoku", "--data", str(f), "--model", str(tmp_path / "none"), "--output", str(out)])
    err = capsys.readouterr().err
    assert_refused(rc, err, out, f)
    assert what in err


@pytest.mark.parametrize("flag", ["--score", "--data"])
def test_a_device_as_a_file_is_refused(tmp_path, capsys, flag):
    """/dev/zero never ends: reading it whole used to fill the memory."""
    from trainers.evaluate import main

    out = tmp_path / "out" / "eval.jsonl"
    argv = ["--task", "sudoku", flag, "/dev/zero", "--output", str(out)]
    rc = main(argv + (["--model", str(tmp_path / "none")] if flag == "--data" else []))
    err = capsys.readouterr().err
    assert_refused(rc, err, out, "/dev/zero: not a regular file")


# --- to-diffusion: sources and ids -----------------------------------------------------------------------------

TO_DIFFUSION_CASES = [  # (config change of the Llama source, extra flags)
    ({"num_hidden_layers": "2"}, []), ({"vocab_size": 96.5}, []), ({"eos_token_id": "1"}, []),
    ({"pad_token_id": "x"}, []), ({"max_position_embeddings": 1}, []), ({"tie_word_embeddings": True}, []),
    ({"model_type": "gpt2"}, []), ({}, ["--mask-token-id", "-1"]), ({}, ["--mask-token-id", str(10**6)]),
    ({}, ["--mask-token-id", "x"]), ({"rope_scaling": {"rope_type": "yarn", "factor": 2}}, []),
]


@pytest.mark.parametrize("style", ["dream", "llada"])
@pytest.mark.parametrize("change,flags", TO_DIFFUSION_CASES, ids=[json.dumps(c)[:30] + " ".join(f) for c, f in TO_DIFFUSION_CASES])
def test_malformed_to_diffusion_inputs(tmp_path, capsys, style, change, flags):
    src, dst = tmp_path / "src", tmp_path / "out" / "diffusion"
    shutil.copytree(LLAMA_TINY, src)
    (src / "config.json").write_text(json.dumps({**LLAMA_CONFIG, **change}))
    try:
        rc, err = _convert(["to-diffusion", src, dst, "--style", style, *flags], capsys)
    except SystemExit as e:  # argparse: a flag that is not an integer
        rc, err = e.code, capsys.readouterr().err
        assert rc == 2 and "--mask-token-id" in err and not dst.exists()
        return
    assert_refused(rc, err, dst, src / "config.json", src / "model.safetensors", "--mask-token-id", "mask")
