"""Seek on the consume path, in-process on real storage (the harness of test_consume_costs).

- Each position kind moves the partition; the `SeekResult` comes before any
  record from the new position, also from inside a stored batch whose
  cursor the stream keeps.
- Refusals (partition not delivered now, offset out of range, no or an
  unknown kind, a negative timestamp) come back in the `SeekResult`, change
  nothing, and the stream goes on.
- Seeks waiting for an answer are bounded.
"""

from __future__ import annotations

import pathlib

import grpc
import pytest

from tests.unit.server.fake_membership import FakeMembership
from tests.unit.server.test_consume_costs import T0_MS, Node, run
from tests.unit.server.test_consume_credit import settle
from tests.unit.server.test_consume_stream_mode import (
    Stream,
    fill,
    member_node,
    member_subscribe,
    value,
    with_membership,
)
from weir.server.consume_seek import SEEKS_INFLIGHT_MAX
from weir.v1 import broker_pb2

pytestmark = pytest.mark.timeout(120)

EARLIEST = broker_pb2.START_KIND_EARLIEST
LATEST = broker_pb2.START_KIND_LATEST
OFFSET = broker_pb2.START_KIND_OFFSET
TIMESTAMP = broker_pb2.START_KIND_TIMESTAMP


def plain(n: Node, **fields: object) -> Stream:
    """A group-less subscription (no stream mode) from the earliest offsets."""
    fields.setdefault("group", "")
    return Stream(n, FakeMembership(), member_subscribe(mode=0, **fields))


def seek(
    stream: Stream, seek_id: int, partition: int, kind: int, offset: int = 0, timestamp_ms: int = 0
) -> None:
    position = broker_pb2.StartPosition(kind=kind, offset=offset, timestamp_ms=timestamp_ms)  # type: ignore[arg-type]
    stream.send(seek=broker_pb2.Seek(seek_id=seek_id, partition=partition, position=position))


def results(stream: Stream) -> list[broker_pb2.SeekResult]:
    return [r.seek for r in stream.context.responses if r.WhichOneof("kind") == "seek"]


async def result_of(stream: Stream, seek_id: int) -> broker_pb2.SeekResult:
    await stream.context.until(lambda: any(r.seek_id == seek_id for r in results(stream)))
    return next(r for r in results(stream) if r.seek_id == seek_id)


def after_result(stream: Stream, seek_id: int, partition: int) -> list[bytes]:
    """The values of `partition` written after the SeekResult of `seek_id`."""
    responses = stream.context.responses
    at = next(
        i
        for i, r in enumerate(responses)
        if r.WhichOneof("kind") == "seek" and r.seek.seek_id == seek_id
    )
    return [
        record.value
        for r in responses[at + 1 :]
        if r.WhichOneof("kind") == "batch" and r.batch.partition == partition
        for record in r.batch.records
    ]


def credit(stream: Stream, messages: int) -> None:
    stream.send(credit=broker_pb2.Credit(messages=messages, bytes=1 << 20))


@pytest.mark.parametrize(
    ("kind", "offset", "timestamp_ms", "target"),
    [
        (OFFSET, 5, 0, 5),
        (OFFSET, 2, 0, 2),
        (OFFSET, 9, 0, 9),
        (EARLIEST, 0, 0, 2),
        (TIMESTAMP, 0, T0_MS + 1000, 6),
        (TIMESTAMP, 0, 0, 2),
    ],
    ids=[
        "offset",
        "offset at the log start",
        "offset last",
        "earliest",
        "timestamp",
        "timestamp 0",
    ],
)
def test_a_seek_answers_before_the_records_from_its_position(
    tmp_path: pathlib.Path, kind: int, offset: int, timestamp_ms: int, target: int
) -> None:
    async def body() -> None:
        async with member_node(tmp_path, partitions=1) as n:
            log = n.replicator.log(n.topics.get("t").group_id(0))
            await fill(n, 0, 2, timestamp_ms=T0_MS - 1000)
            first_bytes = log.size_bytes
            await fill(n, 0, 4, timestamp_ms=T0_MS)
            await fill(n, 0, 4, timestamp_ms=T0_MS + 1000)
            # Retention takes the first entry: the log starts at 2.
            assert await log.truncate_prefix(log.size_bytes - first_bytes, None) == 1
            assert log.start_offset == 2
            stream = plain(n, credit=broker_pb2.Credit(messages=8, bytes=1 << 20))
            await stream.context.until(lambda: len(stream.records_of(0)) == 8)
            # No credit left: the answer is still written (not charged).
            seek(stream, 1, 0, kind, offset, timestamp_ms)
            result = await result_of(stream, 1)
            assert (result.partition, result.offset, result.HasField("error")) == (0, target, False)
            credit(stream, 100)
            await stream.context.until(lambda: len(stream.records_of(0)) == 8 + 10 - target)
            assert after_result(stream, 1, 0) == [value(0, o) for o in range(target, 10)]

    run(body)


