"""Queue mode served on one node: dispatch, acks, nacks, deadlines, dead letters, credit, refusals.

In-process on real LMDB (test_queue_harness.py) with a fake clock the test
moves: no test sleeps for a deadline or a backoff.
"""

from __future__ import annotations

import pathlib

import pytest

from tests.unit.server.test_queue_harness import Clock, QueueNode, queue_node, run
from weir.cluster.queue import encode_ack_id
from weir.server.consume_queue import ANSWERS_INFLIGHT_MAX
from weir.server.topics import ConfigPatch
from weir.v1 import broker_pb2, records_pb2

pytestmark = pytest.mark.timeout(60)


def values(count: int, prefix: str = "v") -> list[bytes]:
    return [f"{prefix}{i}".encode() for i in range(count)]


async def filled(n: QueueNode, count: int, partition: int = 0) -> None:
    await n.append(partition, values(count, f"p{partition}-"))


def test_records_go_to_competing_streams_without_duplication(tmp_path: pathlib.Path) -> None:
    async def body() -> None:
        async with queue_node(tmp_path, partitions=2) as n:
            await filled(n, 30, 0)
            await filled(n, 30, 1)
            a = n.subscribe(credit=broker_pb2.Credit(messages=25, bytes=1 << 20))
            b = n.subscribe(credit=broker_pb2.Credit(messages=25, bytes=1 << 20))
            await a.until_records(25)
            await b.until_records(25)
            await n.settle()
            got_a, got_b = a.values(), b.values()
            assert len(got_a) == len(got_b) == 25
            assert not set(got_a) & set(got_b)
            c = n.subscribe(credit=broker_pb2.Credit(messages=100, bytes=1 << 20))
            await c.until_records(10)
            await n.settle()
            everything = got_a + got_b + c.values()
            assert sorted(everything) == sorted(values(30, "p0-") + values(30, "p1-"))
            for d, _, _ in a.deliveries():
                assert d.delivery_attempt == 1
                assert d.ack_deadline_ms == n.clock.now_ms + 30_000

    run(body)


def test_an_ack_is_answered_once_durable_and_never_redelivered_even_after_a_restart(
    tmp_path: pathlib.Path,
) -> None:
    clock = Clock()

    async def first() -> None:
        async with queue_node(tmp_path, clock=clock) as n:
            await filled(n, 10)
            a = n.subscribe(credit=broker_pb2.Credit(messages=10, bytes=1 << 20))
            await a.until_records(10)
            ids = [d.ack_id for d, _, _ in a.deliveries()[:6]]
            result = await a.answer(a.request("ack", ids))
            assert not result.failures
            log = n.replicator.log(n.topics.get("t").group_id(0))
            # Answered after the entry is durable: the applied state has it.
            state = log.queue_state("g")
            assert state is not None and state.acked.low_watermark == 6
            # Acking again is harmless.
            assert not (await a.answer(a.request("ack", ids[:2]))).failures
            # The stream is cut without closing (the node stops under it).

    async def second() -> None:
        async with queue_node(tmp_path, clock=clock) as n:
            b = n.subscribe(credit=broker_pb2.Credit(messages=100, bytes=1 << 20))
            await b.until_records(4)
            n.tick(60_000)
            await n.settle()
            got = b.deliveries()
            assert sorted(rec.value for _, rec, _ in got) == sorted(values(10, "p0-")[6:])
            assert all(d.delivery_attempt == 2 for d, _, _ in got)

    run(first)
    run(second)


def test_nack_with_a_delay_and_with_the_backoff(tmp_path: pathlib.Path) -> None:
    async def body() -> None:
        async with queue_node(tmp_path) as n:
            await filled(n, 2)
            a = n.subscribe(credit=broker_pb2.Credit(messages=100, bytes=1 << 20))
            await a.until_records(2)
            (d0, _, _), (d1, _, _) = a.deliveries()
            assert not (await a.answer(a.request("nack", [d0.ack_id], delay_ms=5_000))).failures
            assert not (await a.answer(a.request("nack", [d1.ack_id], error="boom"))).failures
            # Backoff of attempt 1: 1000 ms +-20 %.
            n.tick(799)
            await n.settle()
            assert len(a.deliveries()) == 2
            n.tick(1201 - 799)
            await a.until_records(3)
            assert a.deliveries()[2][0].offset == 1
            assert a.deliveries()[2][0].delivery_attempt == 2
            n.tick(5_000 - 1201 - 1)
            await n.settle()
            assert len(a.deliveries()) == 3
            n.tick(1)
            await a.until_records(4)
            redelivered = a.deliveries()[3][0]
            assert (redelivered.offset, redelivered.delivery_attempt) == (0, 2)
            # Attempt 2 of offset 1: backoff 2000 ms +-20 %.
            again = a.deliveries()[2][0]
            await a.answer(a.request("nack", [again.ack_id]))
            n.tick(1599)
            await n.settle()
            assert len(a.deliveries()) == 4
            n.tick(2401 - 1599)
            await a.until_records(5)
            assert a.deliveries()[4][0].delivery_attempt == 3

    run(body)


