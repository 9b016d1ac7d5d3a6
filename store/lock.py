"""One writer per run: an advisory ``flock`` on ``<run>.zarr.lock`` beside the store.

The kernel drops the lock when its holder dies (SIGKILL included), so a crashed worker never
leaves a run claimed forever; a second process asking for a held run is told so at once.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from ..errors import LrscopeError


class RunLocked(LrscopeError):
    """Another live process holds this run."""


class RunLock:
    def __init__(self, store_path: str | os.PathLike):
        self.path = Path(str(store_path) + ".lock")
        self._fd: int | None = None

    def acquire(self) -> "RunLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RunLocked(f"{self.path.with_suffix('')} is being trained by another process") from None
        try:  # the holder before us may have unlinked the file between our open and flock
            same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
        except FileNotFoundError:
            same = False
        if not same:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
            return self.acquire()
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            try:
                self.path.unlink(missing_ok=True)
            finally:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
                os.close(self._fd)
                self._fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