def test_a_seek_to_latest_waits_for_new_records(tmp_path: pathlib.Path) -> None:
    async def body() -> None:
        async with member_node(tmp_path, partitions=1) as n:
            await fill(n, 0, 10)
            stream = plain(n, credit=broker_pb2.Credit(messages=3, bytes=1 << 20))
            await stream.context.until(lambda: len(stream.records_of(0)) == 3)
            seek(stream, 1, 0, LATEST)
            assert (await result_of(stream, 1)).offset == 10
            credit(stream, 100)
            await stream.ping(1)
            assert len(stream.records_of(0)) == 3
            await fill(n, 0, 2)
            await stream.context.until(lambda: len(stream.records_of(0)) == 5)
            assert after_result(stream, 1, 0) == [value(0, 10), value(0, 11)]

    run(body)


def test_seeks_inside_a_kept_batch_read_from_the_right_record(tmp_path: pathlib.Path) -> None:
    """One stored batch of 20 records read 3 at a time keeps its cursor; seeks forward and
    back inside it, and out of it, start exactly where they say."""

    async def body() -> None:
        async with member_node(tmp_path, partitions=1) as n:
            await fill(n, 0, 20)
            await fill(n, 0, 5)
            stream = plain(n, credit=broker_pb2.Credit(messages=3, bytes=1 << 20))
            await stream.context.until(lambda: len(stream.records_of(0)) == 3)
            got = 3
            for seek_id, target in enumerate([11, 4, 22, 0, 19], start=1):
                seek(stream, seek_id, 0, OFFSET, target)
                assert (await result_of(stream, seek_id)).offset == target
                credit(stream, 3)
                got += 3
                await stream.context.until(lambda got=got: len(stream.records_of(0)) == got)  # type: ignore[misc]
                assert after_result(stream, seek_id, 0) == [
                    value(0, o) for o in range(target, target + 3)
                ]

    run(body)


# -- refusals -------------------------------------------------------------------------

