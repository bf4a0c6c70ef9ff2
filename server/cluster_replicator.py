"""`RaftReplicator`: the produce and consume paths' seam onto the multi-Raft host.

An append proposes the batch to the partition's Raft group on this node,
which must lead it; the answer's futures are the host ticket's
(`leader_durable` for acks=LEADER, `committed` for acks=ALL). Reads go to
the group's applied-only partition log on whatever replica runs here, so a
consumer on a follower sees exactly what that follower applied, never an
uncommitted record (DESIGN §4 "Committed-only reads").

Errors stay the host's typed ones (`NotLeaderError`, `ProposalDroppedError`,
`NotWrittenError`, `OutcomeUnknownError`, `GroupNotFoundError`,
`HostStoppedError`): only the produce path knows the topic and partition
an answer must name, so it translates them with
`weir.server.errors.replication_error`. One exception is handled here: a
leader whose group holds too much uncommitted data refuses proposals, and
that is backpressure, not failure, so an append waits (bounded) for the
group to apply something and tries again, as a single node's append waits
for room in the storage writer's queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

from weir.cluster.host import GroupNotFoundError, ProposalDroppedError, RaftHost
from weir.cluster.storage import PartitionLog, ProducerFields
from weir.server.replicator import Appended, NotHostedError

# The Raft core's reason for a proposal refused by its uncommitted limits
# (cluster/raft/raft.py, `Raft.propose`); the host passes it on unchanged.
UNCOMMITTED_FULL_REASON = "too many uncommitted proposals"
# How long an append waits for room under the uncommitted limits before it
# answers PROPOSAL_DROPPED. Below the SDK's request timeout, so the producer
# hears a retriable answer rather than nothing; long enough to cover a
# follower's fsync stall.
ROOM_WAIT_MS_MAX = 5_000
# A wait for room re-checks at least this often: room also comes back when
# the group's leadership or membership changes, which the log does not signal.
ROOM_POLL_MS = 50


class RaftReplicator:
    def __init__(
        self,
        host: RaftHost,
        node_address: Callable[[int], str | None],
        *,
        room_wait_ms_max: int = ROOM_WAIT_MS_MAX,
    ) -> None:
        self._host = host
        self._node_address = node_address
        self._room_wait_ms_max = room_wait_ms_max

    @property
    def node_id(self) -> int:
        return self._host.node_id

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
        deadline: float | None = None  # read the clock only when there is no room
        while True:
            try:
                ticket = self._host.append_batch(
                    group_id, payload, record_count, max_timestamp_ms, producer, delayed=delayed
                )
            except ProposalDroppedError as exc:
                if deadline is None:
                    deadline = time.monotonic() + self._room_wait_ms_max / 1000
                remaining_s = deadline - time.monotonic()
                if exc.reason != UNCOMMITTED_FULL_REASON or remaining_s <= 0:
                    raise
                await self._wait_for_apply(group_id, remaining_s)
                continue
            return Appended(ticket.base_offset, ticket.leader_durable, ticket.committed)

    async def _wait_for_apply(self, group_id: int, timeout_s: float) -> None:
        """Returns when the group applies more (commits shrink the uncommitted set) or soon."""
        log = self._host.partition_log(group_id)
        woken = asyncio.get_running_loop().create_future()

        def wake() -> None:
            if not woken.done():
                woken.set_result(None)

        log.add_listener(wake)
        try:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(timeout_s, ROOM_POLL_MS / 1000)):
                    await woken
        finally:
            log.remove_listener(wake)

    def log(self, group_id: int) -> PartitionLog:
        try:
            return self._host.partition_log(group_id)
        except GroupNotFoundError:
            raise NotHostedError(group_id) from None

    def node_address(self, node_id: int) -> str:
        if not node_id:
            return ""
        return self._node_address(node_id) or ""

    def leader(self, group_id: int) -> int:
        """The group's leader as this node knows it (0: none known or not running here)."""
        try:
            return self._host.leader(group_id)
        except GroupNotFoundError:
            return 0
