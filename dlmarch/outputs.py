"""The output guard: every command that writes goes through this module.

It owns what keeps a user's files safe when we write next to them:
- `check_disjoint`: an output must not be, contain or lie inside an input (compared after resolving
  symbolic links and `..`, so `SRC/x/..` and a link to SRC are SRC).
- `check_file_output`: the policy of a single-file output (generate, evaluate, rescoring): never an
  input, never inside a model directory, never a directory, an existing file replaced only when it is
  ours and --overwrite says so.
- temporary directories (`make_temp_dir`) carry a marker file naming the process that made them;
  `clean_stale_temps` removes only those (a user's `.notes.tmp-7/` is never touched).
- one atomic writer (`staged`) under `atomic_directory` (replace DST in one rename, never replacing a
  DST that appeared meanwhile: rename-without-replace, renameat2(RENAME_NOREPLACE) on Linux),
  `atomic_update` (add files to DST, keep the others) and `atomic_file`; a failure removes what was
  staged, and a full disk (ENOSPC) is one line naming the path and the space it needed.
- `OutputLock`: one process owns an output (flock on a lock file, never followed through a link).
- `Claim`: the manifest of a tool's output directory (what --overwrite may replace).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import fnmatch
import glob
import json
import os
import re
import secrets
import shutil
import socket
import sys
from pathlib import Path

from .errors import DlmarchError

TEMP_MARKER = ".dlmarch-temp"  # inside every temporary directory we make: its pid and what it was for


class DiskFullError(DlmarchError):
    """A write ran out of space; what it staged is removed."""


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


# --- temporary directories ------------------------------------------------------------------------------


def pid_alive(pid: int) -> bool:
    """Whether a process of this id runs on this machine (one we may not signal still counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OverflowError:
        return False
    return True


def _mark(directory: Path, purpose: str) -> None:
    (directory / TEMP_MARKER).write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                                     "for": purpose}) + "\n")


def make_temp_dir(parent: Path, name: str) -> Path:
    """A new hidden directory `.NAME.tmp-PID-RANDOM` in `parent` holding the marker file. Made with
    os.mkdir so that it gets the umask's mode (tempfile.mkdtemp would give 700); the marker's pid lets
    a later run tell a crashed writer's leftovers from a live one's, and proves the directory ours."""
    parent.mkdir(parents=True, exist_ok=True)
    while True:
        tmp = parent / f".{name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
        try:
            os.mkdir(tmp, 0o777)
        except FileExistsError:
            continue
        _mark(tmp, name)
        return tmp


def _marker_pid(p: Path) -> int | None:
    """The pid in the marker of a temporary directory we made; None when it has no valid marker."""
    m = p / TEMP_MARKER
    try:
        if m.is_symlink() or not m.is_file():
            return None
        pid = json.loads(m.read_text())["pid"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return pid if isinstance(pid, int) and not isinstance(pid, bool) else None


def clean_stale_temps(parent: str | Path, name: str = "*", force: bool = False) -> list[Path]:
    """Remove the temporary directories a killed writer left in `parent` (`.NAME.tmp-*`, `.NAME.old-*`):
    only those holding our marker file, and only when the pid it names no longer runs (or always with
    force=True: the caller owns `parent`). Anything else of such a name is the user's and stays.
    Says so on stderr; returns what it removed."""
    parent = Path(parent)
    if not parent.is_dir():
        return []
    removed = []
    for p in sorted(parent.glob(f".{name}.tmp-*")) + sorted(parent.glob(f".{name}.old-*")):
        if not re.fullmatch(r"\..+\.(?:tmp|old)-\d+(?:-[0-9a-f]+)?", p.name) or p.is_symlink() or not p.is_dir():
            continue
        pid = _marker_pid(p)
        if pid is None or (not force and pid != os.getpid() and pid_alive(pid)):
            continue
        shutil.rmtree(p, ignore_errors=True)
        removed.append(p)
    if removed:
        print(f"removed {len(removed)} temporary director{'y' if len(removed) == 1 else 'ies'} left by an interrupted "
              f"write: {', '.join(str(p) for p in removed)}", file=sys.stderr)
    return removed


# --- rename without replace -----------------------------------------------------------------------------

_AT_FDCWD, _RENAME_NOREPLACE = -100, 1


def _renameat2():
    try:
        f = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return None
    f.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    return f


_RENAMEAT2 = _renameat2() if sys.platform.startswith("linux") else None


def rename_noreplace(src: str | Path, dst: str | Path) -> None:
    """Rename `src` to `dst`, failing with FileExistsError when `dst` exists, in one atomic step:
    renameat2(RENAME_NOREPLACE) on Linux; elsewhere a hard link for files and, for directories, an
    exclusive mkdir of `dst` then a rename over that empty directory (a directory that gained files
    meanwhile is not replaced: ENOTEMPTY)."""
    src, dst = Path(src), Path(dst)
    if _RENAMEAT2 is not None:
        if _RENAMEAT2(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), _RENAME_NOREPLACE) == 0:
            return
        e = ctypes.get_errno()
        if e == errno.EEXIST:
            raise FileExistsError(errno.EEXIST, "already exists", str(dst))
        if e not in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
            raise OSError(e, os.strerror(e), str(src), None, str(dst))
    if src.is_dir() and not src.is_symlink():
        os.mkdir(dst)  # FileExistsError when it exists
        try:
            os.rename(src, dst)
        except OSError as e:
            with contextlib.suppress(OSError):
                os.rmdir(dst)
            if e.errno in (errno.ENOTEMPTY, errno.EEXIST):
                raise FileExistsError(errno.EEXIST, "already exists", str(dst)) from None
            raise
    else:
        os.link(src, dst)
        os.unlink(src)


