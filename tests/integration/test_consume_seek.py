"""Seek on a real single node (`weir serve`), through the generated stubs only.

Records are produced one per request, so each is a stored batch of its own.
A Seek is answered with a `SeekResult` before any record from the new
position; a refused seek is answered with its error, changes nothing, and
the stream goes on.
"""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest

from tests.support.broker_process import BrokerProcess
from tests.support.raw_client import (
    ConsumeStream,
    RawClient,
    open_stream,
    read_batches,
    request,
    settle,
    start_at,
    values_of,
)
from weir.v1 import broker_pb2, records_pb2

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

EARLIEST = broker_pb2.START_KIND_EARLIEST
LATEST = broker_pb2.START_KIND_LATEST
OFFSET = broker_pb2.START_KIND_OFFSET
TIMESTAMP = broker_pb2.START_KIND_TIMESTAMP
T0_MS = 1_700_000_000_000
RECORDS = 12


@pytest.fixture
def client(broker: BrokerProcess) -> Iterator[RawClient]:
    with RawClient(broker.address) as client:
        yield client


def value(partition: int, offset: int) -> bytes:
    return b"p%d-o%d" % (partition, offset)


def produce_one_by_one(client: RawClient, topic: str, partition: int, count: int) -> None:
    """`count` records, one per ProduceRequest; record i is stamped T0 + 1000 * i ms."""
    requests = []
    for i in range(count):
        r = request(topic, [value(partition, i)], request_id=i + 1, partition=partition)
        r.batch.records[0].timestamp_ms = T0_MS + 1000 * i
        requests.append(r)
    responses = list(client.produce(requests))
    assert len(responses) == count
    assert all(not r.HasField("error") for r in responses), responses
    assert sorted(r.appends[0].base_offset for r in responses) == list(range(count))


def subscribe(topic: str, messages: int, **fields: object) -> broker_pb2.Subscribe:
    return broker_pb2.Subscribe(
        topic=topic,
        start=start_at(EARLIEST),
        credit=broker_pb2.Credit(messages=messages, bytes=1 << 30),
        **fields,  # type: ignore[arg-type]
    )


def seek(
    stream: ConsumeStream,
    seek_id: int,
    partition: int,
    kind: int,
    offset: int = 0,
    timestamp_ms: int = 0,
) -> broker_pb2.SeekResult:
    """Send a Seek and read up to its answer; no record may come between (no credit is left)."""
    stream.send(
        broker_pb2.ConsumeRequest(
            seek=broker_pb2.Seek(
                seek_id=seek_id,
                partition=partition,
                position=start_at(kind, offset=offset, timestamp_ms=timestamp_ms),
            )
        )
    )
    response = stream.next()
    assert response.WhichOneof("kind") == "seek", response
    assert (response.seek.seek_id, response.seek.partition) == (seek_id, partition)
    return response.seek


def test_seek_moves_the_read_position_with_each_kind(client: RawClient) -> None:
    client.create_topic("s")
    produce_one_by_one(client, "s", 0, RECORDS)
    stream, _ = open_stream(client, subscribe("s", messages=RECORDS))
    try:
        assert values_of(read_batches(stream, RECORDS)) == [value(0, i) for i in range(RECORDS)]
        # Credit is used up: each answer arrives with no record before it.
        cases = [
            (OFFSET, 3, 0, 3),  # replay
            (EARLIEST, 0, 0, 0),
            (TIMESTAMP, 0, T0_MS + 7000, 7),
            (OFFSET, RECORDS, 0, RECORDS),  # the end: nothing until more is produced
            (LATEST, 0, 0, RECORDS),
        ]
        for seek_id, (kind, offset, timestamp_ms, target) in enumerate(cases, start=1):
            result = seek(stream, seek_id, 0, kind, offset, timestamp_ms)
            assert not result.HasField("error"), result.error
            assert result.offset == target
            wanted = min(2, RECORDS - target)
            stream.credit(wanted)
            got = read_batches(stream, wanted) if wanted else []
            assert values_of(got) == [value(0, o) for o in range(target, target + wanted)]
            if got:
                assert got[0].base_offset == target
        # The last seek left the partition at its end with 0 credit used.
        stream.credit(2)
        assert settle(stream, 100) == []
        produce_more(client, "s", RECORDS)
        assert values_of(read_batches(stream, 1)) == [b"more"]
    finally:
        stream.close()


