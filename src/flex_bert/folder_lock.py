"""One writer per output folder: ``with folder_lock(path, what="training run"):``.

The lock is ``fcntl.flock`` on ``path/.flexbert.lock``. The operating system releases it when the holder's
process ends, however it ends (kill -9 included), so a lock is never stale. The file stays in the folder and
holds the holder's pid, host and start time, for the message a second writer gets. flock works across the
nodes of a cluster on NFS (Linux emulates it with byte-range locks) and on Lustre mounted with ``flock``.
"""

from __future__ import annotations

import fcntl
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

LOCK_NAME = ".flexbert.lock"


@contextmanager
def folder_lock(path: str | os.PathLike, what: str = "training run") -> Iterator[Path]:
    """Hold the folder's lock for the ``with`` block (the folder is created if missing); yields the lock file.

    Another holder, in this process or any other, makes it a ValueError of one line naming that holder.
    """
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    lock_file = folder / LOCK_NAME
    fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip() or "another process"
            raise ValueError(
                f"{folder} is in use by another {what} ({holder}); wait for it to end or use another folder"
            ) from None
        os.ftruncate(fd, 0)
        started = time.strftime("%Y-%m-%d %H:%M:%S")
        os.pwrite(fd, f"pid {os.getpid()} on host {socket.gethostname()}, since {started}\n".encode(), 0)
        try:
            yield lock_file
        finally:
            os.ftruncate(fd, 0)  # the holder's line is only true while it holds the lock
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