REFUSED = [
    ("offset past the end", 0, OFFSET, 11, 0, grpc.StatusCode.OUT_OF_RANGE, "OFFSET_OUT_OF_RANGE"),
    ("negative offset", 0, OFFSET, -1, 0, grpc.StatusCode.OUT_OF_RANGE, "OFFSET_OUT_OF_RANGE"),
    (
        "partition not subscribed",
        1,
        EARLIEST,
        0,
        0,
        grpc.StatusCode.FAILED_PRECONDITION,
        "PARTITION_NOT_ASSIGNED",
    ),
    (
        "no such partition",
        7,
        EARLIEST,
        0,
        0,
        grpc.StatusCode.FAILED_PRECONDITION,
        "PARTITION_NOT_ASSIGNED",
    ),
    (
        "no kind",
        0,
        broker_pb2.START_KIND_UNSPECIFIED,
        0,
        0,
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_START",
    ),
    ("unknown kind", 0, 9, 0, 0, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_START"),
    ("negative timestamp", 0, TIMESTAMP, 0, -5, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_START"),
]


@pytest.mark.parametrize(
    ("partition", "kind", "offset", "timestamp_ms", "code", "reason"),
    [r[1:] for r in REFUSED],
    ids=[r[0] for r in REFUSED],
)
def test_a_refused_seek_changes_nothing_and_the_stream_goes_on(
    tmp_path: pathlib.Path,
    partition: int,
    kind: int,
    offset: int,
    timestamp_ms: int,
    code: grpc.StatusCode,
    reason: str,
) -> None:
    async def body() -> None:
        async with member_node(tmp_path, partitions=2) as n:
            await fill(n, 0, 10)
            await fill(n, 1, 10)
            stream = plain(n, partitions=[0], credit=broker_pb2.Credit(messages=4, bytes=1 << 20))
            await stream.context.until(lambda: len(stream.records_of(0)) == 4)
            seek(stream, 1, partition, kind, offset, timestamp_ms)
            result = await result_of(stream, 1)
            assert (result.seek_id, result.partition) == (1, partition)
            assert (result.error.code, result.error.reason) == (code.value[0], reason)
            # The position did not move: it is still 4, and so it goes on.
            assert result.offset == (4 if partition == 0 else 0)
            credit(stream, 100)
            await stream.context.until(lambda: len(stream.records_of(0)) == 10)
            assert stream.records_of(0) == [value(0, o) for o in range(10)]
            assert stream.records_of(1) == []
            assert stream.context.status is None

    run(body)


def test_a_member_seeks_only_the_partitions_it_is_assigned_now(tmp_path: pathlib.Path) -> None:
    async def body() -> None:
        async with member_node(tmp_path, partitions=2) as n:
            membership = with_membership(n)
            await fill(n, 0, 5)
            await fill(n, 1, 5)
            stream = Stream(n, membership, member_subscribe())
            session = await stream.session()
            session.change(1, (0, 1), {0: None, 1: None})
            await stream.context.until(lambda: len(stream.records_of(1)) == 5)
            session.change(2, (0,), stopped=(1,))
            await stream.context.until(lambda: len(stream.assignments()) == 2)
            seek(stream, 1, 1, OFFSET, 0)
            seek(stream, 2, 0, OFFSET, 3)
            refused = await result_of(stream, 1)
            assert refused.error.reason == "PARTITION_NOT_ASSIGNED"
            assert (await result_of(stream, 2)).offset == 3
            await stream.context.until(lambda: len(stream.records_of(0)) == 7)
            await stream.ping(1)
            assert after_result(stream, 2, 0) == [value(0, 3), value(0, 4)]
            assert after_result(stream, 1, 1) == []
            assert session.seen_calls == 3

    run(body)


def test_seeks_waiting_for_an_answer_are_bounded(tmp_path: pathlib.Path) -> None:
    """A client that sends seeks and reads nothing: the reader stops after
    SEEKS_INFLIGHT_MAX unanswered seeks (and HTTP/2 pushes back on the client)."""

    async def body() -> None:
        async with member_node(tmp_path, partitions=1) as n:
            await fill(n, 0, 10)
            stream = plain(n, credit=broker_pb2.Credit())
            await stream.context.until(lambda: bool(stream.context.responses))
            stream.context.write_gate.clear()
            extra = 5
            for i in range(SEEKS_INFLIGHT_MAX + extra):
                seek(stream, i + 1, 0, OFFSET, i % 10)
            # One answer is being written; the reader holds SEEKS_INFLIGHT_MAX
            # read (the Subscribe was read first) and waits with the next.
            await stream.context.until(lambda: stream.context.reads == SEEKS_INFLIGHT_MAX + 2)
            await settle()
            assert stream.context.writes_waiting == 1
            assert stream.context.reads == SEEKS_INFLIGHT_MAX + 2
            assert stream.context.requests.qsize() == extra - 1
            stream.context.write_gate.set()
            await stream.context.until(lambda: len(results(stream)) == SEEKS_INFLIGHT_MAX + extra)
            assert [r.seek_id for r in results(stream)] == list(
                range(1, SEEKS_INFLIGHT_MAX + extra + 1)
            )
            credit(stream, 100)
            last = (SEEKS_INFLIGHT_MAX + extra - 1) % 10
            await stream.context.until(lambda: len(stream.records_of(0)) == 10 - last)

    run(body)
