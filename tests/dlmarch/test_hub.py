"""Hub ids where a model directory is expected: resolved from huggingface_hub's cache, offline."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from dlmarch.errors import ConfigError
from dlmarch.hub import is_hub_id, snapshot_repo_id
from dlmarch.models.l2d_checkpoint import main_reference
from dlmarch.registry import load_pretrained
from tests.helpers import LLADA_TINY

REVISION = "0123456789abcdef0123456789abcdef01234567"


def fake_hub_cache(root: Path, repo_id: str, src: Path, repo_type: str = "model") -> Path:
    """huggingface_hub's cache layout: <type>s--owner--name/{refs/main, snapshots/<revision>/...}."""
    repo = root / f"{repo_type}s--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(REVISION)
    snap = repo / "snapshots" / REVISION
    shutil.copytree(src, snap)
    return snap


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


def test_hub_id_loads_from_the_cache_offline(hub_cache, tmp_path):
    snap = fake_hub_cache(hub_cache, "tiny-org/llada-tiny", LLADA_TINY)
    by_id = load_pretrained("tiny-org/llada-tiny")
    by_dir = load_pretrained(snap)
    ids = torch.tensor([[1, 2, 3, 4]])
    assert torch.equal(by_id(ids).logits, by_dir(ids).logits)


def test_absent_hub_id_is_one_line_naming_id_and_cache(hub_cache):
    with pytest.raises(ConfigError) as e:
        load_pretrained("tiny-org/not-cached")
    msg = str(e.value)
    assert "\n" not in msg and "tiny-org/not-cached" in msg and str(hub_cache) in msg and "HF_HUB_OFFLINE" in msg


def test_what_counts_as_a_hub_id(tmp_path):
    assert is_hub_id("GSAI-ML/LLaDA-8B-Instruct")
    assert not is_hub_id("runs/sft/model")  # two slashes: a path
    assert not is_hub_id("model")  # a bare word: a (mistyped) directory, not a legacy hub id
    assert not is_hub_id(str(tmp_path))
    (tmp_path / "a").mkdir()
    assert not is_hub_id("./a") and not is_hub_id("data.jsonl")


def test_l2d_names_its_main_path_relative_to_itself_or_by_hub_id(tmp_path):
    main = tmp_path / "runs" / "base"
    ckpt = tmp_path / "runs" / "l2d" / "model"
    assert main_reference(main, ckpt) == "../../base"
    assert (ckpt / main_reference(main, ckpt)).resolve() == main.resolve()
    snap = tmp_path / "hub" / "models--GSAI-ML--LLaDA-8B" / "snapshots" / REVISION
    assert snapshot_repo_id(snap) == "GSAI-ML/LLaDA-8B"
    assert main_reference(snap, ckpt) == "GSAI-ML/LLaDA-8B"
    assert main_reference("meta-llama/Llama-3.2-1B", ckpt) == "meta-llama/Llama-3.2-1B"


def test_l2d_checkpoint_and_its_main_path_move_together(tmp_path):
    from conversions.l2d_reference import import_l2d_reference
    from dlmarch.models.l2d import L2DModel
    from tests.helpers import L2D_TINY

    shutil.copytree(L2D_TINY / "base", tmp_path / "a" / "base")
    import_l2d_reference(L2D_TINY / "l2d", tmp_path / "a" / "l2d", base=tmp_path / "a" / "base",
                         options=L2D_TINY / "l2d" / "flow_kwargs.json")
    assert json.loads((tmp_path / "a" / "l2d" / "config.json").read_text())["main"] == "../base"
    shutil.move(tmp_path / "a", tmp_path / "moved")
    model = L2DModel.from_pretrained(tmp_path / "moved" / "l2d")
    assert model.main_source == str(tmp_path / "moved" / "l2d" / "../base")


def test_trainer_takes_a_hub_id_for_model(hub_cache, tmp_path):
    from tests.helpers import make_task
    from trainers.sft import main

    model_dir, data = make_task(tmp_path, n=8)
    fake_hub_cache(hub_cache, "tiny-org/task-llada", model_dir)
    out = tmp_path / "run"
    assert main(["--model", "tiny-org/task-llada", "--data", str(data), "--output", str(out), "--max-steps", "1",
                 "--batch-size", "4", "--no-progress", "--report-to", "none"]) == 0
    assert (out / "model" / "tokenizer_config.json").exists()
    assert json.loads((out / "run.json").read_text())["model"] == "tiny-org/task-llada"  # the id, as given
