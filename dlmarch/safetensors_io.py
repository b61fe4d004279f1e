"""Streaming safetensors: read one tensor at a time, write one tensor at a time.

The format is an 8-byte little-endian header length, a JSON header (name -> dtype, shape, byte
offsets) and the raw bytes. Headers are validated by the safetensors library (`safe_open`); reading
the header alone gives every name and shape, so a checkpoint is
checked against its config before a single tensor is loaded, and a truncated file is refused by
comparing the offsets with the file size. The library has no streaming writer (its `save_file`
takes every tensor at once), so writing is ours: the header is computed up front and then each
tensor's bytes are streamed, so peak memory is one tensor, not one shard.
"""

from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from .errors import CheckpointError

DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}
_MAX_HEADER = 100 * 2**20


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives: file, dtype, shape, absolute byte range [start, end)."""

    path: Path
    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    start: int
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.start


def _refuse_duplicates(pairs):
    """json object hook: a name listed twice is an error (json.loads would keep the last silently)."""
    seen = {}
    for key, value in pairs:
        if key in seen:
            raise _Duplicate(key)
        seen[key] = value
    return seen


class _Duplicate(Exception):
    pass


def read_header(path: str | Path) -> tuple[dict[str, TensorInfo], dict]:
    """Parse and check a safetensors header: {name: TensorInfo}, metadata. CheckpointError (naming the
    file) on a truncated or malformed file.

    The safetensors library (`safe_open`) is the judge of a valid header: it refuses negative,
    overlapping or gapped offsets, negative dimensions and unknown dtypes. Before it we check what
    it reports less clearly (a truncated file, a name listed twice); after it we keep each tensor's
    byte range, which `read_tensor` needs.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise CheckpointError(f"{path}: truncated safetensors file ({size} bytes, no header)")
            (n,) = struct.unpack("<Q", head)
            if n > _MAX_HEADER or 8 + n > size:
                raise CheckpointError(f"{path}: truncated or corrupt safetensors header (header of {n} bytes, file of {size})")
            raw = f.read(n)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise CheckpointError(f"{path}: is a directory, not a safetensors file") from None
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read ({e.strerror})") from None
    try:
        header = json.loads(raw, object_pairs_hook=_refuse_duplicates)
    except _Duplicate as e:
        raise CheckpointError(f"{path}: tensor {e.args[0]!r} appears twice in the header") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: corrupt safetensors header ({e})") from None
    except RecursionError:
        raise CheckpointError(f"{path}: corrupt safetensors header (nested too deeply)") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: corrupt safetensors header (not a JSON object)")
    entries = {k: v for k, v in header.items() if k != "__metadata__"}
    data_start = 8 + n
    data_end = 0
    for name, entry in entries.items():
        try:
            data_end = max(data_end, int(entry["data_offsets"][1]))
        except (KeyError, TypeError, ValueError, IndexError):
            raise CheckpointError(f"{path}: corrupt safetensors header entry for tensor {name!r}") from None
    if data_start + data_end > size:
        raise CheckpointError(
            f"{path}: truncated file: its header describes {data_start + data_end} bytes, the file has {size}"
        )
    try:
        with safe_open(path, framework="pt") as f:
            metadata = f.metadata() or {}
            shapes = {name: (tuple(f.get_slice(name).get_shape()), f.get_slice(name).get_dtype()) for name in f.keys()}
    except SafetensorError as e:
        raise CheckpointError(f"{path}: corrupt safetensors header ({_library_reason(e)})") from None
    infos = {}
    for name, (shape, dtype_name) in shapes.items():
        if dtype_name not in DTYPES:
            raise CheckpointError(f"{path}: tensor {name!r} has dtype {dtype_name}, which is not supported ({', '.join(DTYPES)})")
        begin, end = (int(o) for o in entries[name]["data_offsets"])
        infos[name] = TensorInfo(path, name, DTYPES[dtype_name], shape, data_start + begin, data_start + end)
    return infos, metadata


def _library_reason(e: Exception) -> str:
    """The safetensors library's message without its generic prefix."""
    return str(e).strip().splitlines()[0].removeprefix("Error while deserializing header: ")