def test_a_missed_deadline_redelivers(tmp_path: pathlib.Path) -> None:
    async def body() -> None:
        async with queue_node(tmp_path) as n:
            await filled(n, 1)
            a = n.subscribe(
                ack_deadline_ms=2_000, credit=broker_pb2.Credit(messages=1, bytes=1 << 20)
            )
            b = n.subscribe(credit=broker_pb2.Credit(messages=5, bytes=1 << 20))
            await a.until_records(1)
            n.tick(1_999)
            await n.settle()
            assert not b.deliveries()
            n.tick(1)  # expired at 2000; the backoff of attempt 1 is at most 1200 ms
            q = n.queues.get(n.topics.get("t"), 0, "g")
            assert q is not None
            await n.until(lambda: q.dispatch.status(0) == "waiting")
            assert q.dispatch.waiting[0].due_ms <= n.clock.now_ms + 1_200
            n.tick(1_200)
            await b.until_records(1)
            assert b.deliveries()[0][0].delivery_attempt == 2
            # The late ack of the first delivery still counts.
            late = a.deliveries()[0][0].ack_id
            assert not (await a.answer(a.request("ack", [late]))).failures

    run(body)


def test_a_closed_streams_records_are_redelivered_at_once(tmp_path: pathlib.Path) -> None:
    async def body() -> None:
        async with queue_node(tmp_path) as n:
            await filled(n, 5)
            a = n.subscribe(credit=broker_pb2.Credit(messages=5, bytes=1 << 20))
            await a.until_records(5)
            b = n.subscribe(credit=broker_pb2.Credit(messages=10, bytes=1 << 20))
            await n.settle()
            assert not b.deliveries()
            a.task.cancel()
            await b.until_records(5)
            assert sorted(b.values()) == sorted(values(5, "p0-"))
            assert all(d.delivery_attempt == 2 for d, _, _ in b.deliveries())

    run(body)


def test_after_max_deliveries_the_record_is_dead_lettered(tmp_path: pathlib.Path) -> None:
    async def body() -> None:
        async with queue_node(tmp_path) as n:
            await n.append(0, [b"poison"], key=b"k", headers={"h": b"1"})
            a = n.subscribe(credit=broker_pb2.Credit(messages=100, bytes=1 << 20))
            for attempt in range(1, 6):
                await a.until_records(attempt)
                d = a.deliveries()[-1][0]
                assert d.delivery_attempt == attempt
                await a.answer(a.request("nack", [d.ack_id], delay_ms=0, error=f"bad {attempt}"))
                n.tick(1)
            dlq = "t.dlq"
            await n.until(lambda: any(t.name == dlq for t in n.topics.all()))
            log = n.replicator.log(n.topics.get(dlq).group_id(0))
            await n.until(lambda: log.end_offset == 1)
            [stored] = log.read(0, 1 << 20)
            [record] = records_pb2.RecordBatch.FromString(stored.payload).records
            assert (record.key, record.value, record.headers["h"]) == (b"k", b"poison", b"1")
            assert record.headers["weir-dlq-topic"] == b"t"
            assert record.headers["weir-dlq-partition"] == b"0"
            assert record.headers["weir-dlq-offset"] == b"0"
            assert record.headers["weir-dlq-deliveries"] == b"5"
            assert record.headers["weir-dlq-error"] == b"bad 5"
            source = n.replicator.log(n.topics.get("t").group_id(0))
            await n.until(
                lambda: (s := source.queue_state("g")) is not None and s.dead_lettered_total == 1
            )
            n.tick(120_000)
            await n.settle()
            assert len(a.deliveries()) == 5

    run(body)


