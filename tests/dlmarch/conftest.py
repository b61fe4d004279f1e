"""Fixtures shared by the output-guard tests (test_outputs.py, test_atomic.py)."""

from __future__ import annotations

import json

import pytest

from tests.helpers import hf_llama, make_task


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """Inputs of every writer, and files of the user's beside them."""
    r = tmp_path_factory.mktemp("probes")
    make_task(r, n=16)  # r/model (a native LLaDA with its tokenizer), r/reverse.jsonl
    hf_llama(r / "llama")
    (r / "prompts.jsonl").write_text(json.dumps({"prompt": "abc"}) + "\n")
    (r / "countdown.jsonl").write_text("".join(json.dumps({"input": f"{i},{i + 1},3", "output": str(2 * i + 4)}) + "\n"
                                               for i in range(3)))
    (r / "gens.jsonl").write_text(json.dumps({"index": 0, "sample": 0, "generation": "<answer>4</answer>",
                                              "reference": {"numbers": [0, 1, 3], "target": 4}}) + "\n")
    (r / "notes.txt").write_text("the user's notes")
    (r / "userdir").mkdir()
    (r / "userdir" / "notes.txt").write_text("mine")
    (r / "userdir" / "config.json").write_text("{}")
    return r
