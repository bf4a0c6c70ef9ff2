"""Sans-I/O Raft consensus core (no asyncio, grpc, lmdb, wall clock or global random).

Start at `RawNode` (rawnode.py): its module docstring states the `Ready`
contract. `Storage` (storage.py) is what a host must implement to keep a
group's log; `MemoryStorage` is the in-memory one used by tests.
"""

from .raft import Raft
from .rawnode import RawNode, Ready
from .storage import (
    CompactedError,
    MemoryStorage,
    Storage,
    StorageError,
    UnavailableError,
    bootstrap,
)
from .types import (
    NONE,
    ConfChange,
    ConfChangeRejected,
    ConfChangeResult,
    ConfChangeType,
    Config,
    ConfState,
    Entry,
    EntryType,
    HardState,
    Message,
    MessageType,
    NodeId,
    NotLeader,
    ProposalDropped,
    ProposeResult,
    Role,
    Snapshot,
    SnapshotMeta,
    SoftState,
)

__all__ = [
    "NONE",
    "CompactedError",
    "ConfChange",
    "ConfChangeRejected",
    "ConfChangeResult",
    "ConfChangeType",
    "ConfState",
    "Config",
    "Entry",
    "EntryType",
    "HardState",
    "MemoryStorage",
    "Message",
    "MessageType",
    "NodeId",
    "NotLeader",
    "ProposalDropped",
    "ProposeResult",
    "Raft",
    "RawNode",
    "Ready",
    "Role",
    "Snapshot",
    "SnapshotMeta",
    "SoftState",
    "Storage",
    "StorageError",
    "UnavailableError",
    "bootstrap",
]