def test_delayed_records_are_not_delivered_before_due(tmp_path: pathlib.Path) -> None:
    async def body() -> None:
        async with queue_node(tmp_path) as n:
            due = n.clock.now_ms + 10_000
            await n.append(0, [b"later"], deliver_at_ms=due)
            await n.append(0, [b"now"])
            a = n.subscribe(credit=broker_pb2.Credit(messages=10, bytes=1 << 20))
            await a.until_records(1)
            n.tick(9_999)
            await n.settle()
            assert a.values() == [b"now"]
            n.tick(1)
            await a.until_records(2)
            assert a.values() == [b"now", b"later"]
            assert a.deliveries()[1][0].offset == 0

    run(body)


def test_credit_of_ten_messages_holds_exactly(tmp_path: pathlib.Path) -> None:
    async def body() -> None:
        async with queue_node(tmp_path) as n:
            await filled(n, 40)
            a = n.subscribe(credit=broker_pb2.Credit(messages=10, bytes=1 << 20))
            await a.until_records(10)
            ids = [d.ack_id for d, _, _ in a.deliveries()]
            await a.answer(a.request("ack", ids))
            await n.settle()
            assert len(a.deliveries()) == 10
            # Redeliveries wait without credit too.
            a.credit(10)
            await a.until_records(20)
            await a.answer(
                a.request("nack", [d.ack_id for d, _, _ in a.deliveries()[10:]], delay_ms=0)
            )
            n.tick(1)
            await n.settle()
            assert len(a.deliveries()) == 20
            a.credit(10)
            await a.until_records(30)
            await n.settle()
            assert len(a.deliveries()) == 30
            assert all(d.delivery_attempt == 2 for d, _, _ in a.deliveries()[20:])

    run(body)


def test_byte_credit_holds_a_record_until_paid(tmp_path: pathlib.Path) -> None:
    async def body() -> None:
        async with queue_node(tmp_path) as n:
            await n.append(0, [b"x" * 100, b"y" * 10])
            a = n.subscribe(credit=broker_pb2.Credit(messages=10, bytes=50))
            await a.context.until(
                lambda: any(r.WhichOneof("kind") == "notice" for r in a.context.responses)
            )
            assert not a.deliveries()
            a.credit(0, 60)
            await a.until_records(1)
            assert a.values()[0] == b"x" * 100

    run(body)


def test_byte_credit_bounds_a_hand_out_of_many_small_records_and_a_large_one(
    tmp_path: pathlib.Path,
) -> None:
    # Hand-out takes many buffered records per deliver() call when they fit
    # at the buffer's largest size; one over the credit is held, not sent.
    async def body() -> None:
        async with queue_node(tmp_path) as n:
            small = [b"s%02d" % i for i in range(20)]
            await n.append(0, [*small, b"L" * 500, b"t"])
            a = n.subscribe(credit=broker_pb2.Credit(messages=100, bytes=3 * 20 + 100))
            await a.until_records(20)
            await n.settle()
            assert a.values() == small
            a.credit(0, 500)
            await a.until_records(22)
            assert a.values()[20:] == [b"L" * 500, b"t"]
            offsets = [d.offset for d, _, _ in a.deliveries()]
            assert offsets == list(range(22))

    run(body)


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"group": ""}, "GROUP_REQUIRED"),
        ({"offsets": {0: 1}}, "INVALID_SUBSCRIBE"),
        (
            {"start": broker_pb2.StartPosition(kind=broker_pb2.START_KIND_OFFSET)},
            "INVALID_SUBSCRIBE",
        ),
        ({"ack_deadline_ms": 999}, "INVALID_SUBSCRIBE"),
        ({"ack_deadline_ms": 600_001}, "INVALID_SUBSCRIBE"),
        ({"member_id": "m"}, "INVALID_SUBSCRIBE"),
        ({"partitions": [3]}, "PARTITION_OUT_OF_RANGE"),
    ],
)
def test_bad_subscribes_are_refused(
    tmp_path: pathlib.Path, fields: dict[str, object], reason: str
) -> None:
    async def body() -> None:
        async with queue_node(tmp_path) as n:
            a = n.subscribe(**fields)
            assert await a.ended() == reason
            log = n.replicator.log(n.topics.get("t").group_id(0))
            assert log.queue_groups() == []

    run(body)


