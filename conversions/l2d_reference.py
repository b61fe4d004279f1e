"""Reference L2D checkpoints (SakanaAI/L2D `save_pretrained`: a pickled state dict of the base model
plus its `flow_*` weights) -> a native L2D directory.

    python -m conversions import L2D_DIR DST --base MAIN_DIR --l2d-options OPTIONS.json

The pickle is read with torch.load(weights_only=True). Its base weights must equal MAIN_DIR's (they
are checked tensor by tensor, then dropped: the native checkpoint refers to MAIN_DIR instead).
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from dlmarch.atomic import atomic_directory
from dlmarch.checkpoint import load_pickled_state_dict
from dlmarch.outputs import copy_aux_files
from dlmarch.config import read_json
from dlmarch.errors import CheckpointError
from dlmarch.hub import local_model_dir
from dlmarch.keymaps import plan
from dlmarch.models.l2d import L2DModel
from dlmarch.models.l2d_checkpoint import load_main
from dlmarch.models.l2d_config import L2DConfig
from dlmarch.models.l2d_reference import reference_name

from .hf import Report, parse_dtype, replaceable

def import_l2d_reference(src: str | Path, dst: str | Path, *, base: str | Path, options: str | Path,
                         dtype: str | None = None, overwrite: bool = False) -> Report:
    t0 = time.time()
    src, dst, base = Path(src), Path(dst), Path(base)
    weights = src / "pytorch_model.bin" if src.is_dir() else src
    if not weights.exists():
        raise CheckpointError(f"{src}: no pytorch_model.bin")
    opts = read_json(options)
    torch_dtype = parse_dtype(dtype)
    base = local_model_dir(base, "--base")  # a hub id: its snapshot in the hub cache
    main = load_main(base, dtype=torch_dtype)
    config = L2DConfig.from_reference(opts, main.config.hidden_size)
    model = L2DModel(main, config)
    sd = load_pickled_state_dict(weights)
    table = main.family.key_table
    main_state = main.state_dict()
    flow, found = {}, {}
    for name, tensor in sd.items():
        kind, mapped = reference_name(name)
        if kind == "flow":
            flow[mapped] = tensor
            found[mapped] = (tuple(tensor.shape), weights.name)
            continue
        native = table.native_name(mapped)
        tied_head = main.config.tie_word_embeddings and mapped == table.tied_head
        if native is None and not tied_head:
            if table.is_ignorable(mapped, main.config.tie_word_embeddings):
                continue
            raise CheckpointError(f"{weights}: unknown tensor {name!r}")
        # A tied base (Llama-3.2-1B/3B, Qwen2.5-0.5B..3B): the reference's pickle repeats the shared
        # tensor under the head's name; it must be the embedding.
        want = main.wte.weight.detach() if tied_head else main_state.get(native)
        if want is None or tuple(want.shape) != tuple(tensor.shape) or not torch.equal(want, tensor.to(want.dtype)):
            raise CheckpointError(f"{weights}: tensor {name!r} differs from the main path at {base} "
                                  f"(is --base the model this L2D checkpoint was trained on?)")
    expected = {k: tuple(v.shape) for k, v in model.diffusion_state_dict().items()}
    mapping = plan(found, expected, lambda n: n, f"{weights} (L2D {config.adapter} variant)")
    params = model.diffusion_state_dict()
    with torch.no_grad():
        for name, native in mapping.items():
            params[native].copy_(flow[name].to(params[native].dtype))
    # Written into a sibling of dst, so the main path's reference relative to it (or its hub id, for a
    # hub-cache snapshot) is the one relative to dst (L2DModel.save_pretrained, main_reference).
    main_ref = str(base.resolve())
    with atomic_directory(dst, overwrite=overwrite, check=replaceable([base])) as tmp:
        model.save_pretrained(tmp, main_path=main_ref)
        copy_aux_files(base, tmp)  # the tokenizer travels with the model
    n = sum(p.numel() * p.element_size() for p in params.values())
    return Report("l2d", len(mapping), 1, n, time.time() - t0)
