"""The data folder's owner lock: one node process per data folder, ever.

Two nodes on one folder each believe they own the log, assign the same
offsets twice and lose acknowledged records (issue 9). LMDB's own lock file
allows many processes by design, so the node takes an exclusive `flock` on
`<data_dir>/LOCK` at open and keeps the descriptor for the storage's whole
life. The kernel drops a flock when its holder dies, so a crashed node never
leaves a stale lock behind; the pid written in the file only names the
holder in the error message.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pathlib

from .errors import DataDirLockedError, StorageError

LOCK_FILE_NAME = "LOCK"
# A pid is at most a few digits; anything longer in the file is not ours.
LOCK_FILE_READ_BYTES_MAX = 64


class DataDirLock:
    """Holds the exclusive lock on a data folder until `release()`."""

    def __init__(self, path: pathlib.Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    @classmethod
    def acquire(cls, data_dir: pathlib.Path) -> DataDirLock:
        """Creates the folder if needed and takes the lock, or raises DataDirLockedError.

        Blocking file I/O: call it from a thread, not the event loop.
        """
        lock_path = data_dir / LOCK_FILE_NAME
        try:
            data_dir.mkdir(parents=True, exist_ok=True)
            # Python opens descriptors non-inheritable, so a child process
            # started by the node does not keep the lock after the node dies.
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise StorageError(f"cannot open lock file {lock_path}: {exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise DataDirLockedError(
                f"data folder {data_dir} is in use by another process (pid {holder}); "
                "two nodes must never share a data folder"
            ) from None
        except OSError as exc:
            os.close(fd)
            raise StorageError(f"cannot lock {lock_path}: {exc}") from exc
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError as exc:
            os.close(fd)
            raise StorageError(f"cannot write lock file {lock_path}: {exc}") from exc
        return cls(data_dir, fd)

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        # Closing the descriptor drops the flock. The file stays: deleting it
        # would race with a new owner that already opened it.
        with contextlib.suppress(OSError):
            os.close(fd)


def _read_holder(fd: int) -> str:
    try:
        raw = os.pread(fd, LOCK_FILE_READ_BYTES_MAX, 0)
    except OSError:
        return "unknown"
    text = raw.decode("ascii", "replace").strip()
    return text if text.isdigit() else "unknown"
