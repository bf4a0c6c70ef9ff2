"""The only module that touches py-lmdb.

It opens the node's environment with its named databases and wraps
transactions in small typed helpers (point get, floor/ceiling seeks, bounded
range iteration, batched puts, range deletes). Every `lmdb.Error` is
translated into a `StorageError` here, at the boundary, so no LMDB exception
or untyped value leaks into the rest of the storage layer.
"""

from __future__ import annotations

import enum
import errno
import os
import pathlib
from collections.abc import Iterable, Iterator
from types import TracebackType
from typing import Any

import lmdb

from .errors import StorageError, StorageFullError

# Room for the seven databases below plus a few more before a format change.
DATABASES_MAX = 16
# Concurrent read transactions: the event loop, the bench, the writer's reads.
READERS_MAX = 126

Value = bytes | memoryview

DATA_FILE_NAME = "data.mdb"
# What LMDB raises for a file that is not (or no longer) a valid environment.
DAMAGE_ERRORS = (
    lmdb.InvalidError,
    lmdb.CorruptedError,
    lmdb.VersionMismatchError,
    lmdb.PageNotFoundError,
)


class Db(enum.Enum):
    """Named databases of the node environment (see keys.py for key layouts)."""

    LOG = b"log"
    HARDSTATE = b"hardstate"
    GROUP_META = b"group_meta"
    OFFSET_INDEX = b"offset_index"
    TIME_INDEX = b"time_index"
    META = b"meta"
    PRODUCERS = b"producers"
    # Delayed records by due time, and by offset (delays.py).
    DELAY_INDEX = b"delay_index"
    DELAY_OFFSETS = b"delay_offsets"
    # Queue groups' applied state per partition (queues.py).
    QUEUE_STATE = b"queue_state"


def translate_error(exc: lmdb.Error) -> StorageError:
    """The storage error for an LMDB failure inside a transaction.

    A full map or disk is an operating condition the node survives
    (StorageFullError: the transaction was aborted, nothing was stored);
    anything else is a plain StorageError.
    """
    if isinstance(exc, lmdb.MapFullError):
        return StorageFullError(
            "the LMDB map is full (storage_map_size_bytes); delete topics, lower "
            "retention or grow the map"
        )
    # py-lmdb has no class for ENOSPC; LMDB reports it with strerror's text.
    if os.strerror(errno.ENOSPC) in str(exc):
        return StorageFullError(f"the disk is full: {exc}")
    return StorageError(f"LMDB error: {exc}")


def _first_line(exc: BaseException) -> str:
    # py-lmdb messages carry the path and LMDB's text; the CLI prints one line.
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def _check_file_covers_used_pages(env: lmdb.Environment, data_file: pathlib.Path) -> None:
    """Refuses a data file shorter than the pages its meta page says are in use.

    LMDB maps the file and reads pages through the map, so a truncated file
    (a bad copy, a full disk during a restore, a tampering hand) would be
    served until the first read past its end kills the process with SIGBUS.
    LMDB reads its meta pages with read(), so info() is safe here.
    """
    info = env.info()
    page_bytes = int(env.stat()["psize"])
    used_bytes = (int(info["last_pgno"]) + 1) * page_bytes
    try:
        file_bytes = os.stat(data_file).st_size
    except OSError as exc:
        raise StorageError(f"cannot stat data file {data_file}: {exc}") from exc
    if file_bytes < used_bytes:
        raise StorageError(
            f"data file {data_file} is truncated: {file_bytes} bytes on disk, but LMDB's "
            f"meta page says {used_bytes} bytes are in use; restore it from a replica "
            "or a backup"
        )


class ReadCounter:
    """Rows visited by transactions (gets, seeks, iterated rows).

    Tests assert on it that loading a group or an election reads O(1) rows,
    not the log. Written by the loop and the writer thread without a lock: a
    statistic, where a lost increment does not matter.
    """

    __slots__ = ("rows",)

    def __init__(self) -> None:
        self.rows = 0


