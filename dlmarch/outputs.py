"""The output policy: what a command may write, where, and what it may copy into it.

Every command that writes checks its outputs here before anything is read or written:
- `check_disjoint`: an output must not be, contain or lie inside an input (compared after resolving
  symbolic links and `..`, so `SRC/x/..` and a link to SRC are SRC).
- `check_file_output`: the policy of a single-file output (generate, evaluate, rescoring): never an
  input, never inside a model directory, never a directory, an existing file replaced only when it is
  ours and --overwrite says so.
- `foreign_entries`: the entries of a directory an --overwrite must not delete.
- `aux_files`: the files of a checkpoint directory that travel with its weights (tokenizer, chat
  template), never through a link that leads outside it.
- `Claim`: the manifest of a tool's output directory (what --overwrite may replace).

How the write itself is made atomic is dlmarch/atomic.py; one owner per output, dlmarch/locks.py.
"""

from __future__ import annotations

import fnmatch
import json
import os
import shutil
from pathlib import Path

from .atomic import write_json
from .errors import CheckpointError, DlmarchError


# --- overlaps -------------------------------------------------------------------------------------------


def check_disjoint(output: str | Path, inputs: dict[str, str | Path | None], output_label: str = "output") -> None:
    """Refuse an output that is, contains or lies inside one of the inputs (label -> path): writing
    or replacing it would destroy the input. Paths are compared resolved (links and `..` followed)."""
    out = Path(output).resolve()
    for label, path in inputs.items():
        if path is None:
            continue
        p = Path(path).resolve()
        if p == out:
            raise DlmarchError(f"{output_label} {output} is the {label} {path}; choose another {output_label}")
        if out in p.parents:
            raise DlmarchError(f"{output_label} {output} contains the {label} {path}; choose another {output_label}")
        if p in out.parents:
            raise DlmarchError(f"{output_label} {output} lies inside the {label} {path}; choose another {output_label}")


_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")  # a file of these is weights, never an auxiliary file


def is_model_dir(path: Path) -> bool:
    """A checkpoint directory: config.json beside weights (a project folder with a config.json is not)."""
    return path.is_dir() and (path / "config.json").is_file() and any((path / w).is_file() for w in _WEIGHTS)


def check_file_output(output: str | Path, inputs: dict[str, str | Path | None], label: str = "--output",
                      overwrite: bool = False, ours=lambda p: False, may_exist: bool = False) -> Path:
    """The policy of a one-file output, checked before anything is read or written: not an input
    (nor inside or containing one), not inside a model directory, not a directory, its parent a
    directory; an existing file only with `may_exist` (resume), or with `overwrite` when ours(path)
    says this tool wrote it. Returns the path."""
    out = Path(output)
    check_disjoint(out, inputs, label)
    resolved = out.resolve()
    for d in resolved.parents:
        if is_model_dir(d):
            raise DlmarchError(f"{label} {output} lies inside the model directory {d}; choose a path outside it")
    for d in [out.parent, *out.parent.parents]:
        if d.exists() and not d.is_dir():
            raise DlmarchError(f"{label} {output}: {d} is a file, not a directory")
    if out.is_symlink():
        raise DlmarchError(f"{label} {output} is a symbolic link; not written through (remove it or choose another path)")
    if out.exists():
        if out.is_dir():
            raise DlmarchError(f"{label} {output} is a directory; expected a file path")
        if may_exist:
            return out
        if not overwrite:
            raise DlmarchError(f"{label} {output} already exists; pass --overwrite to replace it (only a file this command wrote)")
        if not ours(out):
            raise DlmarchError(f"{label} {output} exists and was not written by this command; not replaced by --overwrite")
    return out


def refuse_symlinks(directory: Path, names, what: str) -> None:
    """Refuse entries of `directory` we are about to write that are symbolic links: writing through
    one would change the linked file or directory, which is not ours."""
    for name in names:
        p = directory / name
        if p.is_symlink():
            raise DlmarchError(f"{p} is a symbolic link (to {os.readlink(p)}); {what} never writes through one: "
                               f"remove the link")


def foreign_entries(dst: str | Path, ours) -> list[str]:
    """Names of the entries of `dst` that ours(path) does not claim: what an --overwrite must not
    delete."""
    dst = Path(dst)
    if not dst.is_dir():
        return []
    return sorted(p.name for p in dst.iterdir() if not ours(p))


# --- auxiliary files of a checkpoint ------------------------------------------------------------


def _allowed_roots(src: Path) -> list[Path]:
    """Where the files of checkpoint directory `src` may live: inside it, and for a Hugging Face
    cache snapshot (`models--X/snapshots/REV`, whose files link to `models--X/blobs`) that blobs folder."""
    src = src.resolve()
    roots = [src]
    if src.parent.name == "snapshots" and (src.parent.parent / "blobs").is_dir():
        roots.append((src.parent.parent / "blobs").resolve())
    return roots