# --- one atomic writer -------------------------------------------------------------------------------------


def _bytes_under(p: Path) -> int:
    if p.is_file():
        return p.stat().st_size
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file() and not f.is_symlink())


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def disk_full(e: BaseException) -> bool:
    """ENOSPC (or EDQUOT), also when torch's zip writer reports it as 'file write failed'."""
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    return isinstance(e, RuntimeError) and "file write failed" in str(e)


def disk_full_error(dst: Path, staged: Path | None, needed: int | None = None) -> DiskFullError:
    """One line: which path, how much was written when the disk filled, how much is free."""
    written = _bytes_under(staged) if staged is not None and staged.exists() else 0
    where = dst.parent if not dst.exists() else dst
    while not where.exists() and where != where.parent:
        where = where.parent
    free = shutil.disk_usage(where).free
    need = f"it needs {_mib(needed)}" if needed else f"it needs more than the {_mib(written)} written when the disk filled"
    return DiskFullError(f"no space left on the device writing {dst}: {need}, {_mib(free)} free there; "
                         f"nothing was left behind (free some space and run again)")


@contextlib.contextmanager
def staged(dst: str | Path, needed: int | None = None):
    """Yield a new temporary sibling directory of `dst` (with our marker). On an exception it is
    removed and the exception re-raised (a full disk as DiskFullError, one line). The caller commits
    what the directory holds; the leftovers of a killed earlier write to `dst` are removed first."""
    dst = Path(dst)
    clean_stale_temps(dst.parent, glob.escape(dst.name))
    tmp = make_temp_dir(dst.parent, dst.name)
    try:
        yield tmp
    except BaseException as e:
        full = disk_full(e)
        err = disk_full_error(dst, tmp, needed) if full else None
        shutil.rmtree(tmp, ignore_errors=True)
        if full:
            raise err from None
        raise
    (tmp / TEMP_MARKER).unlink(missing_ok=True)


def _retire(dst: Path) -> Path:
    """Move `dst` aside (`.DST.old-PID-RANDOM`) and mark it ours, so that an interrupted removal can be
    finished by the next writer; returns where it went."""
    old = dst.parent / f".{dst.name}.old-{os.getpid()}-{secrets.token_hex(4)}"
    os.replace(dst, old)
    with contextlib.suppress(OSError):
        _mark(old, dst.name)
    return old