class LmdbEnv:
    """One LMDB environment per node, with every named database opened once."""

    def __init__(self, env: lmdb.Environment, dbs: dict[Db, lmdb._Database]) -> None:
        self._env = env
        self._dbs = dbs
        self._closed = False
        self.reads = ReadCounter()

    @classmethod
    def open(cls, path: pathlib.Path, map_size_bytes: int, fsync_on_commit: bool) -> LmdbEnv:
        """Opens (creating if needed). Blocking: call from a thread, not the event loop."""
        try:
            path.mkdir(parents=True, exist_ok=True)
            env = lmdb.open(
                os.fspath(path),
                map_size=map_size_bytes,
                max_dbs=DATABASES_MAX,
                max_readers=READERS_MAX,
                # With sync off LMDB neither fsyncs data nor meta pages at commit;
                # the writer's background env.sync() bounds the loss window.
                sync=fsync_on_commit,
                metasync=fsync_on_commit,
                # The log is much larger than RAM in production; readahead
                # would evict hot pages with speculative ones.
                readahead=False,
                max_spare_txns=4,
            )
        except DAMAGE_ERRORS as exc:
            raise StorageError(
                f"data file {path / DATA_FILE_NAME} is damaged or not an LMDB file "
                f"({_first_line(exc)}); restore it from a replica or a backup"
            ) from exc
        except lmdb.Error as exc:
            raise StorageError(f"cannot open LMDB environment at {path}: {exc}") from exc
        try:
            # Before anything reads a page through the map: a page past the
            # end of the file is SIGBUS, which no handler can turn into an error.
            _check_file_covers_used_pages(env, path / DATA_FILE_NAME)
            dbs = {db: env.open_db(db.value, create=True) for db in Db}
        except DAMAGE_ERRORS as exc:
            env.close()
            raise StorageError(
                f"data file {path / DATA_FILE_NAME} is damaged ({_first_line(exc)}); "
                "restore it from a replica or a backup"
            ) from exc
        except lmdb.Error as exc:
            env.close()
            raise StorageError(f"cannot open LMDB environment at {path}: {exc}") from exc
        except BaseException:
            env.close()
            raise
        return cls(env, dbs)

    def read(self) -> ReadTxn:
        """A short read-only snapshot. Values are memoryviews valid inside the `with` only."""
        self._check_open()
        try:
            txn = self._env.begin(buffers=True)
        except lmdb.Error as exc:
            raise StorageError(f"cannot begin read transaction: {exc}") from exc
        return ReadTxn(txn, self._dbs, self.reads)

    def write(self) -> WriteTxn:
        """The one write transaction of a writer turn. Only the writer thread calls this."""
        self._check_open()
        try:
            txn = self._env.begin(write=True)
        except lmdb.Error as exc:
            raise StorageError(f"cannot begin write transaction: {exc}") from exc
        return WriteTxn(txn, self._dbs, self.reads)

    def sync(self) -> None:
        """Forces data and meta pages to disk (used by async durability)."""
        try:
            self._env.sync(True)
        except lmdb.Error as exc:
            raise StorageError(f"env sync failed: {exc}") from exc

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._env.close()

    def stats(self) -> dict[str, int]:
        self._check_open()
        try:
            info = self._env.info()
            stat = self._env.stat()
        except lmdb.Error as exc:
            raise StorageError(f"cannot read env stats: {exc}") from exc
        page_bytes = int(stat["psize"])
        return {
            "env_map_size_bytes": int(info["map_size"]),
            "env_used_bytes": (int(info["last_pgno"]) + 1) * page_bytes,
            "env_readers": int(info["num_readers"]),
            "env_last_txn_id": int(info["last_txnid"]),
            "env_rows_read": self.reads.rows,
        }

    def _check_open(self) -> None:
        if self._closed:
            raise StorageError("LMDB environment is closed")


