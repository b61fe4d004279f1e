"""Checkpoints: the native format, loading HF directories on the fly.

Native directory: `config.json` ({"format": "dlmarch", "model": class name, "config": {...}}) and
`model.safetensors` (or `model-0000N-of-0000M.safetensors` + `model.safetensors.index.json`) with our
parameter names. Loading builds the model on the meta device and assigns each tensor as it is read,
so a checkpoint never exists twice in memory. Every write is atomic (dlmarch/atomic.py): a temporary
directory whose files are moved into the destination at the end, never deleting the files they do not
replace, so a failure leaves nothing behind. The auxiliary files that travel with a checkpoint are
chosen by dlmarch/outputs.py (`aux_files`); manifests and fingerprints are dlmarch/manifests.py.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import torch
from torch import nn

from . import safetensors_io as st
from .atomic import atomic_update, write_json
from .config import read_json
from .errors import CheckpointError
from .keymaps import expected_shapes, plan
from .outputs import copy_aux_files

NATIVE_FORMAT = "dlmarch"
INDEX_NAME = "model.safetensors.index.json"


# --- locating weights --------------------------------------------------------------------------------


class WeightFiles:
    """The weight files of a checkpoint directory: safetensors (single or indexed) or, for HF
    checkpoints that have no safetensors, pickled `pytorch_model*.bin` read with weights_only=True."""

    def __init__(self, directory: str | Path):
        self.dir = Path(directory)
        self.weight_map: dict[str, str] | None = None  # an index's name -> shard, checked against the shards
        self.kind, self.files = self._find()
        self._headers: dict[Path, dict[str, tuple[tuple[int, ...], torch.dtype]]] = {}
        self._infos: dict[str, st.TensorInfo] = {}  # safetensors: where each tensor lives
        self._pickled: tuple[Path, dict] | None = None  # pickles: the one file held in memory

    def _find(self) -> tuple[str, list[Path]]:
        d = self.dir
        # safetensors before pickles: a native save beside an old pytorch_model.bin must win
        for index_name, single, kind in ((INDEX_NAME, "model.safetensors", "safetensors"),
                                         ("pytorch_model.bin.index.json", "pytorch_model.bin", "bin")):
            index = d / index_name
            if index.exists():
                data = read_json(index)
                weight_map = data.get("weight_map")
                if not isinstance(weight_map, dict) or not weight_map:
                    raise CheckpointError(f"{index}: no weight_map")
                for name, f in weight_map.items():
                    # a shard is a file of this directory: never an absolute or escaping path
                    if not isinstance(f, str) or Path(f).name != f or f in ("", ".", ".."):
                        raise CheckpointError(f"{index}: weight_map[{name!r}] is {f!r}; expected a file name in {d}")
                files = sorted({d / f for f in weight_map.values()})
                for f in files:
                    if not f.exists():
                        raise CheckpointError(f"{index}: lists {f.name}, which is missing")
                self.weight_map = weight_map
                return kind, files
            if (d / single).exists():
                return kind, [d / single]
        raise CheckpointError(f"{d}: no weights (model.safetensors, an index, or pytorch_model.bin)")

    def _pickle(self, path: Path) -> dict:
        if self._pickled is None or self._pickled[0] != path:
            self._pickled = (path, load_pickled_state_dict(path))
        return self._pickled[1]

    def header(self, path: Path) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        """name -> (shape, dtype) of one file, without reading tensor data (cached)."""
        if path not in self._headers:
            if self.kind == "safetensors":
                infos = st.read_header(path)[0]
                self._infos.update(infos)
                self._headers[path] = {k: (v.shape, v.dtype) for k, v in infos.items()}
            else:
                self._headers[path] = {k: (tuple(v.shape), v.dtype) for k, v in self._pickle(path).items()}
        return self._headers[path]

    def tensor_bytes(self) -> dict[str, int]:
        """name -> size in bytes of every tensor."""
        out = {}
        for f in self.files:
            for name, (shape, dtype) in self.header(f).items():
                out[name] = math.prod(shape) * dtype.itemsize
        return out

    def all_tensors(self) -> dict[str, tuple[tuple[int, ...], str]]:
        """name -> (shape, file name) over every file; a name in two files is an error."""
        out = {}
        for f in self.files:
            for name, (shape, _) in self.header(f).items():
                if name in out:
                    raise CheckpointError(f"{self.dir}: tensor {name!r} appears in both {out[name][1]} and {f.name}")
                out[name] = (shape, f.name)
        if self.weight_map is not None:
            # The index is what transformers trusts (it opens a shard by it): one that disagrees with
            # the shards describes another checkpoint, and loading by either would be wrong.
            index = self.dir / (INDEX_NAME if self.kind == "safetensors" else "pytorch_model.bin.index.json")
            for name, file in sorted(self.weight_map.items()):
                if name not in out:
                    raise CheckpointError(f"{index}: weight_map lists {name!r} in {file}, which does not hold it")
                if out[name][1] != file:
                    raise CheckpointError(f"{index}: weight_map puts {name!r} in {file}, but {out[name][1]} holds it")
            unlisted = sorted(set(out) - set(self.weight_map))
            if unlisted:
                raise CheckpointError(f"{index}: weight_map does not list {unlisted[0]!r} (in {out[unlisted[0]][1]})"
                                      + (f" and {len(unlisted) - 1} more" if len(unlisted) > 1 else ""))
        return out

    def read(self, name: str) -> torch.Tensor:
        """One tensor, in any order: read from its safetensors file, or taken from the one pickled
        file held in memory."""
        for f in self.files:
            if name in self.header(f):
                return st.read_tensor(self._infos[name]) if self.kind == "safetensors" else self._pickle(f)[name]
        raise KeyError(name)

    def iter_file(self, path: Path):
        """(name, tensor) for every tensor of one file, one at a time."""
        if self.kind == "safetensors":
            self.header(path)
            with open(path, "rb") as f:
                for name in self._headers[path]:
                    yield name, st.read_tensor(self._infos[name], f)
        else:
            yield from self._pickle(path).items()


def load_pickled_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A pickled state dict, through `torch.load(weights_only=True)` only (never arbitrary pickles);
    memory-mapped when the file allows it."""
    path = Path(path)
    try:
        try:
            sd = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:
            if "mmap" not in str(e):
                raise
            sd = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such file") from None
    except Exception as e:  # a truncated zip, or a pickle that weights_only refuses
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: cannot load as a weights-only state dict ({first})") from None
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CheckpointError(f"{path}: expected a dict of tensors")
    return sd


