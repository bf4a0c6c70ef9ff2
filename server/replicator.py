"""The seam between the broker and replication.

The broker appends record batches and reads partition logs only through a
`Replicator`. `LocalReplicator` writes to this node's storage (one copy:
durable here is all there is); `RaftReplicator` (cluster_replicator.py)
proposes the batch to the partition's Raft group on the leader. Both answer
an append with an `Appended`: the batch's `base_offset` and the futures the
produce path awaits per acks level. `log(group_id)` is the applied-only
partition log on any replica, so consumers read committed records only.
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any, Protocol

from weir.cluster.storage import NodeStorage, PartitionLog, ProducerFields
from weir.v1 import broker_pb2


class NotHostedError(Exception):
    """This node runs no replica of the group (not placed here, or not started yet).

    Retriable: the group may start here soon, and another node may host it.
    """

    def __init__(self, group_id: int) -> None:
        super().__init__(f"group {group_id} has no replica running on this node")
        self.group_id = group_id


@dataclasses.dataclass(frozen=True, slots=True)
class Appended:
    """One batch accepted by a replicator.

    `base_offset` is final once the batch commits. `leader_durable` resolves
    once the leader's own copy is durable (acks=LEADER, and acks=NONE, which
    answers only errors); `committed` once a majority holds it (acks=ALL).
    A single node has one future for both; they resolve to None (local) or
    to the base offset (Raft), which nobody reads. Either fails with a
    `StorageError` (local) or a `weir.cluster.host.HostError` (Raft); the
    produce path translates both with `weir.server.errors`.
    """

    base_offset: int
    leader_durable: asyncio.Future[Any]
    committed: asyncio.Future[Any]

    def acknowledged(self, acks: int) -> asyncio.Future[Any]:
        """The future a producer with this acks level waits for."""
        if acks == broker_pb2.ACKS_ALL or acks == broker_pb2.ACKS_UNSPECIFIED:
            return self.committed
        return self.leader_durable


class Replicator(Protocol):
    async def append(
        self,
        group_id: int,
        payload: bytes,
        record_count: int,
        max_timestamp_ms: int,
        producer: ProducerFields | None = None,
        *,
        delayed: bool = False,
    ) -> Appended:
        """Queue one batch on this node (which must lead the group).

        `delayed`: some record has a deliver_at_ms (the stored batch is
        flagged, and apply indexes its delays: docs/storage.md).

        Waits only for room (storage queue space, Raft's uncommitted limit);
        nothing awaits between assigning the offset and returning, so
        batches of one caller get offsets in call order.

        `producer`: an idempotent producer's batch. The partition's producer
        state decides first (the same code on one node and in a cluster,
        weir.cluster.storage.producers): a retry of a remembered batch gets
        the original `base_offset` (its futures resolve once that batch is
        durable or committed) and appends nothing; a refused batch raises a
        `weir.cluster.storage.ProducerError`.
        """
        ...

    def log(self, group_id: int) -> PartitionLog:
        """The partition's applied-only log; raises `NotHostedError` if no replica runs here."""
        ...

    def node_address(self, node_id: int) -> str:
        """A node's client address, "" when unknown (and always on a single node)."""
        ...


class LocalReplicator:
    """One copy on this node: committed means durable here (fsynced in sync mode)."""

    def __init__(self, storage: NodeStorage) -> None:
        self._storage = storage

    async def append(
        self,
        group_id: int,
        payload: bytes,
        record_count: int,
        max_timestamp_ms: int,
        producer: ProducerFields | None = None,
        *,
        delayed: bool = False,
    ) -> Appended:
        ticket = await self._storage.partition_log(group_id).append(
            payload, record_count, max_timestamp_ms, producer, delayed=delayed
        )
        return Appended(ticket.base_offset, ticket.durable, ticket.durable)

    def log(self, group_id: int) -> PartitionLog:
        return self._storage.partition_log(group_id)

    def node_address(self, node_id: int) -> str:
        return ""
