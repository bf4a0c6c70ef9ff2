"""`QueueStats` on one node: the counts after deliveries, acks, nacks, deliver_at and dead letters.

In-process on real LMDB (test_queue_harness.py) with a fake clock the test
moves; each number is checked against what the test did, from the leader's
live state and from the applied state a replica would answer with.
"""

from __future__ import annotations

import pathlib
import types

import grpc
import pytest

from tests.unit.server.test_queue_harness import QueueNode, queue_node, run
from weir.server import queue_stats
from weir.server.errors import BrokerError
from weir.server.queue_stats import QueueStats, applied_counts
from weir.v1 import admin_pb2, broker_pb2

pytestmark = pytest.mark.timeout(60)

CREDIT_5 = broker_pb2.Credit(messages=5, bytes=1 << 20)


def counts(row: admin_pb2.PartitionQueueStats) -> tuple[int, int, int, int]:
    return (row.ready, row.in_flight, row.delayed, row.dead_lettered)


async def stats(n: QueueNode, group: str = "") -> admin_pb2.QueueStatsResponse:
    return await QueueStats(n.topics, n.queues, 1).answer(
        admin_pb2.QueueStatsRequest(topic="t", group=group)
    )


def applied(n: QueueNode, group: str = "g") -> tuple[int, int, int, int]:
    log = n.replicator.log(n.topics.get("t").group_id(0))
    state = log.queue_state(group)
    assert state is not None
    c = applied_counts(state, log, n.topics.get("t").config.max_deliveries, n.clock.now_ms)
    return (c.ready, c.in_flight, c.delayed, c.dead_lettered)


async def ten_records_one_delayed(n: QueueNode) -> None:
    """Offsets 0-5 and 7-9 due now; offset 6 due in 10 s (deliver_at_ms)."""
    await n.append(0, [b"r0", b"r1", b"r2", b"r3", b"r4", b"r5"])
    await n.append(0, [b"later"], deliver_at_ms=n.clock.now_ms + 10_000)
    await n.append(0, [b"r7", b"r8", b"r9"])


def test_delivered_acked_nacked_with_a_delay_and_delayed_by_deliver_at(
    tmp_path: pathlib.Path,
) -> None:
    async def body() -> None:
        async with queue_node(tmp_path) as n:
            await ten_records_one_delayed(n)
            a = n.subscribe(credit=CREDIT_5)
            await a.until_records(5)  # offsets 0-4
            d = [x[0] for x in a.deliveries()]
            assert [x.offset for x in d] == [0, 1, 2, 3, 4]
            assert not (await a.answer(a.request("ack", [d[0].ack_id, d[1].ack_id]))).failures
            nack = a.request("nack", [d[2].ack_id], delay_ms=5_000)
            assert not (await a.answer(nack)).failures
            await n.settle()

            answer = await stats(n)
            [row] = answer.partitions
            assert (row.group, row.partition, row.node_id) == ("g", 0, 1)
            assert row.from_leader and not row.approximate
            # Ready: 5, 7, 8, 9. In flight: 3, 4. Delayed: 2 (nack), 6 (deliver_at).
            assert counts(row) == (4, 2, 2, 0)
            [total] = answer.totals
            assert (total.group, total.ready, total.in_flight, total.delayed) == ("g", 4, 2, 2)
            # A replica's applied state says the same once the turn is written.
            assert applied(n) == (4, 2, 2, 0)

            n.tick(5_000)  # the nack's delay passed: offset 2 is ready again
            [row] = (await stats(n)).partitions
            assert counts(row) == (5, 2, 1, 0)
            n.tick(5_000)  # offset 6's deliver_at passed
            [row] = (await stats(n)).partitions
            assert counts(row) == (6, 2, 0, 0)
            assert applied(n) == (6, 2, 0, 0)

    run(body)


def test_a_delayed_record_passed_over_below_the_cursor_counts_once_due(
    tmp_path: pathlib.Path,
) -> None:
    async def body() -> None:
        async with queue_node(tmp_path) as n:
            await ten_records_one_delayed(n)
            a = n.subscribe(credit=broker_pb2.Credit(messages=9, bytes=1 << 20))
            await a.until_records(9)  # every record but offset 6
            await n.settle()
            [row] = (await stats(n)).partitions
            assert counts(row) == (0, 9, 1, 0)
            n.clock.advance(10_000)  # due, not handed out yet (no credit left)
            [row] = (await stats(n)).partitions
            assert counts(row) == (1, 9, 0, 0)

    run(body)


