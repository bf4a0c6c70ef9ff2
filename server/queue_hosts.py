"""Where queue dispatch writes its control entries: a single node's storage or the Raft host.

The dispatcher (queue_dispatch.py) needs four things of the node: whether
it leads a partition (and who does), the partition's log, a way to write a
QUEUE_CONTROL payload and know it is durable (single node) or committed
(cluster), and word of leader changes. `LocalQueueHost` and
`RaftQueueHost` give them; errors stay the storage's or the host's typed
ones, which the dispatcher translates (`write_failure`).

`write(..., settle=True)` also waits until the partition's queue table has
applied the entry, so that `PartitionLog.queue_state` includes it. On a
single node the append applies at once. In a cluster the ticket's
`committed` may resolve just before the leader applies the entry (same
driver turn), so the wait yields to the loop until `applied_index`
reaches the entry; it is used only when a dispatch state is built from the
applied state (first use, leader change, records below the log start).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Protocol

from weir.cluster.host import GroupNotFoundError, HostError, OutcomeUnknownError, RaftHost
from weir.cluster.storage import NodeStorage, PartitionLog, StorageError
from weir.server.errors import BrokerError, replication_error, storage_error
from weir.server.replicator import NotHostedError

# How long a settle waits for the leader's apply after the commit, polling.
SETTLE_POLL_S = 0.002
SETTLE_POLLS_MAX = 2_500  # 5 s

LeaderCallback = Callable[[int, int], None]


class QueueHost(Protocol):
    clustered: bool

    def leader(self, group_id: int) -> tuple[bool, int]:
        """(this node leads the group, the leader's node id: 0 when unknown or single node)."""
        ...

    def log(self, group_id: int) -> PartitionLog:
        """The partition's log here; raises `NotHostedError`."""
        ...

    async def write(self, group_id: int, payload: bytes, *, settle: bool = False) -> None:
        """Durable (single node) or committed (cluster); raises the storage's or host's error."""
        ...

    def node_address(self, node_id: int) -> str: ...

    def on_leader_change(self, callback: LeaderCallback) -> Callable[[], None]: ...


def write_failure(exc: BaseException, topic: str, partition: int, host: QueueHost) -> BrokerError:
    """A failed control write as the status a stream or an ack answer carries."""
    if isinstance(exc, BrokerError):
        return exc
    if isinstance(exc, StorageError):
        return storage_error(exc, "writing queue state")
    if isinstance(exc, HostError):
        return replication_error(exc, topic, partition, host.node_address)
    raise exc


class LocalQueueHost:
    """A single node leads every partition; an append applies and is durable together."""

    clustered = False

    def __init__(self, storage: NodeStorage) -> None:
        self._storage = storage

    def leader(self, group_id: int) -> tuple[bool, int]:
        return True, 0

    def log(self, group_id: int) -> PartitionLog:
        return self._storage.partition_log(group_id)

    async def write(self, group_id: int, payload: bytes, *, settle: bool = False) -> None:
        ticket = await self._storage.partition_log(group_id).append_queue_control(payload)
        await ticket.durable

    def node_address(self, node_id: int) -> str:
        return ""

    def on_leader_change(self, callback: LeaderCallback) -> Callable[[], None]:
        return lambda: None


class RaftQueueHost:
    """Partitions led here propose their control entries to their Raft group."""

    clustered = True

    def __init__(self, host: RaftHost, node_address: Callable[[int], str]) -> None:
        self._host = host
        self._node_address = node_address

    def leader(self, group_id: int) -> tuple[bool, int]:
        try:
            return self._host.is_leader(group_id), self._host.leader(group_id)
        except GroupNotFoundError:
            return False, 0

    def log(self, group_id: int) -> PartitionLog:
        try:
            return self._host.partition_log(group_id)
        except GroupNotFoundError:
            raise NotHostedError(group_id) from None

    async def write(self, group_id: int, payload: bytes, *, settle: bool = False) -> None:
        ticket = self._host.propose_queue_control(group_id, payload)
        await ticket.committed
        if not settle:
            return
        # The apply raises no event a caller can await (it takes no offsets,
        # so the log's listeners do not run): poll, bounded.
        for _ in range(SETTLE_POLLS_MAX):
            if self._host.applied_index(group_id) >= ticket.index:
                return
            await asyncio.sleep(SETTLE_POLL_S)
        raise OutcomeUnknownError(group_id, "the leader did not apply its queue entry in time")

    def node_address(self, node_id: int) -> str:
        return self._node_address(node_id) if node_id else ""

    def on_leader_change(self, callback: LeaderCallback) -> Callable[[], None]:
        return self._host.add_leader_listener(callback)


__all__ = ["LocalQueueHost", "QueueHost", "RaftQueueHost", "write_failure"]