def read_tensor(info: TensorInfo, f=None) -> torch.Tensor:
    """Read one tensor's bytes (at the offsets the library validated) into a fresh CPU tensor.

    Not through `safe_open(...).get_tensor`: it returns a tensor on a private mapping of the file,
    which must be cloned before it can outlive the file (a file truncated in place under a live
    mapping kills the process with SIGBUS), and the mapped pages count towards resident memory
    until the clone is done: a second copy of the largest tensor at peak (measured: +124 MiB, the
    embedding, on `benchmarks/load_8b.py --layers 2 --scale 8`; LLaDA-8B's embedding is 0.96 GiB).
    One read into one buffer keeps the peak at one tensor.
    """
    own = f is None
    if own:
        f = open(info.path, "rb")
    try:
        f.seek(info.start)
        buf = bytearray(info.nbytes)
        got = f.readinto(buf)
        if got != info.nbytes:
            raise CheckpointError(f"{info.path}: truncated while reading tensor {info.name!r}")
    finally:
        if own:
            f.close()
    if info.nbytes == 0:
        return torch.empty(info.shape, dtype=info.dtype)
    return torch.frombuffer(buf, dtype=torch.uint8).view(info.dtype).reshape(info.shape)


def load_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Every tensor of a (small) safetensors file."""
    infos, _ = read_header(path)
    with open(path, "rb") as f:
        return {name: read_tensor(info, f) for name, info in infos.items()}


class Writer:
    """Write a safetensors file tensor by tensor, in the order of the `entries` it was planned with."""

    def __init__(self, path: str | Path, entries: list[tuple[str, torch.dtype, tuple[int, ...]]], metadata: dict | None = None):
        self.path = Path(path)
        header, offset = {}, 0
        self._order = []
        for name, dtype, shape in entries:
            nbytes = math.prod(shape) * dtype.itemsize
            header[name] = {"dtype": DTYPE_NAMES[dtype], "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
            self._order.append((name, dtype, tuple(shape)))
            offset += nbytes
        if metadata:
            header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)  # keep the data 8-byte aligned, as the reference writer does
        self._f = open(self.path, "wb")
        self._f.write(struct.pack("<Q", len(raw)))
        self._f.write(raw)
        self._next = 0

    def write(self, name: str, tensor: torch.Tensor) -> None:
        want, dtype, shape = self._order[self._next]
        if name != want or tensor.dtype != dtype or tuple(tensor.shape) != shape:
            raise RuntimeError(f"writer expected {want} {dtype} {shape}, got {name} {tensor.dtype} {tuple(tensor.shape)}")
        t = tensor.detach().to("cpu").contiguous()
        if t.numel():
            self._f.write(memoryview(t.reshape(-1).view(torch.uint8).numpy()))
        self._next += 1

    def close(self) -> None:
        if self._next != len(self._order):
            missing = self._order[self._next][0]
            self._f.close()
            raise RuntimeError(f"{self.path}: closed before tensor {missing} was written")
        self._f.flush()
        os.fsync(self._f.fileno())
        self._f.close()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *_):
        if exc_type is None:
            self.close()
        else:
            self._f.close()


def save_file(tensors: dict[str, torch.Tensor], path: str | Path, metadata: dict | None = None) -> None:
    """Write a dict of tensors (names in sorted order, like the reference writer)."""
    names = sorted(tensors)
    with Writer(path, [(n, tensors[n].dtype, tuple(tensors[n].shape)) for n in names], metadata) as w:
        for n in names:
            w.write(n, tensors[n])


def plan_shards(sizes: list[tuple[str, int]], max_bytes: int) -> list[list[str]]:
    """Group names (in order) into shards of at most max_bytes (a single larger tensor gets its own)."""
    shards, cur, cur_bytes = [], [], 0
    for name, nbytes in sizes:
        if cur and cur_bytes + nbytes > max_bytes:
            shards.append(cur)
            cur, cur_bytes = [], 0
        cur.append(name)
        cur_bytes += nbytes
    if cur:
        shards.append(cur)
    return shards


def shard_names(n: int, stem: str = "model") -> list[str]:
    if n == 1:
        return [f"{stem}.safetensors"]
    return [f"{stem}-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
