"""One owner per output: `OutputLock`, an flock()ed lock file holding the owner's pid.

A directory output's lock is OUT/.lock, a one-file output's `.NAME.lock` beside it (`lock_path_of`).
The lock file is never followed through a symbolic link.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
import sys
from pathlib import Path

from .errors import DlmarchError

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


__all__ = ["LOCK_NAME", "lock_path_of", "OutputLock"]
