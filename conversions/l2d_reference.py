"""Reference L2D checkpoints (SakanaAI/L2D `save_pretrained`: a pickled state dict of the base model
plus its `flow_*` weights) -> a native L2D directory.

    python -m conversions import L2D_DIR DST --base MAIN_DIR --l2d-options OPTIONS.json

The pickle is read with torch.load(weights_only=True). Its base weights must equal MAIN_DIR's (they
are checked tensor by tensor, then dropped: the native checkpoint refers to MAIN_DIR instead).
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import torch

from dlmarch.checkpoint import atomic_directory, copy_aux_files, load_pickled_state_dict, load_pretrained
from dlmarch.config import read_json
from dlmarch.errors import CheckpointError, ConfigError
from dlmarch.keymaps import KEY_TABLES, plan
from dlmarch.models.l2d import L2DConfig, L2DModel

from .hf import Report, parse_dtype

_LINEAR = {"self_attn.flow_q_proj": "q_proj", "self_attn.flow_o_proj": "attn_out", "mlp.flow_gate_proj": "ff_proj",
           "mlp.flow_up_proj": "up_proj", "mlp.flow_down_proj": "ff_out"}


def reference_name(name: str) -> tuple[str, str | None]:
    """A reference key -> ("flow", native name), ("base", reference base name) or ("wrapped", the
    main weight a LoRA wrapper repeats). Unknown names -> ("unknown", None)."""
    if name.startswith("model."):
        rest = name[len("model."):]
        m = re.match(r"layers\.(\d+)\.(self_attn\.flow_[qo]_proj|mlp\.flow_(?:gate|up|down)_proj)\.(.+)$", rest)
        if m:
            layer, module, leaf = m.groups()
            ours = f"blocks.{layer}.{_LINEAR[module]}"
            if leaf in ("A", "B"):
                return "flow", f"{ours}.{leaf}"
            if leaf.startswith("wrapped_layer."):
                base_module = module.replace("flow_", "")
                return "wrapped", f"model.layers.{layer}.{base_module}.{leaf[len('wrapped_layer.'):]}"
            return "flow", f"{ours}.{leaf}"
        m = re.match(r"layers\.(\d+)\.modulation_head\.mlp\.(\d+)\.(weight|bias)$", rest)
        if m:
            return "flow", f"block_mod.{m.group(1)}.{m.group(2)}.{m.group(3)}"
        for ref, ours in (("modulation_head.mlp.", "out_mod."), ("timestep_embedder.mlp.", "time_embed."),
                          ("flow_token_embedder.embedder.layers_module.", "flow_embed."),
                          ("flow_to_lm_encoder.embedder.layers_module.", "flow_in."),
                          ("flow_to_lm_encoder.layers_module.", "flow_in."),
                          ("data_label_embedder.", "class_embed.")):
            if rest.startswith(ref):
                return "flow", ours + rest[len(ref):]
    return "base", name


def import_l2d_reference(src: str | Path, dst: str | Path, *, base: str | Path, options: str | Path,
                         dtype: str | None = None, overwrite: bool = False) -> Report:
    t0 = time.time()
    src, dst, base = Path(src), Path(dst), Path(base)
    weights = src / "pytorch_model.bin" if src.is_dir() else src
    if not weights.exists():
        raise CheckpointError(f"{src}: no pytorch_model.bin")
    opts = read_json(options)
    torch_dtype = parse_dtype(dtype)
    main = load_pretrained(base, dtype=torch_dtype)
    if main.config.family not in ("llama", "qwen2"):
        raise ConfigError(f"--base {base}: L2D's main path is Llama or Qwen2, not {main.config.family}")
    config = L2DConfig.from_reference(opts, main.config.hidden_size)
    model = L2DModel(main, config)
    sd = load_pickled_state_dict(weights)
    table = KEY_TABLES[main.config.family]
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
    main_ref = str(base.resolve())
    with atomic_directory(dst, overwrite=overwrite) as tmp:
        model.save_pretrained(tmp, main_path=main_ref)
        copy_aux_files(base, tmp)  # the tokenizer travels with the model
    n = sum(p.numel() * p.element_size() for p in params.values())
    return Report("l2d", len(mapping), 1, n, time.time() - t0)
