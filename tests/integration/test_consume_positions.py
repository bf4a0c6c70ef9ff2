"""Where a Consume stream starts, and how much it may send: positions and credit.

Start positions: EARLIEST, LATEST, an explicit offset (also in the middle
of a stored batch), per-partition offsets, TIMESTAMP (the first batch whose
max timestamp is at or after it, even when producer clocks disagree), and a
group's committed offset, which never moves backwards. Credit: the broker
sends exactly what was granted, in records and in bytes, and nothing more
until more is granted. "Nothing more" is shown by round trips on the same
stream (raw_client.settle): the broker's answer to a Commit travels behind
every batch it wrote before answering.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import pytest

from tests.support.broker_process import BrokerProcess
from tests.support.raw_client import (
    ConsumeStream,
    RawClient,
    offsets_of,
    open_stream,
    read_batches,
    settle,
    start_at,
    values_of,
)
from weir.v1 import broker_pb2, records_pb2

pytestmark = [pytest.mark.integration]

EARLIEST = broker_pb2.START_KIND_EARLIEST
LATEST = broker_pb2.START_KIND_LATEST
OFFSET = broker_pb2.START_KIND_OFFSET
TIMESTAMP = broker_pb2.START_KIND_TIMESTAMP
UNSPECIFIED = broker_pb2.START_KIND_UNSPECIFIED
BIG_BYTES = 1 << 30
# An arbitrary but realistic epoch time, so producer-set timestamps are plausible.
T0_MS = 1_700_000_000_000


@pytest.fixture
def client(broker: BrokerProcess) -> Iterator[RawClient]:
    with RawClient(broker.address) as client:
        yield client


def value(partition: int, offset: int) -> bytes:
    return b"p%d-o%d" % (partition, offset)


def produce(
    client: RawClient,
    topic: str,
    partition: int,
    count: int,
    timestamps_ms: Sequence[int] | None = None,
    payload: bytes = b"",
) -> int:
    """Append `count` records named after their future offsets; return the base offset."""
    base = client.describe(topic).partitions[partition].end_offset
    timestamps_ms = timestamps_ms or [T0_MS] * count
    batch = records_pb2.RecordBatch(
        records=[
            records_pb2.Record(value=value(partition, base + i) + payload, timestamp_ms=ts)
            for i, ts in zip(range(count), timestamps_ms, strict=True)
        ]
    )
    response = client.produce_one(
        broker_pb2.ProduceRequest(request_id=1, topic=topic, partition=partition, batch=batch)
    )
    assert not response.HasField("error"), response.error
    assert response.appends[0].base_offset == base
    return base


def subscribe(
    topic: str,
    *,
    kind: int = EARLIEST,
    offset: int = 0,
    timestamp_ms: int = 0,
    messages: int = 1000,
    nbytes: int = BIG_BYTES,
    **fields: object,
) -> broker_pb2.Subscribe:
    return broker_pb2.Subscribe(
        topic=topic,
        start=start_at(kind, offset=offset, timestamp_ms=timestamp_ms),
        credit=broker_pb2.Credit(messages=messages, bytes=nbytes),
        **fields,  # type: ignore[arg-type]
    )


def starts(subscribed: broker_pb2.Subscribed) -> dict[int, int]:
    return {p.partition: p.offset for p in subscribed.partitions}


def commit(stream: ConsumeStream, commit_id: int, **offsets: int) -> dict[int, int]:
    """Commit {partition: offset} (keys as p0, p1, ...); return what the group has stored."""
    stream.send(
        broker_pb2.ConsumeRequest(
            commit=broker_pb2.Commit(
                commit_id=commit_id,
                offsets=[
                    broker_pb2.PartitionOffset(partition=int(p[1:]), offset=o)
                    for p, o in offsets.items()
                ],
            )
        )
    )
    result = stream.next().commit
    assert result.commit_id == commit_id
    assert not result.HasField("error"), result.error
    return {o.partition: o.offset for o in result.offsets}


@pytest.mark.timeout(60)
def test_earliest_reads_every_record_from_the_start(client: RawClient) -> None:
    client.create_topic("e")
    for _ in range(3):
        produce(client, "e", 0, 4)
    stream, subscribed = open_stream(client, subscribe("e", kind=EARLIEST))
    try:
        (start,) = subscribed.partitions
        assert (start.partition, start.offset, start.log_start_offset, start.end_offset) == (
            0,
            0,
            0,
            12,
        )
        assert subscribed.record_bytes_max == 1024 * 1024
        batches = read_batches(stream, 12)
        assert offsets_of(batches) == [(0, o) for o in range(12)]
        assert values_of(batches) == [value(0, o) for o in range(12)]
        assert settle(stream, 1) == [], "nothing beyond the end"
    finally:
        stream.close()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", [LATEST, UNSPECIFIED], ids=["latest", "unspecified"])
def test_latest_delivers_only_records_appended_after_subscribing(
    client: RawClient, kind: int
) -> None:
    client.create_topic("l")
    produce(client, "l", 0, 5)
    stream, subscribed = open_stream(client, subscribe("l", kind=kind))
    try:
        assert starts(subscribed) == {0: 5}
        assert subscribed.partitions[0].end_offset == 5
        assert settle(stream, 1) == [], "old records are not sent"
        produce(client, "l", 0, 3)
        batches = read_batches(stream, 3)
        assert batches[0].base_offset == 5
        assert values_of(batches) == [value(0, o) for o in range(5, 8)]
        assert settle(stream, 10) == []
    finally:
        stream.close()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("offset", [0, 10, 13, 19, 29])
def test_explicit_offset_starts_exactly_there_even_mid_batch(
    client: RawClient, offset: int
) -> None:
    client.create_topic("x")
    for _ in range(3):
        produce(client, "x", 0, 10)  # batches [0, 10), [10, 20), [20, 30)
    stream, subscribed = open_stream(client, subscribe("x", kind=OFFSET, offset=offset))
    try:
        assert starts(subscribed) == {0: offset}
        batches = read_batches(stream, 30 - offset)
        assert batches[0].base_offset == offset
        assert batches[0].records[0].value == value(0, offset)
        assert offsets_of(batches) == [(0, o) for o in range(offset, 30)]
        assert values_of(batches) == [value(0, o) for o in range(offset, 30)]
        assert settle(stream, 1) == []
    finally:
        stream.close()


@pytest.mark.timeout(60)
def test_explicit_offset_at_the_end_waits_for_new_records(client: RawClient) -> None:
    client.create_topic("x")
    produce(client, "x", 0, 4)
    stream, subscribed = open_stream(client, subscribe("x", kind=OFFSET, offset=4))
    try:
        assert starts(subscribed) == {0: 4}
        assert settle(stream, 1) == []
        produce(client, "x", 0, 2)
        assert offsets_of(read_batches(stream, 2)) == [(0, 4), (0, 5)]
    finally:
        stream.close()


@pytest.mark.timeout(60)
def test_per_partition_offsets_override_the_common_start(client: RawClient) -> None:
    client.create_topic("m", partitions=3)
    for partition in range(3):
        produce(client, "m", partition, 5)
        produce(client, "m", partition, 5)  # two batches of 5 per partition

    # The map names partitions 0 and 2; partition 1 takes the common start.
    stream, subscribed = open_stream(client, subscribe("m", kind=EARLIEST, offsets={0: 7, 2: 3}))
    try:
        assert starts(subscribed) == {0: 7, 1: 0, 2: 3}
        batches = read_batches(stream, 3 + 10 + 7)
        for partition, first in ((0, 7), (1, 0), (2, 3)):
            got = [b for b in batches if b.partition == partition]
            assert got[0].base_offset == first
            assert [o for _, o in offsets_of(got)] == list(range(first, 10))
            assert values_of(got) == [value(partition, o) for o in range(first, 10)]
        assert settle(stream, 1) == []
    finally:
        stream.close()

    # A common explicit offset, overridden per partition, on a subset of partitions.
    stream, subscribed = open_stream(
        client, subscribe("m", kind=OFFSET, offset=4, partitions=[2, 1], offsets={1: 9})
    )
    try:
        assert starts(subscribed) == {2: 4, 1: 9}
        batches = read_batches(stream, 6 + 1)
        assert sorted(offsets_of(batches)) == [(1, 9)] + [(2, o) for o in range(4, 10)]
        assert settle(stream, 1) == [], "partition 0 is not subscribed"
    finally:
        stream.close()


@pytest.mark.timeout(60)
def test_timestamp_start_is_the_first_batch_whose_max_timestamp_reaches_it(
    client: RawClient,
) -> None:
    client.create_topic("ts", partitions=2)
    # Partition 0. Batch maxima 200, 300, 160 (an older producer clock), 400.
    layout = [
        (0, [T0_MS + 100, T0_MS + 200]),  # offsets 0-1, max 200
        (2, [T0_MS + 300, T0_MS + 250]),  # offsets 2-3, max 300
        (4, [T0_MS + 150, T0_MS + 160]),  # offsets 4-5, max 160
        (6, [T0_MS + 400]),  # offset 6, max 400
    ]
    for base, timestamps in layout:
        assert produce(client, "ts", 0, len(timestamps), timestamps) == base
    # Partition 1: one batch with max 250, so it answers independently.
    produce(client, "ts", 1, 3, [T0_MS + 50, T0_MS + 250, T0_MS + 10])

    expected = {
        0: {0: 0, 1: 0},
        T0_MS: {0: 0, 1: 0},
        T0_MS + 160: {0: 0, 1: 0},  # batch 0's max (200) is already >= 160
        T0_MS + 200: {0: 0, 1: 0},
        T0_MS + 201: {0: 2, 1: 0},
        T0_MS + 250: {0: 2, 1: 0},
        T0_MS + 251: {0: 2, 1: 3},  # nothing in partition 1 reaches it: its end
        T0_MS + 300: {0: 2, 1: 3},
        T0_MS + 301: {0: 6, 1: 3},
        T0_MS + 400: {0: 6, 1: 3},
        T0_MS + 401: {0: 7, 1: 3},
    }
    for timestamp_ms, positions in expected.items():
        stream, subscribed = open_stream(
            client, subscribe("ts", kind=TIMESTAMP, timestamp_ms=timestamp_ms)
        )
        try:
            assert starts(subscribed) == positions, timestamp_ms - T0_MS
            count = (7 - positions[0]) + (3 - positions[1])
            batches = read_batches(stream, count)
            for partition, end in ((0, 7), (1, 3)):
                got = [o for p, o in offsets_of(batches) if p == partition]
                assert got == list(range(positions[partition], end)), (timestamp_ms, partition)
            assert settle(stream, 1) == []
        finally:
            stream.close()

    # Past every record: the stream waits at the end for the next one.
    stream, subscribed = open_stream(
        client, subscribe("ts", kind=TIMESTAMP, timestamp_ms=T0_MS + 10**6)
    )
    try:
        assert starts(subscribed) == {0: 7, 1: 3}
        produce(client, "ts", 0, 1, [T0_MS + 5])
        (batch,) = read_batches(stream, 1)
        assert (batch.partition, batch.base_offset) == (0, 7)
    finally:
        stream.close()


@pytest.mark.timeout(60)
def test_group_committed_offset_is_the_resume_point(client: RawClient) -> None:
    client.create_topic("g", partitions=2)
    for partition in (0, 1):
        produce(client, "g", partition, 10)

    stream, subscribed = open_stream(client, subscribe("g", group="workers", messages=0))
    try:
        assert starts(subscribed) == {0: 0, 1: 0}, "no commit yet: the start position"
        assert commit(stream, 1, p0=6, p1=2) == {0: 6, 1: 2}
    finally:
        stream.close()

    # Every start kind yields to the committed offset.
    for kind in (EARLIEST, LATEST, UNSPECIFIED):
        stream, subscribed = open_stream(client, subscribe("g", group="workers", kind=kind))
        try:
            assert starts(subscribed) == {0: 6, 1: 2}, kind
            batches = read_batches(stream, 4 + 8)
            assert sorted(offsets_of(batches)) == [(0, o) for o in range(6, 10)] + [
                (1, o) for o in range(2, 10)
            ]
            assert settle(stream, 1) == []
        finally:
            stream.close()

    # Explicit per-partition offsets override it; other groups do not see it.
    stream, subscribed = open_stream(client, subscribe("g", group="workers", offsets={1: 9}))
    try:
        assert starts(subscribed) == {0: 6, 1: 9}
    finally:
        stream.close()
    stream, subscribed = open_stream(client, subscribe("g", group="others", kind=EARLIEST))
    try:
        assert starts(subscribed) == {0: 0, 1: 0}
    finally:
        stream.close()
    stream, subscribed = open_stream(client, subscribe("g", kind=EARLIEST))
    try:
        assert starts(subscribed) == {0: 0, 1: 0}, "no group, no committed offset"
    finally:
        stream.close()


@pytest.mark.timeout(60)
def test_committed_offset_never_moves_backwards(client: RawClient) -> None:
    client.create_topic("nb", partitions=2)
    for partition in (0, 1):
        produce(client, "nb", partition, 20)

    first, _ = open_stream(client, subscribe("nb", group="g", messages=0))
    second, _ = open_stream(client, subscribe("nb", group="g", messages=0))
    try:
        assert commit(first, 1, p0=10, p1=5) == {0: 10, 1: 5}
        # Another stream of the same group commits lower offsets for p0: kept.
        assert commit(second, 1, p0=4, p1=12) == {0: 10, 1: 12}
        assert commit(first, 2, p0=10) == {0: 10}, "the same offset again is harmless"
        assert commit(first, 3, p0=0, p1=0) == {0: 10, 1: 12}
        assert commit(second, 2, p0=11) == {0: 11}
    finally:
        first.close()
        second.close()

    stream, subscribed = open_stream(client, subscribe("nb", group="g"))
    try:
        assert starts(subscribed) == {0: 11, 1: 12}
    finally:
        stream.close()


@pytest.mark.timeout(60)
def test_message_credit_is_exact(client: RawClient) -> None:
    client.create_topic("c")
    for _ in range(4):
        produce(client, "c", 0, 5)  # 20 records in batches of 5
    stream, _ = open_stream(client, subscribe("c", messages=7))
    try:
        batches = read_batches(stream, 7)  # fails if a response brings more
        assert offsets_of(batches) == [(0, o) for o in range(7)]
        assert settle(stream, 1) == [], "7 records granted, 7 sent"

        stream.credit(4)
        batches = read_batches(stream, 4)
        assert offsets_of(batches) == [(0, o) for o in range(7, 11)]
        assert settle(stream, 10) == []

        # Credits add up.
        stream.credit(2)
        stream.credit(3)
        batches = read_batches(stream, 5)
        assert offsets_of(batches) == [(0, o) for o in range(11, 16)]
        assert settle(stream, 20) == []

        stream.credit(100)
        batches = read_batches(stream, 4)
        assert values_of(batches) == [value(0, o) for o in range(16, 20)]
        assert settle(stream, 30) == []
    finally:
        stream.close()


@pytest.mark.timeout(60)
def test_no_records_without_both_kinds_of_credit(client: RawClient) -> None:
    client.create_topic("c")
    produce(client, "c", 0, 3)
    stream, _ = open_stream(client, subscribe("c", messages=0, nbytes=BIG_BYTES))
    try:
        assert settle(stream, 1) == [], "bytes alone do not let records through"
        stream.credit(2, 0)
        batches = read_batches(stream, 2)
        assert offsets_of(batches) == [(0, 0), (0, 1)]
        assert settle(stream, 10) == []
    finally:
        stream.close()
    stream, _ = open_stream(client, subscribe("c", messages=10, nbytes=0))
    try:
        assert settle(stream, 1) == [], "messages alone do not let records with values through"
        # ... and the broker says so instead of going quiet.
        assert [(n.reason, n.metadata["needed_bytes"]) for n in stream.notices] == [
            ("CREDIT_TOO_SMALL", str(len(value(0, 0))))
        ]
        stream.credit(0, BIG_BYTES)
        assert offsets_of(read_batches(stream, 3)) == [(0, 0), (0, 1), (0, 2)]
    finally:
        stream.close()


@pytest.mark.timeout(60)
def test_byte_credit_smaller_than_a_record_stalls_until_more_bytes(client: RawClient) -> None:
    client.create_topic("b")
    produce(client, "b", 0, 4, payload=b"z" * 100)
    produce(client, "b", 0, 4, payload=b"z" * 100)
    # A record's byte credit is its content: here only its value, b"p0-o<n>"
    # plus 100 bytes, the same for every record here.
    size = len(value(0, 0) + b"z" * 100)

    stream, _ = open_stream(client, subscribe("b", messages=100, nbytes=size - 1))
    try:
        assert settle(stream, 1) == [], "one byte short of the first record"
        stream.credit(0, 1)
        batches = read_batches(stream, 1)
        assert offsets_of(batches) == [(0, 0)]
        assert settle(stream, 10) == [], "the byte credit is used up exactly"

        # Room for two and a half records: two go, the third waits.
        stream.credit(0, 2 * size + size // 2)
        batches = read_batches(stream, 2)
        assert offsets_of(batches) == [(0, 1), (0, 2)]
        assert settle(stream, 20) == []
        stream.credit(0, size - size // 2)
        assert offsets_of(read_batches(stream, 1)) == [(0, 3)]
        assert settle(stream, 30) == []

        # Across the batch boundary, in one grant.
        stream.credit(0, 4 * size)
        batches = read_batches(stream, 4)
        assert offsets_of(batches) == [(0, o) for o in range(4, 8)]
        assert values_of(batches) == [value(0, o) + b"z" * 100 for o in range(4, 8)]
        assert settle(stream, 40) == []
    finally:
        stream.close()


@pytest.mark.timeout(90)
def test_several_partitions_deliver_every_record_once_in_offset_order(
    client: RawClient,
) -> None:
    partitions = 4
    client.create_topic("mp", partitions=partitions)
    counts = dict.fromkeys(range(partitions), 0)
    # Interleaved batches of different sizes.
    for round_ in range(6):
        for partition in range(partitions):
            size = 1 + (round_ + partition) % 5
            produce(client, "mp", partition, size)
            counts[partition] += size
    total = sum(counts.values())

    stream, _ = open_stream(client, subscribe("mp", group="mp", messages=0))
    try:
        batches: list[broker_pb2.ConsumedBatch] = []
        granted = 0
        while granted < total:
            chunk = min(7, total - granted)
            stream.credit(chunk)
            granted += chunk
            batches.extend(read_batches(stream, chunk))
        assert settle(stream, 1) == []
    finally:
        stream.close()

    delivered = offsets_of(batches)
    assert len(delivered) == len(set(delivered)) == total, "every record exactly once"
    for partition in range(partitions):
        got = [b for b in batches if b.partition == partition]
        assert [o for _, o in offsets_of(got)] == list(range(counts[partition])), partition
        assert values_of(got) == [value(partition, o) for o in range(counts[partition])]


@pytest.mark.timeout(60)
def test_consumed_batch_end_offset_is_the_partition_end(client: RawClient) -> None:
    client.create_topic("end", partitions=2)
    produce(client, "end", 0, 10)
    produce(client, "end", 1, 2)
    stream, subscribed = open_stream(client, subscribe("end", partitions=[0], messages=3))
    try:
        assert [(p.offset, p.end_offset) for p in subscribed.partitions] == [(0, 10)]
        (batch,) = read_batches(stream, 3)
        assert (batch.topic, batch.partition, batch.base_offset, batch.end_offset) == (
            "end",
            0,
            0,
            10,
        )
        assert batch.end_offset - (batch.base_offset + len(batch.records)) == 7, "the lag"

        produce(client, "end", 0, 5)
        stream.credit(100)
        batches = read_batches(stream, 12)
        assert [b.end_offset for b in batches] == [15] * len(batches)
        assert batches[-1].end_offset == batches[-1].base_offset + len(batches[-1].records)

        produce(client, "end", 0, 1)
        (batch,) = read_batches(stream, 1)
        assert (batch.base_offset, batch.end_offset) == (15, 16)
    finally:
        stream.close()
