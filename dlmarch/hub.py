"""Hugging Face Hub names (`GSAI-ML/LLaDA-8B-Instruct`) where a local directory is expected.

A name that is not an existing path and has the form of a hub repository id is looked up in
huggingface_hub's cache (`HF_HUB_CACHE`, default ~/.cache/huggingface/hub) and, for models only,
downloaded into it when `HF_HUB_OFFLINE` is not set (weights, configs and tokenizer files; code files
come too but are never executed: see docs/ecosystem.md). Datasets are only read from the cache. Nothing
else reaches the network: every loader then reads the snapshot directory like any local directory.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from .errors import ConfigError

# owner/name, as the Hub spells repository ids. (Legacy ids without an owner are not taken: a bare
# word is far more often a mistyped local directory.)
_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.-]{0,95}")
# What a model snapshot needs; README/images/other formats' weights stay on the Hub.
MODEL_FILES = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.py", "tokenizer*"]


def is_hub_id(name: str | Path) -> bool:
    """True for a string shaped like a hub repository id that names no existing local path."""
    text = str(name)
    if Path(text).exists() or text.startswith((".", "/", "~")) or text.endswith((".json", ".jsonl")):
        return False
    return _HUB_ID.fullmatch(text) is not None and ".." not in text


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def cache_dir() -> str | None:
    """Read at call time (huggingface_hub reads its environment once, at import)."""
    return os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE") or None


def snapshot(repo_id: str, repo_type: str = "model", *, download: bool | None = None, what: str = "") -> Path:
    """The local snapshot directory of a hub repository.

    The cache is tried first (`local_files_only`); a model missing from it is downloaded unless
    HF_HUB_OFFLINE is set (`download=None`); `download=False` never downloads. One-line ConfigError
    naming the id and the cache otherwise."""
    what = f"{what} " if what else ""
    try:
        from huggingface_hub import snapshot_download
    except ImportError:  # pragma: no cover - a dependency of transformers
        raise ConfigError(f"{what}{repo_id}: hub ids need huggingface_hub (pip install huggingface_hub)") from None
    where = cache_dir() or "the default huggingface_hub cache"
    try:
        return Path(snapshot_download(repo_id, repo_type=repo_type, cache_dir=cache_dir(), local_files_only=True))
    except Exception as cached_error:  # LocalEntryNotFoundError, a malformed id
        if repo_type != "model":
            why, download = "datasets are read from the cache only", False
        elif download is None:
            why, download = "HF_HUB_OFFLINE is set", not offline()
        else:
            why = "downloads are off"
        if not download:
            raise ConfigError(f"{what}{repo_id}: not a local path, and not in the hub cache ({where}; {why}); "
                              f"download it first (huggingface-cli download {'--repo-type dataset ' if repo_type == 'dataset' else ''}"
                              f"{repo_id})") from None
        del cached_error
    try:
        return Path(snapshot_download(repo_id, repo_type=repo_type, cache_dir=cache_dir(), allow_patterns=MODEL_FILES))
    except Exception as e:
        line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"{what}{repo_id}: not a local path, and the download failed ({line})") from None


def snapshot_repo_id(path: str | Path) -> str | None:
    """`owner/name` when `path` is a snapshot in a huggingface_hub cache
    (.../models--owner--name/snapshots/<revision>), else None."""
    p = Path(path)
    if p.parent.name != "snapshots" or not p.parent.parent.name.startswith("models--"):
        return None
    parts = p.parent.parent.name.split("--")[1:]
    return "/".join(parts) if len(parts) == 2 else None


def local_model_dir(name: str | Path, what: str = "") -> Path:
    """A model directory: the path itself, or the cached snapshot of a hub id (see `snapshot`)."""
    if is_hub_id(name):
        return snapshot(str(name), "model", what=what)
    return Path(name)


__all__ = ["is_hub_id", "local_model_dir", "offline", "snapshot", "snapshot_repo_id"]