def inside_source(src: Path, p: Path) -> bool:
    """Whether `p`, links followed, lies in checkpoint directory `src` (or its Hub cache's blobs)."""
    target = p.resolve()
    return any(target == r or r in target.parents for r in _allowed_roots(src))


def aux_files(src: str | Path) -> list[Path]:
    """Files of a checkpoint directory that are neither config nor weights: tokenizer files,
    generation config, chat template, modeling code. They travel with conversions unchanged. A
    symbolic link to a file outside the directory is refused: copying it would publish that file."""
    src = Path(src)
    out = []
    for p in sorted(src.iterdir()):
        if p.name.startswith(".") or p.name == "config.json" or p.name.endswith(WEIGHT_SUFFIXES) or p.name.endswith(".index.json"):
            continue
        if p.is_symlink() and not inside_source(src, p):
            raise CheckpointError(f"{p}: a symbolic link to {os.readlink(p)}, outside {src}; not copied")
        if p.is_file():
            out.append(p)
    return out


def copy_aux_files(src: str | Path, dst: str | Path) -> list[str]:
    """Copy the auxiliary files of `src` (see `aux_files`) into `dst`; returns their names."""
    names = []
    for p in aux_files(src):
        shutil.copy2(p, Path(dst) / p.name)
        names.append(p.name)
    return names


# --- a tool's output directory --------------------------------------------------------------------------------


class Claim:
    """The manifest of a directory a tool owns: the marker file MARKER, a JSON record of the tool and
    the patterns of the entries it writes there. It proves the directory ours (a user's directory is
    refused), and --overwrite removes only the entries it names: a file the user added is kept."""

    def __init__(self, out: Path, marker: str, tool: str, patterns: tuple[str, ...]):
        self.out, self.marker, self.tool, self.patterns = out, out / marker, tool, tuple(patterns)

    def recorded_patterns(self) -> tuple[str, ...]:
        try:
            data = json.loads(self.marker.read_text())
            pats = data.get("writes") if isinstance(data, dict) else None
        except (OSError, ValueError):
            pats = None
        if isinstance(pats, list) and all(isinstance(p, str) for p in pats):
            return tuple(pats)
        return self.patterns  # a marker of an older version: the tool's own list

    def recorded_tool(self) -> str | None:
        try:
            data = json.loads(self.marker.read_text())
        except (OSError, ValueError):
            return None
        tool = data.get("tool") if isinstance(data, dict) else None
        return tool if isinstance(tool, str) else None

    def ours(self, p: Path) -> bool:
        return p.name == self.marker.name or any(fnmatch.fnmatchcase(p.name, pat) for pat in self.recorded_patterns())

    def prepare(self, resume: bool, overwrite: bool) -> None:
        """Make `out` ours before anything is written: a non-empty `out` is continued with `resume`,
        cleared of the tool's own entries with `overwrite` when it carries the marker (never a directory
        of the user's, never a file the user added), refused otherwise."""
        out = self.out
        if out.exists() and not out.is_dir():
            raise DlmarchError(f"{out} is a file, not a directory")
        for d in out.parents:
            if d.exists() and not d.is_dir():
                raise DlmarchError(f"--output {out}: {d} is a file, not a directory")
        if out.is_symlink() and any(out.iterdir()) and not self.marker.exists():
            raise DlmarchError(f"{out} is a symbolic link to a directory no dlmarch tool wrote; choose another --output")
        if out.exists() and any(out.iterdir()):
            ours = self.marker.is_file() and not self.marker.is_symlink()
            name = self.marker.name
            other = self.recorded_tool() if ours else None
            if other is not None and other != self.tool:  # its patterns are another tool's: never merged or removed here
                raise DlmarchError(f"{out} holds the output of {other}; {self.tool} neither continues nor replaces it: "
                                   f"choose another --output")
            if overwrite and ours:
                for p in sorted(out.iterdir()):
                    if p.name != name and self.ours(p):
                        shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
            elif overwrite:
                raise DlmarchError(f"{out} holds files no dlmarch demo or experiment wrote (no {name}); "
                                   f"--overwrite replaces only their output")
            elif not resume:
                raise DlmarchError(f"{out} already holds files; pass --resume to continue a run there or --overwrite to replace it")
            elif not ours:
                raise DlmarchError(f"{out} holds files no dlmarch demo or experiment wrote (no {name}); choose another --output")
        out.mkdir(parents=True, exist_ok=True)
        patterns = sorted(set(self.recorded_patterns() if self.marker.exists() else ()) | set(self.patterns))
        write_json(self.marker, {"tool": self.tool, "writes": patterns})


__all__ = ["WEIGHT_SUFFIXES", "check_disjoint", "is_model_dir", "check_file_output", "refuse_symlinks",
           "foreign_entries", "aux_files", "copy_aux_files", "Claim"]
