"""What a directory holds, recorded and checked: `manifest.json` (size and sha256 of every file, so
that a reader tells a complete, unedited directory from a truncated or altered one) and the
fingerprint of a model directory (which model a result was made from)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from .atomic import TEMP_MARKER, write_json
from .outputs import WEIGHT_SUFFIXES


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


MANIFEST = "manifest.json"


def directory_fingerprint(directory: str | Path, sample: int = 1 << 20) -> str:
    """sha256 over a model directory's config.json and, for each weight file, its name, size and
    first and last `sample` bytes: which model a result was made from, in milliseconds for any size
    (another model, or retrained weights, differ there; a copy of the same files does not)."""
    d = Path(directory)
    h = hashlib.sha256()
    for p in sorted(d.iterdir()) if d.is_dir() else []:
        if not p.is_file() or not (p.name == "config.json" or p.name.endswith(WEIGHT_SUFFIXES) or p.name.endswith(".index.json")):
            continue
        size = p.stat().st_size
        h.update(f"{p.name}:{size};".encode())
        with open(p, "rb") as f:
            h.update(f.read(sample))
            if size > sample:
                f.seek(max(sample, size - sample))
                h.update(f.read(sample))
    return h.hexdigest()


def write_manifest(directory: Path) -> None:
    """manifest.json: size and sha256 of every other file in `directory`, so that a reader can tell
    a complete, unedited directory from a truncated or altered one."""
    files = {p.name: {"bytes": p.stat().st_size, "sha256": file_digest(p)}
             for p in sorted(directory.iterdir()) if p.is_file() and p.name not in (MANIFEST, TEMP_MARKER)}
    write_json(directory / MANIFEST, {"files": files})


def verify_manifest(directory: Path) -> str | None:
    """None when every file of the manifest is there with its size and hash; else why not."""
    try:
        files = json.loads((directory / MANIFEST).read_text())["files"]
    except FileNotFoundError:
        return "no manifest.json"
    except (ValueError, KeyError, TypeError, OSError):
        return "unreadable manifest.json"
    if not isinstance(files, dict):
        return "unreadable manifest.json"
    for name, want in files.items():
        if not isinstance(want, dict) or not isinstance(want.get("bytes"), int) or not isinstance(want.get("sha256"), str):
            return f"manifest.json: the entry of {name} is {type(want).__name__}, not {{bytes, sha256}}"
        f = directory / name
        if Path(name).name != name or not f.is_file() or f.is_symlink():
            return f"{name} is missing"
        if f.stat().st_size != want.get("bytes"):
            return f"{name} has {f.stat().st_size} bytes, the manifest says {want.get('bytes')}"
        if file_digest(f) != want.get("sha256"):
            return f"{name} differs from its hash in the manifest"
    return None


__all__ = ["MANIFEST", "file_digest", "write_manifest", "verify_manifest", "directory_fingerprint"]
