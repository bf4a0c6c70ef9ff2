"""`AdminService.QueueStats`: a queue group's ready, in-flight, delayed and dead-lettered counts.

Per (queue group, partition) the numbers come from the best state this
node can reach (docs/cli.md "Queues"):

- this node leads the partition: its live `PartitionQueue` if one is
  serving the group (exact in flight and waiting), else the applied state
  its replica holds;
- another node leads it: one unary `QueueStats` call per leader node, with
  gRPC metadata `weir-queue-stats-forwarded: 1` so that the leader answers
  only the partitions it leads and never forwards again;
- no leader is known, or the call failed: this node's replica's applied
  state, marked `from_leader=false` (what was last replicated). A
  partition this node holds no replica of is then left out.

The counting is bounded: O(pending state) per partition plus at most
`DELAY_ROWS_MAX` rows of the delayed-record index (then `approximate`).
Records from the group's cursor to the log end are counted by subtraction,
never read.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Iterable, Iterator
from typing import Any

import grpc

from weir.cluster.queue import AppliedQueueState, QueueDispatch
from weir.cluster.queue.ranges import AckedOffsets
from weir.cluster.storage import PartitionLog
from weir.cluster.storage.delays import DelayedRecord
from weir.server.naming import check_group_name
from weir.server.peer_calls import from_peer
from weir.server.queue_dispatch import QueueDispatcher
from weir.server.registry import TopicSource
from weir.server.replicator import NotHostedError
from weir.server.topics import Topic
from weir.v1 import admin_pb2, admin_pb2_grpc

log = logging.getLogger("weir.server.queue_stats")

FORWARDED_METADATA_KEY = "weir-queue-stats-forwarded"
FORWARDED_METADATA = ((FORWARDED_METADATA_KEY, "1"),)
# Delayed-record index rows read per partition and group in one answer.
DELAY_ROWS_MAX = 4_096
# Rows per index read (the storage caps a page too).
DELAY_PAGE_ROWS = 512
# A leader that does not answer within this is replaced by the local replica.
FORWARD_TIMEOUT_S = 5.0
# A due time past every real one: pages the rows not due yet.
_FAR_FUTURE_MS = 1 << 62


@dataclasses.dataclass(slots=True)
class Counts:
    """One group's numbers on one partition (admin.proto `PartitionQueueStats`)."""

    ready: int = 0
    in_flight: int = 0
    delayed: int = 0
    held: int = 0
    dead_lettering: int = 0
    dead_lettered: int = 0
    approximate: bool = False


def _acked_in(acked: AckedOffsets, first: int, end: int) -> int:
    """How many offsets of [first, end) are acked: O(ranges)."""
    if first >= end:
        return 0
    count = max(0, min(acked.low_watermark, end) - first)
    for lo, hi in acked.ranges():
        lo, hi = max(lo, first), min(hi, end)
        if lo < hi:
            count += hi - lo
    return count


def _delay_rows(log_: PartitionLog, now_ms: int) -> Iterator[tuple[bool, DelayedRecord]]:
    """(due, row) for the index's rows not due yet, then those due; unbounded: callers cap."""
    after: DelayedRecord | None = DelayedRecord(now_ms, _FAR_FUTURE_MS)
    while True:
        rows = log_.due_delayed(_FAR_FUTURE_MS, after, DELAY_PAGE_ROWS)
        yield from ((False, row) for row in rows)
        if len(rows) < DELAY_PAGE_ROWS:
            break
        after = rows[-1]
    after = None
    while True:
        rows = log_.due_delayed(now_ms, after, DELAY_PAGE_ROWS)
        yield from ((True, row) for row in rows)
        if len(rows) < DELAY_PAGE_ROWS:
            break
        after = rows[-1]


def _count(
    log_: PartitionLog,
    now_ms: int,
    cursor: int,
    acked: AckedOffsets,
    pending: Iterable[int],
    known: Any,
    counts: Counts,
) -> None:
    """Adds the never-delivered records to `counts.ready` and `counts.delayed`.

    From the cursor to the log end every record is ready unless the state
    knows it (acked, pending) or its `deliver_at_ms` is ahead. Below the
    cursor, a record the dispatch passed over (delayed) and that is due now
    is ready too. `known(offset)` says whether the state knows a record.
    """
    end = log_.end_offset
    first = max(cursor, log_.start_offset)
    above = sum(1 for offset in pending if first <= offset < end)
    ready = max(0, end - first) - above - _acked_in(acked, first, end)
    if log_.delayed_count():
        read = 0
        for due, row in _delay_rows(log_, now_ms):
            if read >= DELAY_ROWS_MAX:
                counts.approximate = True
                break
            read += 1
            offset = row.offset
            if offset >= end or offset < acked.low_watermark or known(offset):
                continue
            if not due:
                counts.delayed += 1
                if offset >= first:
                    ready -= 1
            elif offset < first:
                ready += 1  # passed over while delayed, due now
    counts.ready += max(0, ready)


def live_counts(
    dispatch: QueueDispatch, log_: PartitionLog, dead_lettered: int, now_ms: int
) -> Counts:
    """From the leader's live dispatch state: exact in flight and waiting."""
    counts = Counts(
        in_flight=len(dispatch.in_flight),
        held=dispatch.held_count,
        dead_lettering=len(dispatch.dead_lettering),
        dead_lettered=dead_lettered,
    )
    for waiting in dispatch.waiting.values():
        if waiting.due_ms <= now_ms:
            counts.ready += 1
        else:
            counts.delayed += 1
    pending = [*dispatch.in_flight, *dispatch.waiting, *dispatch.dead_lettering]

    def known(offset: int) -> bool:
        return dispatch.status(offset) not in ("unscanned", "passed_over")

    _count(log_, now_ms, dispatch.cursor, dispatch.acked, pending, known, counts)
    return counts