# --- weight file names --------------------------------------------------------------------------------


def is_weight_file(name: str) -> bool:
    """A weight file name of our (and HF's) safetensors layout: single, shard or index."""
    return name in ("model.safetensors", INDEX_NAME) or re.fullmatch(r"model-\d{5}-of-\d{5}\.safetensors", name) is not None


# --- reading -----------------------------------------------------------------------------------------------


def build_on_meta(cls, config) -> nn.Module:
    with torch.device("meta"):
        return cls(config)


def assign_tensor(model: nn.Module, name: str, tensor: torch.Tensor) -> None:
    """Replace the (meta) parameter or buffer `name` by `tensor`."""
    module_name, _, attr = name.rpartition(".")
    module = model.get_submodule(module_name) if module_name else model
    old = getattr(module, attr)
    if isinstance(old, nn.Parameter):
        setattr(module, attr, nn.Parameter(tensor, requires_grad=old.requires_grad))
    else:
        module._buffers[attr] = tensor


def _cast(t: torch.Tensor, dtype: torch.dtype | None, device) -> torch.Tensor:
    if dtype is not None and t.is_floating_point():
        t = t.to(dtype)
    return t.to(device) if device is not None else t


def check_tied_head(files: WeightFiles, table, tied: bool) -> None:
    """Refuse a tied config beside a stored head that is not the embedding. With the head tied, the
    loader drops the stored head (HF writes it or not), so a distinct one would vanish silently and
    the model would not be the one that was trained; transformers drops it the same way."""
    if not tied or table.tied_head is None:
        return
    found = files.all_tensors()
    embedding = table.hf_name("wte.weight")
    if table.tied_head not in found or embedding not in found:
        return  # no head stored (the usual tied layout); a missing embedding is `plan`'s error
    head, wte = files.read(table.tied_head), files.read(embedding)
    if head.shape != wte.shape or not torch.equal(head, wte):
        raise CheckpointError(
            f"{files.dir / found[table.tied_head][1]}: {table.tied_head!r} differs from {embedding!r}, but config.json "
            f"ties the head to the embedding; set tie_word_embeddings (LLaDA: weight_tying) to false to keep it")