class _Txn:
    """Read helpers shared by read and write transactions."""

    def __init__(
        self, txn: lmdb.Transaction[Any], dbs: dict[Db, lmdb._Database], reads: ReadCounter
    ) -> None:
        self._txn = txn
        self._dbs = dbs
        self._reads = reads

    def __enter__(self) -> _Txn:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._finish(exc is None)
        if isinstance(exc, lmdb.Error):
            raise translate_error(exc) from exc

    def _finish(self, ok: bool) -> None:
        self._txn.abort()

    def get(self, db: Db, key: bytes) -> Value | None:
        self._reads.rows += 1
        value: Value | None = self._txn.get(key, db=self._dbs[db])
        return value

    def floor(self, db: Db, key: bytes, low: bytes) -> tuple[bytes, Value] | None:
        """The last row with low <= row key <= key."""
        self._reads.rows += 1
        cursor = self._txn.cursor(self._dbs[db])
        if cursor.set_range(key):
            if bytes(cursor.key()) == key:
                return key, cursor.value()
            if not cursor.prev():
                return None
        elif not cursor.last():
            return None
        found = bytes(cursor.key())
        if found < low:
            return None
        return found, cursor.value()

    def ceiling(self, db: Db, key: bytes, end: bytes | None) -> tuple[bytes, Value] | None:
        """The first row with key <= row key < end."""
        self._reads.rows += 1
        cursor = self._txn.cursor(self._dbs[db])
        if not cursor.set_range(key):
            return None
        found = bytes(cursor.key())
        if end is not None and found >= end:
            return None
        return found, cursor.value()

    def last_below(self, db: Db, end: bytes | None, low: bytes) -> tuple[bytes, Value] | None:
        """The last row with low <= row key < end (end None: the database's end)."""
        self._reads.rows += 1
        cursor = self._txn.cursor(self._dbs[db])
        if end is not None and cursor.set_range(end):
            if not cursor.prev():
                return None
        elif not cursor.last():
            return None
        found = bytes(cursor.key())
        if found < low:
            return None
        return found, cursor.value()

    def scan(self, db: Db, start: bytes) -> ValueScan | None:
        """A scan from the first row with key >= start; None if there is none."""
        cursor = self._txn.cursor(self._dbs[db])
        if not cursor.set_range(start):
            return None
        return ValueScan(cursor, self._reads)

    def iterate(self, db: Db, start: bytes, end: bytes | None) -> Iterator[tuple[bytes, Value]]:
        """Rows with start <= key < end in key order; the caller bounds how many it takes."""
        cursor = self._txn.cursor(self._dbs[db])
        if not cursor.set_range(start):
            return
        reads = self._reads
        for key, value in cursor.iternext():
            key_bytes = bytes(key)
            if end is not None and key_bytes >= end:
                return
            reads.rows += 1
            yield key_bytes, value


class ValueScan:
    """Values of consecutive rows from a start key (`Txn.scan`), and the key of the last one.

    The caller bounds the scan (by a count of rows it knows exist) and then
    checks with `key()` where it stopped, instead of copying and comparing
    every row's key; it adds the rows it visited to the read counter.
    """

    __slots__ = ("_cursor", "reads")

    def __init__(self, cursor: lmdb.Cursor[Any], reads: ReadCounter) -> None:
        self._cursor = cursor
        self.reads = reads

    def values(self) -> Iterator[Value]:
        """The rows' values in key order, from the start row on."""
        values: Iterator[Value] = self._cursor.iternext(keys=False, values=True)
        return values

    def key(self) -> bytes:
        """The key of the row `values()` yielded last (b"" once it ran past the end)."""
        return bytes(self._cursor.key())


class ReadTxn(_Txn):
    def __enter__(self) -> ReadTxn:
        return self


class WriteTxn(_Txn):
    """Write side: batched puts (one py-lmdb call per database), deletes, commit."""

    def __enter__(self) -> WriteTxn:
        return self

    def _finish(self, ok: bool) -> None:
        # Commit is explicit (commit()); leaving the block without it aborts.
        if not self._done:
            self._txn.abort()

    def __init__(
        self, txn: lmdb.Transaction[Any], dbs: dict[Db, lmdb._Database], reads: ReadCounter
    ) -> None:
        super().__init__(txn, dbs, reads)
        self._done = False

    def put_many(self, db: Db, items: Iterable[tuple[bytes, bytes]]) -> None:
        self._txn.cursor(self._dbs[db]).putmulti(items)

    def delete(self, db: Db, key: bytes) -> None:
        self._txn.delete(key, db=self._dbs[db])

    def delete_range(
        self, db: Db, start: bytes, end: bytes | None, rows_max: int | None = None
    ) -> int:
        """Deletes rows with start <= key < end, at most `rows_max`; returns how many."""
        cursor = self._txn.cursor(self._dbs[db])
        deleted = 0
        if not cursor.set_range(start):
            return 0
        while rows_max is None or deleted < rows_max:
            key = cursor.key()
            if not key or (end is not None and bytes(key) >= end):
                return deleted
            # delete() leaves the cursor on the following row.
            cursor.delete()
            deleted += 1
        return deleted

    def commit(self) -> None:
        self._txn.commit()
        self._done = True