def applied_counts(
    applied: AppliedQueueState, log_: PartitionLog, max_deliveries: int, now_ms: int
) -> Counts:
    """From a replica's applied state: what was last replicated.

    In flight is what was recorded delivered and not settled since; a
    record nacked on its last delivery is counted as being dead-lettered.
    """
    counts = Counts(dead_lettered=applied.dead_lettered_total)
    for record in applied.pending.values():
        if record.due_ms is None:
            counts.in_flight += 1
        elif max_deliveries > 0 and record.attempt >= max_deliveries:
            counts.dead_lettering += 1
        elif record.due_ms <= now_ms:
            counts.ready += 1
        else:
            counts.delayed += 1

    def known(offset: int) -> bool:
        return offset in applied.acked or offset in applied.pending

    _count(log_, now_ms, applied.cursor, applied.acked, applied.pending, known, counts)
    return counts


def _row(group: str, partition: int, counts: Counts, node_id: int, from_leader: bool) -> Any:
    return admin_pb2.PartitionQueueStats(
        group=group,
        partition=partition,
        ready=counts.ready,
        in_flight=counts.in_flight,
        delayed=counts.delayed,
        dead_lettered=counts.dead_lettered,
        held=counts.held,
        dead_lettering=counts.dead_lettering,
        node_id=node_id,
        from_leader=from_leader,
        approximate=counts.approximate,
    )


def is_forwarded(context: Any) -> bool:
    """Whether this QueueStats request was forwarded by another node (answered from here)."""
    return from_peer(context, FORWARDED_METADATA_KEY)


class QueueStats:
    """Answers `QueueStats` for one node (see the module docstring)."""

    def __init__(
        self,
        topics: TopicSource,
        dispatcher: QueueDispatcher,
        node_id: int,
        message_bytes_max: int = 4 << 20,
    ) -> None:
        self._topics = topics
        self._dispatcher = dispatcher
        self._node_id = node_id
        self._message_bytes_max = message_bytes_max

    async def answer(
        self, request: admin_pb2.QueueStatsRequest, forwarded: bool = False
    ) -> admin_pb2.QueueStatsResponse:
        if request.group:
            check_group_name(request.group)
        topic = self._topics.get(request.topic)
        host = self._dispatcher.host
        rows: dict[int, list[Any]] = {}
        remote: dict[int, list[int]] = {}  # leader node -> partitions
        for partition, group_id in enumerate(topic.group_ids):
            leads, leader_id = host.leader(group_id)
            if leads:
                rows[partition] = self._local(topic, partition, request.group, True)
            elif forwarded:
                continue  # the asking node covers what this node does not lead
            elif leader_id and host.node_address(leader_id):
                remote.setdefault(leader_id, []).append(partition)
            else:
                rows[partition] = self._local(topic, partition, request.group, False)
        answers = await asyncio.gather(
            *(self._forward(host.node_address(node), request) for node in remote)
        )
        for (_, partitions), answer in zip(remote.items(), answers, strict=True):
            for partition in partitions:
                if answer is None:
                    rows[partition] = self._local(topic, partition, request.group, False)
                else:
                    rows[partition] = [r for r in answer.partitions if r.partition == partition]
        return response(row for p in sorted(rows) for row in rows[p])

    def _local(self, topic: Topic, partition: int, group: str, leads: bool) -> list[Any]:
        try:
            log_ = self._dispatcher.host.log(topic.group_ids[partition])
        except NotHostedError:
            return []
        now_ms = self._dispatcher.clock_ms()
        out = []
        for name in [group] if group else log_.queue_groups():
            applied = log_.queue_state(name)
            if applied is None:
                continue
            queue = self._dispatcher.get(topic, partition, name) if leads else None
            if queue is not None and queue.failure is None:
                counts = live_counts(queue.dispatch, log_, applied.dead_lettered_total, now_ms)
            else:
                counts = applied_counts(applied, log_, topic.config.max_deliveries, now_ms)
            out.append(_row(name, partition, counts, self._node_id, leads))
        return out

    async def _forward(
        self, address: str, request: admin_pb2.QueueStatsRequest
    ) -> admin_pb2.QueueStatsResponse | None:
        """The leader's answer for the partitions it leads; None if it did not answer."""
        options = [("grpc.max_receive_message_length", self._message_bytes_max)]
        try:
            async with grpc.aio.insecure_channel(address, options=options) as channel:
                stub = admin_pb2_grpc.AdminServiceStub(channel)  # type: ignore[no-untyped-call]
                answer: admin_pb2.QueueStatsResponse = await stub.QueueStats(
                    request, metadata=FORWARDED_METADATA, timeout=FORWARD_TIMEOUT_S
                )
                return answer
        except grpc.aio.AioRpcError as error:
            log.info("queue stats from %s failed, answering from this replica: %s", address, error)
            return None


def response(rows: Iterable[Any]) -> admin_pb2.QueueStatsResponse:
    """Rows by group then partition, and each group's totals."""
    ordered = sorted(rows, key=lambda r: (r.group, r.partition))
    totals: dict[str, Any] = {}
    for r in ordered:
        t = totals.setdefault(r.group, admin_pb2.QueueGroupTotals(group=r.group))
        t.ready += r.ready
        t.in_flight += r.in_flight
        t.delayed += r.delayed
        t.dead_lettered += r.dead_lettered
    return admin_pb2.QueueStatsResponse(partitions=ordered, totals=list(totals.values()))


__all__ = [
    "FORWARDED_METADATA",
    "Counts",
    "QueueStats",
    "applied_counts",
    "is_forwarded",
    "live_counts",
    "response",
]
