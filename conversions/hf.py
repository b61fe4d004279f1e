"""Hugging Face <-> native conversion for the transformer families (LLaDA, Llama, Qwen2).

Both directions are driven by the family's key table (dlmarch.keymaps) and stream one tensor at a
time: every name and shape is checked against the config from the file headers first, then each
output shard is written tensor by tensor into a temporary directory that is renamed at the end.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch

from dlmarch import safetensors_io as st
from dlmarch.atomic import atomic_directory, write_json
from dlmarch.checkpoint import (NATIVE_FORMAT, WeightFiles, build_on_meta, check_tied_head, is_weight_file, native_header,
                                write_shards)
from dlmarch.outputs import aux_files, check_disjoint, copy_aux_files, foreign_entries
from dlmarch import dtypes
from dlmarch.config import read_json
from dlmarch.dtypes import HF_DTYPE_NAMES
from dlmarch.errors import ConfigError, DlmarchError
from dlmarch.family import config_from_hf, config_from_native, family_of_hf, read_native_config
from dlmarch.keymaps import expected_shapes, plan
from dlmarch.registry import FAMILIES, HF_FAMILIES



# The hub repositories whose remote code defines the families that transformers does not ship (their
# config.json's `auto_map`): GSAI-ML/LLaDA-8B-Instruct (configuration_llada.py, modeling_llada.py) and
# Dream-org/Dream-v0-Instruct-7B (configuration_dream.py, modeling_dream.py).
REMOTE_CODE_REPOS = {"llada": "GSAI-ML/LLaDA-8B-Instruct", "dream": "Dream-org/Dream-v0-Instruct-7B"}


def remote_code_map(auto_map: dict, family: str, present: set[str]) -> dict:
    """`auto_map` for a directory holding the files `present`: an entry whose module file
    (`modeling_llada.LLaDAModelLM` -> modeling_llada.py) travelled with the checkpoint stays local;
    one whose file is absent names the reference repository's code instead, in transformers'
    `repo--module.Class` form (transformers downloads it from there when the user passes
    trust_remote_code=True; we never run it). Entries already naming a repository are kept."""
    repo = REMOTE_CODE_REPOS.get(family)

    def one(ref):
        if not isinstance(ref, str) or "--" in ref or repo is None:
            return ref
        module = ref.rsplit(".", 1)[0]
        return ref if f"{module}.py" in present else f"{repo}--{ref}"

    return {k: ([one(r) for r in v] if isinstance(v, list) else one(v)) for k, v in auto_map.items()}


@dataclass
class Report:
    family: str
    tensors: int
    shards: int
    bytes_written: int
    seconds: float

    def line(self, verb: str, dst: Path) -> str:
        return (f"{verb} {self.family}: {self.tensors} tensors, {self.bytes_written / 2**20:.1f} MiB in "
                f"{self.shards} shard(s) -> {dst} ({self.seconds:.1f}s)")


def parse_dtype(name: str | None) -> torch.dtype | None:
    try:
        return dtypes.parse_dtype(name)
    except ValueError:
        raise ConfigError(f"unknown --dtype {name!r} (choose from fp32, bf16, fp16)") from None


def check_destination(dst: Path, inputs: dict[str, Path | str | None], overwrite: bool, sources: list[Path] = ()) -> None:
    """Before anything is read or written: DST must not be, contain or lie inside an input, and
    --overwrite replaces only a checkpoint directory, one whose every file a conversion writes
    (config.json, weights, the auxiliary files of `sources`). Anything else in it is the user's:
    refused, with its name. The same test runs again at rename time (`replaceable`)."""
    check_disjoint(dst, inputs, "DST")
    if not (dst.exists() or dst.is_symlink()):
        return
    if not overwrite:
        raise FileExistsError(f"{dst} already exists")
    replaceable(sources)(dst)


def replaceable(sources: list[Path] = ()):
    """The test a DST must pass to be replaced by --overwrite (at the start and again at rename
    time: a directory the user filled meanwhile is kept)."""
    ours = {"config.json", "generation_config.json"}
    for src in sources:
        if Path(src).is_dir():
            ours.update(p.name for p in aux_files(src))

    def check(dst: Path) -> None:
        if dst.is_symlink() or not dst.is_dir():
            raise DlmarchError(f"{dst} is not a checkpoint directory; not replaced")
        foreign = foreign_entries(dst, lambda p: p.is_file() and not p.is_symlink() and (p.name in ours or is_weight_file(p.name)))
        if foreign:
            raise DlmarchError(f"{dst} holds {foreign[0]!r}, which a conversion does not write; not replaced "
                               f"(remove it or choose another DST)")

    return check


def _groups(files: WeightFiles, mapping: dict[str, str], out_name, max_shard_size: int | None, sizes: dict[str, int]):
    """Output shards: the source's own grouping, or a new one of at most max_shard_size bytes.
    Returns a list of lists of (source name, output name)."""
    ordered = []
    for f in files.files:
        group = [(n, out_name(n)) for n in files.header(f) if n in mapping]
        if group:
            ordered.append(group)
    if max_shard_size is None:
        return ordered
    flat = [pair for g in ordered for pair in g]
    by_src = dict(flat)
    planned = st.plan_shards([(src, sizes[src]) for src, _ in flat], max_shard_size)
    return [[(src, by_src[src]) for src in g] for g in planned]


def _stream(files: WeightFiles, groups, dst: Path, dtype: torch.dtype | None) -> tuple[int, int]:
    """Write the planned groups (lists of (source name, output name)) as shards, casting floating
    tensors to `dtype` when given, one tensor in memory at a time."""
    headers = {}
    for f in files.files:
        headers.update(files.header(f))
    source = {}
    planned = []
    for group in groups:
        entries = []
        for src, out in group:
            shape, stored = headers[src]
            entries.append((out, dtype if (dtype is not None and stored.is_floating_point) else stored, shape))
            source[out] = src
        planned.append(entries)
    return write_shards(dst, planned, lambda out: files.read(source[out]), metadata={"format": "pt"})


def import_hf(src: str | Path, dst: str | Path, dtype: str | None = None, overwrite: bool = False,
              max_shard_size: int | None = None) -> Report:
    """HF checkpoint directory (LLaDA, Llama, Qwen2) -> native directory."""
    t0 = time.time()
    src, dst = Path(src), Path(dst)
    check_destination(dst, {"source": src}, overwrite, [src])
    raw = read_json(src / "config.json")
    if raw.get("format") == NATIVE_FORMAT:
        raise ConfigError(f"{src}: already a dlmarch checkpoint; nothing to import")
    family = family_of_hf(raw, HF_FAMILIES.values(), str(src / "config.json"))
    config = config_from_hf(raw, HF_FAMILIES.values(), str(src / "config.json"))
    table = family.key_table
    files = WeightFiles(src)
    model = build_on_meta(family.model_class, config)
    found = files.all_tensors()
    mapping = plan(found, expected_shapes(model), table.native_name, f"{src} ({family.name} checkpoint)",
                   lambda n: table.is_ignorable(n, config.tie_word_embeddings))
    check_tied_head(files, table, config.tie_word_embeddings)
    torch_dtype = parse_dtype(dtype)
    groups = _groups(files, mapping, mapping.get, max_shard_size, files.tensor_bytes())
    with atomic_directory(dst, overwrite=overwrite, check=replaceable([src]), needed=sum(files.tensor_bytes().values())) as tmp:
        shards, nbytes = _stream(files, groups, tmp, torch_dtype)
        write_json(tmp / "config.json", native_header(family.model_class.__name__, config=config.to_dict()))
        copy_aux_files(src, tmp)
    return Report(family.name, len(mapping), shards, nbytes, time.time() - t0)


def export_hf(src: str | Path, dst: str | Path, dtype: str | None = None, overwrite: bool = False,
              max_shard_size: int | None = None) -> Report:
    """Native directory -> the original family's HF layout (config.json + safetensors)."""
    t0 = time.time()
    src, dst = Path(src), Path(dst)
    check_destination(dst, {"source": src}, overwrite, [src])
    raw = read_native_config(src)
    if not isinstance(raw.get("config"), dict) and raw.get("model") in {f.model_class.__name__ for f in FAMILIES.values()
                                                                       if not f.hf_model_type}:
        raise ConfigError(f"{src}: a {raw['model']} checkpoint has no single HF layout; export its main path instead")
    config = config_from_native(raw, HF_FAMILIES.values(), src / "config.json")
    family = HF_FAMILIES[config.family]
    table = family.key_table
    files = WeightFiles(src)
    model = build_on_meta(family.model_class, config)
    mapping = plan(files.all_tensors(), expected_shapes(model), lambda n: n, f"{src} (native {config.family})")
    torch_dtype = parse_dtype(dtype)
    groups = _groups(files, mapping, table.hf_name, max_shard_size, files.tensor_bytes())
    hf_config = config.to_hf()
    if torch_dtype is not None:
        hf_config["torch_dtype"] = HF_DTYPE_NAMES[torch_dtype]
    with atomic_directory(dst, overwrite=overwrite, check=replaceable([src]), needed=sum(files.tensor_bytes().values())) as tmp:
        shards, nbytes = _stream(files, groups, tmp, torch_dtype)
        copied = copy_aux_files(src, tmp)  # the reference's modeling code among them when the source had it
        if isinstance(hf_config.get("auto_map"), dict):
            hf_config["auto_map"] = remote_code_map(hf_config["auto_map"], config.family, set(copied))
        write_json(tmp / "config.json", hf_config)
    return Report(config.family, len(mapping), shards, nbytes, time.time() - t0)