@contextlib.contextmanager
def atomic_directory(dst: str | Path, overwrite: bool = False, check=None, needed: int | None = None):
    """Yield a temporary sibling directory; on success it becomes `dst` in one rename.

    An exception leaves `dst` untouched. Without overwrite, `dst` is never replaced, also when it
    appeared while we wrote (another process, a user): FileExistsError. With overwrite, an existing
    `dst` is replaced after check(dst) passes again at rename time (the caller's test that it holds
    only what it may replace, see `foreign_entries`)."""
    dst = Path(dst)
    if (dst.exists() or dst.is_symlink()) and not overwrite:
        raise FileExistsError(f"{dst} already exists")
    with staged(dst, needed) as tmp:
        yield tmp
    try:
        old = None
        if overwrite and (dst.exists() or dst.is_symlink()):
            if check is not None:
                check(dst)
            old = _retire(dst)
        try:
            rename_noreplace(tmp, dst)
        except FileExistsError:
            if old is not None:  # someone made dst between our two renames: give back what we moved
                with contextlib.suppress(OSError):
                    rename_noreplace(old, dst)
                    (dst / TEMP_MARKER).unlink(missing_ok=True)
                    old = None
            raise FileExistsError(f"{dst} appeared while this command ran (another process?); not replaced") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_update(dst: str | Path, stale=lambda name: False, needed: int | None = None):
    """Yield a temporary directory whose files are then moved into `dst`, adding or replacing
    files of those names and never deleting others (a model saved where its tokenizer lives keeps
    it). A `dst` that does not exist is made by one rename. Files of `dst` that `stale(name)` names
    and this write did not produce are removed (an old shard index that would shadow new weights).
    Each file moves in one rename, config.json last: a directory showing the new config.json holds
    every new file (a crash before that can leave new weights beside the old config)."""
    dst = Path(dst)
    if dst.is_symlink():
        raise DlmarchError(f"{dst} is a symbolic link (to {os.readlink(dst)}); not written through")
    if dst.exists() and not dst.is_dir():
        raise FileExistsError(f"{dst} exists and is not a directory")
    with staged(dst, needed) as tmp:
        yield tmp
    try:
        if not dst.exists():
            rename_noreplace(tmp, dst)
            return
    except FileExistsError:
        pass  # made meanwhile: add our files to it as to any existing directory
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        written = sorted(p.name for p in tmp.iterdir())
        for name in written:
            if (dst / name).is_dir() and not (dst / name).is_symlink():
                raise FileExistsError(f"{dst / name} is a directory; not replaced by a file")
        for name in written:
            if name != "config.json":
                os.replace(tmp / name, dst / name)
        for p in dst.iterdir():
            if p.name not in written and stale(p.name) and p.is_file():
                p.unlink()
        if "config.json" in written:
            os.replace(tmp / "config.json", dst / "config.json")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def atomic_file(path: str | Path, mode: str = "w", replace: bool = True):
    """Yield a file object on a temporary sibling; on success it is renamed onto `path` (with
    replace=False never over an existing file: FileExistsError). A failure (a full disk: one line)
    removes the temporary file and leaves `path` as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        with open(tmp, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        if replace:
            os.replace(tmp, path)
        else:
            rename_noreplace(tmp, path)
    except BaseException as e:
        full = disk_full(e)
        err = disk_full_error(path, tmp) if full else None
        tmp.unlink(missing_ok=True)
        if full:
            raise err from None
        raise


def write_json(path: str | Path, data) -> None:
    """Write JSON through a temporary file renamed over `path`, so a reader never sees half of it."""
    with atomic_file(path) as f:
        f.write(json.dumps(data, indent=2, sort_keys=False) + "\n")


def foreign_entries(dst: str | Path, ours) -> list[str]:
    """Names of the entries of `dst` that ours(path) does not claim: what an --overwrite must not
    delete."""
    dst = Path(dst)
    if not dst.is_dir():
        return []
    return sorted(p.name for p in dst.iterdir() if not ours(p))


# --- one owner per output ----------------------------------------------------------------------------------


LOCK_NAME = ".lock"


def lock_path_of(out: Path) -> Path:
    """Where the lock of an output lives: OUT/.lock for a directory, `.NAME.lock` beside a file."""
    return out / LOCK_NAME if out.is_dir() else out.with_name(f".{out.name}.lock")


class OutputLock:
    """One process owns an output: its lock file holds the owner's pid and is flock()ed while it runs.
    The kernel drops the flock when the process dies, so a lock file left by a killed run is
    detected as stale (its pid is named) and taken over. A lock file that is a symbolic link is
    refused (never followed: it would truncate the linked file).

    For a directory output (the default) the lock is OUT/.lock and OUT is created when missing;
    release() removes it again when it is still empty (a run refused before it wrote anything).
    With `path`, the lock is that file (a one-file output's `.NAME.lock`)."""

    def __init__(self, out: Path, path: Path | None = None, label: str = "--output"):
        self.out = out
        self.created = False
        if path is None:
            self.path = out / LOCK_NAME
            self.created = not out.exists()
            out.mkdir(parents=True, exist_ok=True)
        else:
            self.path = path
            path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o666)
            except OSError as e:
                if e.errno == errno.ELOOP:
                    self.release_dir()
                    raise DlmarchError(f"{self.path} is a symbolic link; a lock is never followed "
                                       f"(remove it or choose another {label})") from None
                raise
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                owner = os.pread(fd, 200, 0).decode(errors="replace").split() or ["?"]
                os.close(fd)
                raise DlmarchError(f"{out} is in use by another run (pid {owner[0]}, lock {self.path}); "
                                   f"wait for it to end or choose another {label}") from None
            try:  # the owner may have released (unlinked) the file between our open and flock
                same = os.fstat(fd).st_ino == os.stat(self.path, follow_symlinks=False).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        previous = os.pread(fd, 200, 0).decode(errors="replace").split()
        if previous:
            print(f"{out}: the lock of pid {previous[0]} is stale (that run ended without releasing it); taken over",
                  file=sys.stderr)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
        self.fd = fd

    def release_dir(self) -> None:
        if self.created:
            with contextlib.suppress(OSError):
                self.out.rmdir()  # only when empty

    def release(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        os.close(self.fd)
        self.release_dir()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()


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


__all__ = ["check_disjoint", "check_file_output", "refuse_symlinks", "make_temp_dir", "clean_stale_temps",
           "rename_noreplace", "staged", "atomic_directory", "atomic_update", "atomic_file", "write_json",
           "foreign_entries", "OutputLock", "Claim", "DiskFullError", "disk_full", "disk_full_error", "pid_alive"]
