"""Checkpoints: the native format, loading HF directories on the fly, and atomic writes.

Native directory: `config.json` ({"format": "dlmarch", "model": class name, "config": {...}}) and
`model.safetensors` (or `model-0000N-of-0000M.safetensors` + `model.safetensors.index.json`) with our
parameter names. Loading builds the model on the meta device and assigns each tensor as it is read,
so a checkpoint never exists twice in memory. Every write goes to a temporary directory renamed at
the end, so a failure leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
from pathlib import Path

import torch
from torch import nn

from . import safetensors_io as st
from .config import config_from_hf, family_of_hf, native_config, read_json
from .errors import CheckpointError, ConfigError
from .keymaps import KEY_TABLES, expected_shapes, plan

NATIVE_FORMAT = "dlmarch"
INDEX_NAME = "model.safetensors.index.json"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


# --- locating weights --------------------------------------------------------------------------------


class WeightFiles:
    """The weight files of a checkpoint directory: safetensors (single or indexed) or, for HF
    checkpoints that have no safetensors, pickled `pytorch_model*.bin` read with weights_only=True."""

    def __init__(self, directory: str | Path):
        self.dir = Path(directory)
        self.kind, self.files = self._find()
        self._headers: dict[Path, dict[str, tuple[tuple[int, ...], torch.dtype]]] = {}
        self._infos: dict[str, st.TensorInfo] = {}  # safetensors: where each tensor lives
        self._pickled: tuple[Path, dict] | None = None  # pickles: the one file held in memory

    def _find(self) -> tuple[str, list[Path]]:
        d = self.dir
        for index_name, kind in ((INDEX_NAME, "safetensors"), ("pytorch_model.bin.index.json", "bin")):
            index = d / index_name
            if index.exists():
                data = read_json(index)
                weight_map = data.get("weight_map")
                if not isinstance(weight_map, dict) or not weight_map:
                    raise CheckpointError(f"{index}: no weight_map")
                files = sorted({d / f for f in weight_map.values()})
                for f in files:
                    if not f.exists():
                        raise CheckpointError(f"{index}: lists {f.name}, which is missing")
                return kind, files
        if (d / "model.safetensors").exists():
            return "safetensors", [d / "model.safetensors"]
        if (d / "pytorch_model.bin").exists():
            return "bin", [d / "pytorch_model.bin"]
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


# --- directories -----------------------------------------------------------------------------------------


@contextlib.contextmanager
def atomic_directory(dst: str | Path, overwrite: bool = False):
    """Yield a temporary sibling directory; on success it replaces `dst` in one rename.

    On an exception the temporary directory is removed and `dst` is untouched. An existing `dst` is
    replaced only with overwrite=True.
    """
    dst = Path(dst)
    if dst.exists() and not overwrite:
        raise FileExistsError(f"{dst} already exists")
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.tmp-", dir=dst.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if dst.exists():
        old = dst.parent / f".{dst.name}.old-{os.getpid()}"
        os.replace(dst, old)
    os.replace(tmp, dst)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def write_json(path: str | Path, data) -> None:
    Path(path).write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")


def aux_files(src: str | Path) -> list[Path]:
    """Files of a checkpoint directory that are neither config nor weights: tokenizer files,
    generation config, chat template, modeling code. They travel with conversions unchanged."""
    out = []
    for p in sorted(Path(src).iterdir()):
        if not p.is_file() or p.name.startswith("."):
            continue
        if p.name == "config.json" or p.name.endswith(WEIGHT_SUFFIXES) or p.name.endswith(".index.json"):
            continue
        out.append(p)
    return out


def copy_aux_files(src: str | Path, dst: str | Path) -> list[str]:
    names = []
    for p in aux_files(src):
        shutil.copy2(p, Path(dst) / p.name)
        names.append(p.name)
    return names


# --- reading -----------------------------------------------------------------------------------------------


def is_native(directory: str | Path) -> bool:
    cfg = Path(directory) / "config.json"
    if not cfg.exists():
        return False
    return read_json(cfg).get("format") == NATIVE_FORMAT


def read_native_config(directory: str | Path) -> dict:
    data = read_json(Path(directory) / "config.json")
    if data.get("format") != NATIVE_FORMAT:
        raise ConfigError(f"{Path(directory) / 'config.json'}: not a dlmarch checkpoint")
    return data


def model_class_for(family: str):
    from .models import MODEL_CLASSES

    return MODEL_CLASSES[family]


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


def load_weights(model: nn.Module, files: WeightFiles, rename, where: str, ignorable=lambda n: False, dtype=None, device=None) -> None:
    """Check `files` against the model's expected tensors, then assign them one at a time."""
    mapping = plan(files.all_tensors(), expected_shapes(model), rename, where, ignorable)
    for f in files.files:
        for name, tensor in files.iter_file(f):
            if name in mapping:
                assign_tensor(model, mapping[name], _cast(tensor, dtype, device))
    leftover = [n for n, p in model.named_parameters() if p.is_meta]
    if leftover:  # plan() makes this unreachable; kept as the last line of defence
        raise CheckpointError(f"{where}: tensor {leftover[0]!r} was not loaded")


def load_pretrained(path: str | Path, dtype: torch.dtype | None = None, device=None, **config_overrides) -> nn.Module:
    """A model from a native directory or an HF directory of a supported family."""
    path = Path(path)
    if not path.is_dir():
        raise ConfigError(f"{path}: not a directory")
    raw = read_json(path / "config.json")
    if raw.get("format") == NATIVE_FORMAT:
        kind = raw.get("model")
        if kind == "L2DModel":
            from .models.l2d import L2DModel

            return L2DModel.from_pretrained(path, dtype=dtype, device=device)
        config = native_config(raw, path / "config.json")
        rename, ignorable, where = (lambda n: n), (lambda n: False), f"{path} (native {config.family})"
    else:
        family = family_of_hf(raw, str(path / "config.json"))
        config = config_from_hf(raw, str(path / "config.json"))
        table = KEY_TABLES[family]
        tied = config.tie_word_embeddings
        rename, ignorable = table.native_name, (lambda n: table.is_ignorable(n, tied))
        where = f"{path} ({family} checkpoint)"
    if config_overrides:
        config = config.replace(**config_overrides)
    model = build_on_meta(model_class_for(config.family), config)
    load_weights(model, WeightFiles(path), rename, where, ignorable, dtype=dtype, device=device)
    model.source_dir = str(path)
    return model


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


def save_native(model, path: str | Path, max_shard_size: int = 5 * 2**30, extra: dict | None = None) -> None:
    """Native checkpoint of a TransformerLM (see module docstring), written atomically."""
    path = Path(path)
    state = [(k, v) for k, v in model.state_dict().items()]
    with atomic_directory(path, overwrite=True) as tmp:
        write_weights(tmp, state, max_shard_size, metadata={"format": "pt"})
        cfg = {"format": NATIVE_FORMAT, "format_version": 1, "model": type(model).__name__, "config": model.config.to_dict()}
        if extra:
            cfg.update(extra)
        write_json(tmp / "config.json", cfg)
        source = getattr(model, "source_dir", None)
        if source and Path(source).is_dir() and Path(source).resolve() != path.resolve():
            copy_aux_files(source, tmp)


__all__ = [
    "WeightFiles",
    "load_pretrained",
    "save_native",
    "atomic_directory",
    "copy_aux_files",
    "is_native",
    "read_native_config",
    "load_pickled_state_dict",
    "write_shards",
    "write_weights",
]
