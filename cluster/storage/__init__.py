"""LMDB storage for partition logs: one environment per node, group-commit writer.

See docs/storage.md for the key layout, entry format, durability modes,
retention and recovery.
"""

from .codec import Entry, EntryType, HardState, decode_entry, encode_entry
from .errors import (
    CorruptEntryError,
    DataDirLockedError,
    LogClosedError,
    OffsetOutOfRangeError,
    StorageError,
    StorageFullError,
)
from .log import AppendTicket, PartitionLog, StoredBatch
from .meta import MetaStore
from .node import Durability, NodeStorage, StorageConfig

__all__ = [
    "AppendTicket",
    "CorruptEntryError",
    "DataDirLockedError",
    "Durability",
    "Entry",
    "EntryType",
    "HardState",
    "LogClosedError",
    "MetaStore",
    "NodeStorage",
    "OffsetOutOfRangeError",
    "PartitionLog",
    "StorageConfig",
    "StorageError",
    "StorageFullError",
    "StoredBatch",
    "decode_entry",
    "encode_entry",
]