def test_bad_acks_are_answered_with_their_reason_and_change_nothing(tmp_path: pathlib.Path) -> None:
    async def body() -> None:
        async with queue_node(tmp_path) as n:
            await filled(n, 2)
            a = n.subscribe(credit=broker_pb2.Credit(messages=1, bytes=1 << 20))
            await a.until_records(1)
            d = a.deliveries()[0][0]
            q = n.queues.get(n.topics.get("t"), 0, "g")
            assert q is not None
            before = (q.dispatch.status(0), q.dispatch.status(1), q.dispatch.size())

            def failures(result: broker_pb2.AckResult) -> list[tuple[int, str]]:
                return [(f.index, f.error.reason) for f in result.failures]

            other = encode_ack_id("other", 0, 0, 1)
            never = encode_ack_id("g", 0, 1, 1)
            elsewhere = encode_ack_id("g", 7, 0, 1)
            result = await a.answer(a.request("ack", [b"junk", other, never, elsewhere]))
            assert failures(result) == [(i, "UNKNOWN_ACK_ID") for i in range(4)]
            result = await a.answer(a.request("nack", [d.ack_id], delay_ms=86_400_001))
            assert failures(result) == [(0, "INVALID_NACK")]
            result = await a.answer(a.request("nack", [d.ack_id], error="e" * 1025))
            assert failures(result) == [(0, "INVALID_NACK")]
            result = await a.answer(a.request("extend_deadline", [d.ack_id], extension_ms=999))
            assert failures(result) == [(0, "INVALID_EXTENSION")]
            result = await a.answer(a.request("extend_deadline", [never], extension_ms=5_000))
            assert failures(result) == [(0, "UNKNOWN_ACK_ID")]
            a.send(commit=broker_pb2.Commit(commit_id=9))
            a.send(seek=broker_pb2.Seek(seek_id=4, partition=0))
            await a.context.until(
                lambda: (
                    {"commit", "seek"} <= {str(r.WhichOneof("kind")) for r in a.context.responses}
                )
            )
            for r in a.context.responses:
                if r.WhichOneof("kind") in ("commit", "seek"):
                    assert getattr(r, str(r.WhichOneof("kind"))).error.reason == "NOT_IN_QUEUE_MODE"
            assert (q.dispatch.status(0), q.dispatch.status(1), q.dispatch.size()) == before
            # A good extension moves the deadline.
            result = await a.answer(a.request("extend_deadline", [d.ack_id], extension_ms=60_000))
            assert not result.failures
            assert q.dispatch.in_flight[0].deadline_ms == n.clock.now_ms + 60_000

    run(body)


@pytest.mark.parametrize(
    ("request_fields", "reason"),
    [
        ({"heartbeat": broker_pb2.Heartbeat()}, "NOT_IN_QUEUE_MODE"),
        ({"assignment_ack": broker_pb2.AssignmentAck(generation=1)}, "NOT_IN_QUEUE_MODE"),
        ({"ack": broker_pb2.Ack(ack_ids=[b"x"] * 10_001)}, "TOO_MANY_ACK_IDS"),
        ({"credit": broker_pb2.Credit(messages=-1)}, "NEGATIVE_CREDIT"),
    ],
)
def test_requests_that_end_the_stream(
    tmp_path: pathlib.Path, request_fields: dict[str, object], reason: str
) -> None:
    async def body() -> None:
        async with queue_node(tmp_path) as n:
            await filled(n, 1)
            a = n.subscribe(credit=broker_pb2.Credit(messages=1, bytes=1 << 20))
            await a.until_records(1)
            a.send(**request_fields)
            assert await a.ended() == reason
            # Its record goes back at once, to the next stream.
            b = n.subscribe(credit=broker_pb2.Credit(messages=1, bytes=1 << 20))
            await b.until_records(1)
            assert b.deliveries()[0][0].delivery_attempt == 2

    run(body)


def test_queue_groups_per_partition_are_bounded(tmp_path: pathlib.Path) -> None:
    async def body() -> None:
        async with queue_node(tmp_path) as n:
            log = n.replicator.log(n.topics.get("t").group_id(0))
            log.queue_groups_max = 2
            for group in ("g1", "g2"):
                c = n.subscribe(group=group, credit=broker_pb2.Credit(messages=1, bytes=100))
                await c.context.until(lambda c=c: len(c.context.responses) >= 1)  # type: ignore[misc]
            c = n.subscribe(group="g3")
            assert await c.ended() == "QUEUE_GROUPS_FULL"
            assert log.queue_groups() == ["g1", "g2"]

    run(body)


