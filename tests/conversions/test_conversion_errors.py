"""Malformed checkpoints: one line on stderr naming the problem, exit status 2, nothing at DST."""

import json
import pickle
import shutil
import subprocess
import sys

import pytest
import torch

from dlmarch import safetensors_io as st
from tests.helpers import LLADA_TINY

KEY = "model.transformer.blocks.1.q_proj.weight"


def _copy(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(LLADA_TINY, src)
    return src


def _edit_weights(src, fn):
    tensors = st.load_file(src / "model.safetensors")
    fn(tensors)
    st.save_file(tensors, src / "model.safetensors")


def _edit_config(src, **changes):
    cfg = json.loads((src / "config.json").read_text())
    cfg.update(changes)
    (src / "config.json").write_text(json.dumps(cfg))


def missing(src):
    _edit_weights(src, lambda t: t.pop(KEY))
    return "missing tensor for 'blocks.1.q_proj.weight'"


def unknown(src):
    _edit_weights(src, lambda t: t.__setitem__("model.transformer.blocks.0.extra.weight", torch.zeros(3)))
    return "unknown tensor 'model.transformer.blocks.0.extra.weight'"


def misshaped(src):
    _edit_weights(src, lambda t: t.__setitem__(KEY, torch.zeros(64, 63)))
    return f"tensor '{KEY}' has shape [64, 63], the config implies [64, 64]"


def config_disagrees(src):
    _edit_config(src, mlp_hidden_size=128)
    return "has shape [64, 96], the config implies [64, 128] (config and weights disagree)"


def too_many_layers(src):
    _edit_config(src, n_layers=3)
    return "missing tensor for 'blocks.2."


def bad_json(src):
    (src / "config.json").write_text('{"d_model": 64,\n  "n_heads": 4\n  "oops": 1}')
    return "config.json: invalid JSON at line 3"


def truncated(src):
    data = (src / "model.safetensors").read_bytes()
    (src / "model.safetensors").write_bytes(data[: len(data) - 1000])
    return "model.safetensors: truncated file"


def shard_missing(src):
    tensors = st.load_file(src / "model.safetensors")
    (src / "model.safetensors").unlink()
    names = sorted(tensors)
    st.save_file({k: tensors[k] for k in names[:10]}, src / "model-00001-of-00002.safetensors")
    weight_map = {k: ("model-00001-of-00002.safetensors" if i < 10 else "model-00002-of-00002.safetensors")
                  for i, k in enumerate(names)}
    (src / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    return "lists model-00002-of-00002.safetensors, which is missing"


def unsupported_family(src):
    _edit_config(src, model_type="gpt2")
    return "model_type 'gpt2' is not supported"


CASES = [missing, unknown, misshaped, config_disagrees, too_many_layers, bad_json, truncated, shard_missing,
         unsupported_family]


@pytest.mark.parametrize("case", CASES, ids=[c.__name__ for c in CASES])
def test_import_refuses(tmp_path, case):
    src = _copy(tmp_path)
    expected = case(src)
    dst = tmp_path / "out" / "native"
    r = subprocess.run([sys.executable, "-m", "conversions", "import", str(src), str(dst)], capture_output=True, text=True)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert expected in lines[0]
    assert not dst.exists()
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())  # no temporary left


def test_export_refuses_a_damaged_native_checkpoint(tmp_path):
    from conversions.hf import import_hf

    import_hf(LLADA_TINY, tmp_path / "native")
    _edit_weights(tmp_path / "native", lambda t: t.pop("blocks.0.ff_out.weight"))
    dst = tmp_path / "hf"
    r = subprocess.run([sys.executable, "-m", "conversions", "export", str(tmp_path / "native"), str(dst)],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "missing tensor for 'blocks.0.ff_out.weight'" in r.stderr
    assert not dst.exists()


class _Evil:
    def __reduce__(self):
        return (print, ("this pickle runs code",))


def test_pickle_that_is_not_weights_only_is_refused(tmp_path):
    from dlmarch.checkpoint import load_pickled_state_dict
    from dlmarch.errors import CheckpointError

    path = tmp_path / "pytorch_model.bin"
    with open(path, "wb") as f:
        pickle.dump({"x": _Evil()}, f)
    with pytest.raises(CheckpointError, match="cannot load as a weights-only state dict"):
        load_pickled_state_dict(path)


def test_from_pretrained_refuses_with_the_same_message(tmp_path):
    from dlmarch import AutoModel
    from dlmarch.errors import CheckpointError

    src = _copy(tmp_path)
    expected = misshaped(src)
    with pytest.raises(CheckpointError) as e:
        AutoModel.from_pretrained(src)
    assert expected in str(e.value)
