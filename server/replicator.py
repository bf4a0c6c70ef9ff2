"""The seam between the broker and replication.

The broker appends record batches and reads partition logs only through a
`Replicator`. Today `LocalReplicator` writes to this node's storage; the
cluster issue adds a Raft-backed replicator that proposes the batch to the
partition's Raft group and resolves the ticket when the entry commits on a
majority. The produce and consume paths, the SDK and the storage layout do
not change when that lands.
"""

from __future__ import annotations

from typing import Protocol

from weir.cluster.storage import AppendTicket, NodeStorage, PartitionLog


class Replicator(Protocol):
    async def append(
        self, group_id: int, payload: bytes, record_count: int, max_timestamp_ms: int
    ) -> AppendTicket:
        """Queue one batch; the ticket's offset is final, its future says when it is committed."""
        ...

    def log(self, group_id: int) -> PartitionLog:
        """The partition's log for reading committed records."""
        ...


class LocalReplicator:
    """One copy on this node: committed means durable here (fsynced in sync mode)."""

    def __init__(self, storage: NodeStorage) -> None:
        self._storage = storage

    async def append(
        self, group_id: int, payload: bytes, record_count: int, max_timestamp_ms: int
    ) -> AppendTicket:
        return await self._storage.partition_log(group_id).append(
            payload, record_count, max_timestamp_ms
        )

    def log(self, group_id: int) -> PartitionLog:
        return self._storage.partition_log(group_id)