def test_dead_lettered_records_are_counted(tmp_path: pathlib.Path) -> None:
    async def body() -> None:
        async with queue_node(tmp_path) as n:
            await n.append(0, [b"poison", b"fine"])
            a = n.subscribe(credit=broker_pb2.Credit(messages=100, bytes=1 << 20))
            for attempt in range(1, 6):
                await a.until_records(attempt + 1)
                d = next(x[0] for x in reversed(a.deliveries()) if x[0].offset == 0)
                assert d.delivery_attempt == attempt
                await a.answer(a.request("nack", [d.ack_id], delay_ms=0, error="bad"))
                n.tick(1)
            source = n.replicator.log(n.topics.get("t").group_id(0))
            await n.until(
                lambda: (s := source.queue_state("g")) is not None and s.dead_lettered_total == 1
            )
            [row] = (await stats(n, "g")).partitions
            # Offset 1 is still in flight; offset 0 is dead-lettered.
            assert counts(row) == (0, 1, 0, 1)
            assert row.dead_lettering == 0
            assert applied(n) == (0, 1, 0, 1)

    run(body)


def test_groups_unknown_topics_and_bad_names(tmp_path: pathlib.Path) -> None:
    async def body() -> None:
        async with queue_node(tmp_path, partitions=2) as n:
            await n.append(0, [b"a", b"b"])
            await n.append(1, [b"c"])
            a = n.subscribe(group="g1", credit=broker_pb2.Credit(messages=1, bytes=1 << 20))
            await a.until_records(1)
            b = n.subscribe(group="g2", credit=broker_pb2.Credit(messages=3, bytes=1 << 20))
            await b.until_records(3)
            await n.settle()
            answer = await stats(n)
            rows = [(r.group, r.partition, r.ready + r.in_flight) for r in answer.partitions]
            assert rows == [("g1", 0, 2), ("g1", 1, 1), ("g2", 0, 2), ("g2", 1, 1)]
            assert [(t.group, t.in_flight) for t in answer.totals] == [("g1", 1), ("g2", 3)]
            only = await stats(n, "g2")
            assert {r.group for r in only.partitions} == {"g2"}
            # A group without queue state on the topic: no rows, not an error.
            nothing = await stats(n, "nobody")
            assert not nothing.partitions and not nothing.totals
            service = QueueStats(n.topics, n.queues, 1)
            with pytest.raises(BrokerError) as caught:
                await service.answer(admin_pb2.QueueStatsRequest(topic="missing"))
            assert (caught.value.code, caught.value.reason) == (
                grpc.StatusCode.NOT_FOUND,
                "TOPIC_NOT_FOUND",
            )
            with pytest.raises(BrokerError) as caught:
                await service.answer(admin_pb2.QueueStatsRequest(topic="t", group="bad\x00"))
            assert (caught.value.code, caught.value.reason) == (
                grpc.StatusCode.INVALID_ARGUMENT,
                "INVALID_GROUP_NAME",
            )

    run(body)


def test_the_delay_index_read_is_bounded(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(queue_stats, "DELAY_ROWS_MAX", 2)
    monkeypatch.setattr(queue_stats, "DELAY_PAGE_ROWS", 1)

    async def body() -> None:
        async with queue_node(tmp_path) as n:
            a = n.subscribe(credit=broker_pb2.Credit(messages=1, bytes=1 << 20))
            await n.settle()
            for i in range(4):
                await n.append(0, [b"later"], deliver_at_ms=n.clock.now_ms + 1_000 + i)
            await n.settle()
            [row] = (await stats(n)).partitions
            # The stream's scan passed the four records over (not due). Two
            # of the four index rows are read: delayed is a lower bound, flagged.
            assert row.approximate
            assert (row.ready, row.in_flight, row.delayed) == (0, 0, 2)
            assert not a.deliveries()

    run(body)


class ElsewhereHost:
    """The partition is led by node 2, whose address answers nothing."""

    clustered = True

    def __init__(self, n: QueueNode) -> None:
        self._inner = n.queues.host

    def leader(self, group_id: int) -> tuple[bool, int]:
        return False, 2

    def log(self, group_id: int) -> object:
        return self._inner.log(group_id)

    def node_address(self, node_id: int) -> str:
        return "127.0.0.1:1"


def test_an_unreachable_leader_is_replaced_by_the_replicas_applied_state(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(queue_stats, "FORWARD_TIMEOUT_S", 0.5)

    async def body() -> None:
        async with queue_node(tmp_path) as n:
            await ten_records_one_delayed(n)
            a = n.subscribe(credit=CREDIT_5)
            await a.until_records(5)
            await n.settle()
            dispatcher = types.SimpleNamespace(
                host=ElsewhereHost(n), clock_ms=n.clock, get=n.queues.get
            )
            service = QueueStats(n.topics, dispatcher, 3)  # type: ignore[arg-type]
            request = admin_pb2.QueueStatsRequest(topic="t")
            [row] = (await service.answer(request)).partitions
            assert (row.node_id, row.from_leader) == (3, False)
            # Recorded as delivered: 0-4 in flight; 5, 7, 8, 9 ready; 6 delayed.
            assert counts(row) == (4, 5, 1, 0)
            # Asked by another node: only what this node leads (nothing here).
            assert not (await service.answer(request, forwarded=True)).partitions

    run(body)