def test_unanswered_requests_per_stream_are_bounded(tmp_path: pathlib.Path) -> None:
    async def body() -> None:
        async with queue_node(tmp_path) as n:
            await filled(n, 1)
            a = n.subscribe(credit=broker_pb2.Credit(messages=1, bytes=1 << 20))
            await a.until_records(1)
            context = a.context
            context.write_gate.clear()  # the client stops reading
            requests = 40
            ids = [a.request("ack", [b"junk"]) for _ in range(requests)]
            # The Subscribe, ANSWERS_INFLIGHT_MAX requests, and one waiting for a slot.
            await n.until(lambda: context.reads == 1 + ANSWERS_INFLIGHT_MAX + 1)
            await n.settle()
            assert context.reads == 1 + ANSWERS_INFLIGHT_MAX + 1
            assert context.writes_waiting == 1
            context.write_gate.set()
            for request_id in ids:
                result = await a.answer(request_id)
                assert [f.error.reason for f in result.failures] == ["UNKNOWN_ACK_ID"]

    run(body)


def test_records_retention_deleted_are_written_off(tmp_path: pathlib.Path) -> None:
    async def body() -> None:
        async with queue_node(tmp_path) as n:
            for i in range(3):
                await n.append(0, [b"e%d-%d" % (i, j) for j in range(4)])
            log = n.replicator.log(n.topics.get("t").group_id(0))
            a = n.subscribe(credit=broker_pb2.Credit(messages=6, bytes=1 << 20))
            await a.until_records(6)
            # Offsets 0..5 are in flight; retention deletes the first entry (0..3).
            assert await log.truncate_prefix(log.size_bytes * 2 // 3, None) == 1
            assert log.start_offset == 4
            a.task.cancel()
            b = n.subscribe(credit=broker_pb2.Credit(messages=20, bytes=1 << 20))
            await b.until_records(8)
            await n.settle()
            got = sorted((d.offset, d.delivery_attempt) for d, _, _ in b.deliveries())
            assert got == [(4, 2), (5, 2), (6, 1), (7, 1), (8, 1), (9, 1), (10, 1), (11, 1)]
            await b.answer(b.request("ack", [d.ack_id for d, _, _ in b.deliveries()]))
            state = log.queue_state("g")
            assert state is not None and state.acked.low_watermark == 12
            assert not state.pending

    run(body)


def test_the_topics_queue_settings_apply(tmp_path: pathlib.Path) -> None:
    async def body() -> None:
        async with queue_node(tmp_path) as n:
            await n.topics.create(
                "s",
                2,
                0,
                ConfigPatch(
                    max_deliveries=2,
                    retry_backoff_ms_min=100,
                    retry_backoff_ms_max=150,
                    dead_letter_topic="graveyard",
                ),
            )
            await n.append(1, [b"x"], topic="s")
            a = n.subscribe(topic="s", credit=broker_pb2.Credit(messages=10, bytes=1 << 20))
            await a.until_records(1)
            await a.answer(a.request("nack", [a.deliveries()[0][0].ack_id]))
            n.tick(79)
            await n.settle()
            assert len(a.deliveries()) == 1
            n.tick(41)  # 100 ms +-20 %
            await a.until_records(2)
            await a.answer(a.request("nack", [a.deliveries()[1][0].ack_id], error="no"))
            await n.until(lambda: any(t.name == "graveyard" for t in n.topics.all()))
            graveyard = n.topics.get("graveyard")
            assert graveyard.partition_count == 2
            log = n.replicator.log(graveyard.group_id(1))
            await n.until(lambda: log.end_offset == 1)
            [stored] = log.read(0, 1 << 20)
            [record] = records_pb2.RecordBatch.FromString(stored.payload).records
            assert record.headers["weir-dlq-deliveries"] == b"2"

    run(body)


def test_ordered_keys_hand_out_one_record_of_a_key_at_a_time(tmp_path: pathlib.Path) -> None:
    async def body() -> None:
        async with queue_node(tmp_path) as n:
            await n.append(0, [b"a1", b"a2"], key=b"a")
            await n.append(0, [b"b1"], key=b"b")
            a = n.subscribe(ordered_keys=True, credit=broker_pb2.Credit(messages=10, bytes=1 << 20))
            await a.until_records(2)
            await n.settle()
            assert a.values() == [b"a1", b"b1"]
            await a.answer(a.request("ack", [a.deliveries()[0][0].ack_id]))
            await a.until_records(3)
            assert a.values()[2] == b"a2"

    run(body)