def load_weights(model: nn.Module, files: WeightFiles, rename, where: str, ignorable=lambda n: False, dtype=None, device=None) -> None:
    """Check `files` against the model's expected tensors, then assign them one at a time."""
    mapping = plan(files.all_tensors(), expected_shapes(model), rename, where, ignorable)
    for f in files.files:
        for name, tensor in files.iter_file(f):
            if name in mapping:
                assign_tensor(model, mapping[name], _cast(tensor, dtype, device))


def copy_weights(params: dict[str, torch.Tensor], files: WeightFiles, where: str) -> None:
    """Check `files` against `params` (name -> live tensor), then copy each stored tensor into its
    parameter, in the parameter's dtype: for a model built on a real device (L2D's diffusion path,
    whose modules share the loaded main path's)."""
    mapping = plan(files.all_tensors(), {k: tuple(v.shape) for k, v in params.items()}, lambda n: n, where)
    with torch.no_grad():
        for f in files.files:
            for name, tensor in files.iter_file(f):
                if name in mapping:
                    params[mapping[name]].copy_(tensor.to(params[mapping[name]].dtype))


# --- writing ------------------------------------------------------------------------------------------------


def write_shards(directory: Path, groups: list[list[tuple[str, torch.dtype, tuple[int, ...]]]], fetch,
                 metadata: dict | None = None) -> tuple[int, int]:
    """Write groups of (name, dtype, shape) as one safetensors file, or one per group plus an index.
    fetch(name) gives each tensor when it is written, so only one is ever held. Returns (files,
    bytes)."""
    names = st.shard_names(len(groups))
    weight_map, total = {}, 0
    for fname, group in zip(names, groups):
        with st.Writer(directory / fname, group, metadata) as w:
            for name, dtype, _ in group:
                t = fetch(name).to(dtype)
                w.write(name, t)
                weight_map[name] = fname
                total += t.numel() * t.element_size()
    if len(names) > 1:
        write_json(directory / INDEX_NAME, {"metadata": {"total_size": total}, "weight_map": weight_map})
    return len(names), total


def write_weights(directory: Path, tensors: list[tuple[str, torch.Tensor]], max_shard_size: int, metadata=None) -> None:
    """Write (name, tensor) pairs in shards of at most max_shard_size bytes."""
    by_name = dict(tensors)
    sizes = [(n, t.numel() * t.element_size()) for n, t in tensors]
    groups = [[(n, by_name[n].dtype, tuple(by_name[n].shape)) for n in g] for g in st.plan_shards(sizes, max_shard_size)]
    write_shards(directory, groups, by_name.__getitem__, metadata)


def native_header(model_class: str, **fields) -> dict:
    """The native config.json: the format, its version, the model class that wrote it, then `fields`."""
    return {"format": NATIVE_FORMAT, "format_version": 1, "model": model_class, **fields}


def write_native(model, directory: Path, max_shard_size: int = 5 * 2**30, extra: dict | None = None,
                 source: str | Path | None = None) -> None:
    """The files of a native checkpoint in `directory`: weights, config.json and the auxiliary files
    (tokenizer, chat template) of `source`, the directory the model was loaded from."""
    state = [(k, v) for k, v in model.state_dict().items()]
    write_weights(directory, state, max_shard_size, metadata={"format": "pt"})
    cfg = native_header(type(model).__name__, config=model.config.to_dict())
    if extra:
        cfg.update(extra)
    write_json(directory / "config.json", cfg)
    if source and Path(source).is_dir():
        copy_aux_files(source, directory)


def save_native(model, path: str | Path, max_shard_size: int = 5 * 2**30, extra: dict | None = None) -> None:
    """Native checkpoint of a TransformerLM (see module docstring). Its files are written to a
    temporary directory first, then added to `path`, replacing files of the same names (and the
    weight files of an earlier checkpoint there) and keeping every other file: a model saved back
    where it was loaded from keeps its tokenizer and chat template."""
    path = Path(path)
    source = getattr(model, "source_dir", None)
    if source and Path(source).resolve() == path.resolve():
        source = None  # saved back where it was loaded from: its auxiliary files are there
    needed = sum(v.numel() * v.element_size() for v in model.state_dict().values())
    with atomic_update(path, stale=is_weight_file, needed=needed) as tmp:
        write_native(model, tmp, max_shard_size, extra, source)


__all__ = [
    "WeightFiles",
    "load_weights",
    "copy_weights",
    "build_on_meta",
    "save_native",
    "write_native",
    "native_header",
    "load_pickled_state_dict",
    "write_shards",
    "write_weights",
]
