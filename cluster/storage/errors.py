"""Typed errors of the storage layer.

No `lmdb.Error` escapes this package: the LMDB wrapper translates every one of
them into a `StorageError`, so callers handle one family of exceptions.

One family with the Raft core's: `StorageError` here derives from
`weir.cluster.raft.StorageError`, whose other children are the Raft storage
protocol's `CompactedError` and `UnavailableError` (re-exported here and
raised by `LmdbRaftStorage` where the protocol says so). A host that catches
the Raft core's base catches every storage failure.
"""

from __future__ import annotations

from ..raft.storage import CompactedError, UnavailableError
from ..raft.storage import StorageError as RaftStorageError

__all__ = [
    "CompactedError",
    "CorruptEntryError",
    "DataDirLockedError",
    "LogClosedError",
    "OffsetOutOfRangeError",
    "RaftStorageError",
    "StorageError",
    "StorageFullError",
    "UnavailableError",
]


class StorageError(RaftStorageError):
    """Base of every storage failure; the storage cannot serve this request."""

    # A retry on the same node does not help: the writer died, the disk is
    # full or the data is damaged. The broker maps this to UNAVAILABLE.
    retriable = False


class CorruptEntryError(StorageError):
    """A stored entry failed its checksum or its header is malformed.

    LMDB does not checksum pages, so a torn write after a machine crash in
    async durability mode (or a bad disk) shows up here instead of being
    served to consumers.
    """


class OffsetOutOfRangeError(StorageError):
    """The requested offset lies outside the retained range [start, end]."""

    def __init__(self, start_offset: int, end_offset: int, offset: int | None = None) -> None:
        self.start_offset = start_offset
        self.end_offset = end_offset
        self.offset = offset
        super().__init__(
            f"offset {offset} out of range: log holds [{start_offset}, {end_offset})"
            if offset is not None
            else f"offset out of range: log holds [{start_offset}, {end_offset})"
        )


class LogClosedError(StorageError):
    """The partition log was dropped or the storage was closed."""


class StorageFullError(StorageError):
    """The LMDB map or the disk is full: this write failed, nothing was stored.

    Not fatal for the node: the writer goes on, and later writes succeed once
    retention or deletes free pages (or the operator grows the map).
    """

    retriable = True


class DataDirLockedError(StorageError):
    """Another process holds the data folder; two nodes must never share one."""