def produce_more(client: RawClient, topic: str, expected_offset: int) -> None:
    response = client.produce_one(
        broker_pb2.ProduceRequest(
            request_id=99,
            topic=topic,
            partition=0,
            batch=records_pb2.RecordBatch(records=[records_pb2.Record(value=b"more")]),
        )
    )
    assert not response.HasField("error"), response.error
    assert response.appends[0].base_offset == expected_offset


def test_refused_seeks_change_nothing_and_the_stream_goes_on(client: RawClient) -> None:
    client.create_topic("r", partitions=2)
    produce_one_by_one(client, "r", 0, RECORDS)
    produce_one_by_one(client, "r", 1, RECORDS)
    stream, _ = open_stream(client, subscribe("r", messages=4, partitions=[0]))
    try:
        assert values_of(read_batches(stream, 4)) == [value(0, i) for i in range(4)]
        refusals = [
            (0, OFFSET, RECORDS + 1, grpc.StatusCode.OUT_OF_RANGE, "OFFSET_OUT_OF_RANGE"),
            (1, EARLIEST, 0, grpc.StatusCode.FAILED_PRECONDITION, "PARTITION_NOT_ASSIGNED"),
            (5, EARLIEST, 0, grpc.StatusCode.FAILED_PRECONDITION, "PARTITION_NOT_ASSIGNED"),
            (
                0,
                broker_pb2.START_KIND_UNSPECIFIED,
                0,
                grpc.StatusCode.INVALID_ARGUMENT,
                "INVALID_START",
            ),
        ]
        for seek_id, (partition, kind, offset, code, reason) in enumerate(refusals, start=1):
            result = seek(stream, seek_id, partition, kind, offset)
            assert (result.error.code, result.error.reason) == (code.value[0], reason)
            assert not result.error.retriable
            assert result.offset == (4 if partition == 0 else 0)
        stream.credit(100)
        rest = read_batches(stream, RECORDS - 4)
        assert values_of(rest) == [value(0, i) for i in range(4, RECORDS)]
        assert {b.partition for b in rest} == {0}
        assert settle(stream, 100) == []
    finally:
        stream.close()


def test_a_group_replays_by_seeking_back_past_its_commit(client: RawClient) -> None:
    client.create_topic("g")
    produce_one_by_one(client, "g", 0, RECORDS)
    stream, _ = open_stream(client, subscribe("g", messages=RECORDS, group="readers"))
    try:
        read_batches(stream, RECORDS)
        stream.send(
            broker_pb2.ConsumeRequest(
                commit=broker_pb2.Commit(
                    commit_id=1, offsets=[broker_pb2.PartitionOffset(partition=0, offset=RECORDS)]
                )
            )
        )
        assert stream.next().commit.offsets[0].offset == RECORDS
        assert seek(stream, 1, 0, OFFSET, 5).offset == 5
        stream.credit(100)
        assert values_of(read_batches(stream, RECORDS - 5)) == [
            value(0, i) for i in range(5, RECORDS)
        ]
    finally:
        stream.close()


def test_a_stream_mode_member_seeks_its_assigned_partitions(client: RawClient) -> None:
    """One member of a group on a single node owns both partitions; it replays one of
    them by seeking, and a seek of a partition the topic does not have is refused."""
    client.create_topic("m", partitions=2)
    produce_one_by_one(client, "m", 0, RECORDS)
    produce_one_by_one(client, "m", 1, RECORDS)
    stream, subscribed = open_stream(
        client,
        subscribe("m", messages=2 * RECORDS, group="members", mode=broker_pb2.CONSUME_MODE_STREAM),
    )
    try:
        assert not subscribed.partitions, "a member is told its partitions by an Assignment"
        first = stream.next()
        assert first.WhichOneof("kind") == "assignment", first
        assignment = first.assignment
        assert list(assignment.partitions) == [0, 1] and assignment.member_id
        assert [(s.partition, s.offset) for s in assignment.started] == [(0, 0), (1, 0)]
        batches = read_batches(stream, 2 * RECORDS)
        assert sorted(values_of(batches)) == sorted(
            value(p, i) for p in (0, 1) for i in range(RECORDS)
        )
        stream.send(broker_pb2.ConsumeRequest(heartbeat=broker_pb2.Heartbeat()))
        assert seek(stream, 1, 1, OFFSET, 9).offset == 9
        refused = seek(stream, 2, 2, EARLIEST)
        assert refused.error.reason == "PARTITION_NOT_ASSIGNED"
        stream.credit(100)
        replayed = read_batches(stream, RECORDS - 9)
        assert {b.partition for b in replayed} == {1}
        assert values_of(replayed) == [value(1, i) for i in range(9, RECORDS)]
        assert settle(stream, 1) == []
    finally:
        stream.close()
