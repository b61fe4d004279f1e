"""Atomic writes: every file or directory a command writes appears whole or not at all.

- temporary directories (`make_temp_dir`) carry a marker file naming the process that made them;
  `clean_stale_temps` removes only those (a user's `.notes.tmp-7/` is never touched).
- `rename_noreplace`: rename without replacing, in one step (renameat2(RENAME_NOREPLACE) on Linux).
- one atomic writer (`staged`) under `atomic_directory` (replace DST in one rename, never replacing a
  DST that appeared meanwhile), `atomic_update` (add files to DST, keep the others) and `atomic_file`
  (with `write_json` on it); a failure removes what was staged, and a full disk (ENOSPC) is one line
  naming the path and the space it needed (`DiskFullError`).

What a command may write, and where, is decided before by the output policy (dlmarch/outputs.py).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
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
    only what it may replace, see `dlmarch.outputs.foreign_entries`)."""
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


__all__ = ["TEMP_MARKER", "DiskFullError", "pid_alive", "make_temp_dir", "clean_stale_temps", "rename_noreplace",
           "disk_full", "disk_full_error", "staged", "atomic_directory", "atomic_update", "atomic_file", "write_json"]
