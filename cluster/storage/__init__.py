"""LMDB storage: one environment per node, group-commit writer, Raft logs = partition logs.

See docs/storage.md for the key layout, entry format, durability modes,
the Raft storage and its asynchronous writes, retention and recovery.
Entries, entry types and hard state are the Raft core's (`weir.cluster.raft`):
one vocabulary, re-exported here for convenience.
"""

from ..raft.types import Entry, EntryType, HardState
from .codec import (
    BatchKind,
    decode_partition_snapshot,
    decode_row,
    encode_batch,
    encode_control,
    encode_partition_snapshot,
    encode_row,
)
from .errors import (
    CompactedError,
    CorruptEntryError,
    DataDirLockedError,
    LogClosedError,
    OffsetOutOfRangeError,
    StorageError,
    StorageFullError,
    UnavailableError,
)
from .log import AppendTicket, PartitionLog, RetentionPlan, StoredBatch, StoredRun
from .meta import MetaStore
from .node import Durability, NodeStorage, StorageConfig
from .producers import (
    OutOfOrderSequenceError,
    ProducerError,
    ProducerFencedError,
    ProducerFields,
    ProducerTable,
    UnknownProducerIdError,
)
from .raft_storage import LmdbRaftStorage

__all__ = [
    "AppendTicket",
    "BatchKind",
    "CompactedError",
    "CorruptEntryError",
    "DataDirLockedError",
    "Durability",
    "Entry",
    "EntryType",
    "HardState",
    "LmdbRaftStorage",
    "LogClosedError",
    "MetaStore",
    "NodeStorage",
    "OffsetOutOfRangeError",
    "OutOfOrderSequenceError",
    "PartitionLog",
    "ProducerError",
    "ProducerFencedError",
    "ProducerFields",
    "ProducerTable",
    "RetentionPlan",
    "StorageConfig",
    "StorageError",
    "StorageFullError",
    "StoredBatch",
    "StoredRun",
    "UnavailableError",
    "UnknownProducerIdError",
    "decode_partition_snapshot",
    "decode_row",
    "encode_batch",
    "encode_control",
    "encode_partition_snapshot",
    "encode_row",
]
