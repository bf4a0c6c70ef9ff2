"""What a Produce stream promises, checked through the generated stubs.

Pipelined requests are answered once each, in order per partition, with
dense offsets; ACKS_NONE is answered only on error yet written; ACKS_LEADER
and the default are answered. Without a partition the broker routes keyed
records by Kafka's murmur2 and keyless records of one request to one
partition, round-robin across requests, and `record_indexes` maps every
record. Timestamps of 0 become the broker's time; others are kept. Keys
(absent vs empty), values and headers come back byte for byte.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator

import pytest

from tests.support.broker_process import BrokerProcess
from tests.support.raw_client import (
    RawClient,
    offsets_of,
    open_stream,
    read_batches,
    read_partition,
    request,
    start_at,
)
from weir.partitioner import murmur2
from weir.v1 import broker_pb2, records_pb2

pytestmark = [pytest.mark.integration]

OK = 0
T0_MS = 1_700_000_000_000


@pytest.fixture
def client(broker: BrokerProcess) -> Iterator[RawClient]:
    with RawClient(broker.address) as client:
        yield client


def kafka_partition(key: bytes, count: int) -> int:
    return (murmur2(key) & 0x7FFFFFFF) % count


def unrouted(
    topic: str, records: list[records_pb2.Record], request_id: int = 1
) -> broker_pb2.ProduceRequest:
    """A request without a partition: the broker routes every record."""
    return broker_pb2.ProduceRequest(
        request_id=request_id, topic=topic, batch=records_pb2.RecordBatch(records=records)
    )


def placements(response: broker_pb2.ProduceResponse, count: int) -> dict[int, tuple[int, int]]:
    """Record index -> (partition, offset), checking that the appends cover each record once."""
    assert not response.HasField("error"), response.error
    placed: dict[int, tuple[int, int]] = {}
    partitions = [a.partition for a in response.appends]
    assert len(partitions) == len(set(partitions)), "one append per partition"
    for append in response.appends:
        indexes = list(append.record_indexes)
        assert append.record_count == len(indexes) > 0
        assert indexes == sorted(indexes), "indexes keep the request's order"
        for i, index in enumerate(indexes):
            assert index not in placed
            placed[index] = (append.partition, append.base_offset + i)
    assert sorted(placed) == list(range(count)), "every record is mapped"
    return placed


@pytest.mark.timeout(90)
def test_pipelined_requests_answered_in_order_per_partition_with_dense_offsets(
    client: RawClient,
) -> None:
    partitions = 3
    client.create_topic("pipe", partitions=partitions)
    rng = random.Random(7)
    requests = []
    for request_id in range(1, 601):
        partition = rng.randrange(partitions)
        count = rng.randint(1, 5)
        values = [b"r%d-%d" % (request_id, i) for i in range(count)]
        requests.append(request("pipe", values, request_id=request_id, partition=partition))

    responses = list(client.produce(requests))  # all sent before any answer is awaited

    assert sorted(r.request_id for r in responses) == [r.request_id for r in requests], (
        "exactly one answer per request"
    )
    sent = {r.request_id: r for r in requests}
    next_offset = dict.fromkeys(range(partitions), 0)
    order: dict[int, list[int]] = {p: [] for p in range(partitions)}
    for response in responses:
        assert not response.HasField("error"), response.error
        req = sent[response.request_id]
        (append,) = response.appends
        assert append.partition == req.partition
        assert append.record_count == len(req.batch.records)
        assert not append.record_indexes, "empty when the request named its partition"
        assert append.base_offset == next_offset[req.partition], "dense, in answer order"
        next_offset[req.partition] += append.record_count
        order[req.partition].append(req.request_id)
    for partition in range(partitions):
        in_send_order = [r.request_id for r in requests if r.partition == partition]
        assert order[partition] == in_send_order, partition
    assert client.end_offsets("pipe") == [next_offset[p] for p in range(partitions)]

    for partition in range(partitions):
        expected = [
            v
            for r in requests
            if r.partition == partition
            for v in (x.value for x in r.batch.records)
        ]
        assert [r.value for r in read_partition(client, "pipe", partition)] == expected


@pytest.mark.timeout(60)
def test_acks_none_is_not_answered_on_success_but_written(client: RawClient) -> None:
    client.create_topic("fire")
    silent = [
        request(
            "fire", [b"n%d-%d" % (i, j) for j in range(3)], request_id=i, acks=broker_pb2.ACKS_NONE
        )
        for i in range(1, 11)
    ]
    # A failed ACKS_NONE request is answered, with its error, in its place.
    failing = request("missing", [b"x"], request_id=11, acks=broker_pb2.ACKS_NONE)
    confirm = request("fire", [b"last"], request_id=12, acks=broker_pb2.ACKS_ALL)

    responses = list(client.produce([*silent, failing, confirm]))

    assert [r.request_id for r in responses] == [11, 12]
    assert responses[0].error.reason == "TOPIC_NOT_FOUND"
    assert not responses[1].HasField("error")
    # Requests of one partition are appended in order, so the ACKS_ALL answer
    # at offset 30 means the 30 silent records before it are committed.
    assert [(a.partition, a.base_offset, a.record_count) for a in responses[1].appends] == [
        (0, 30, 1)
    ]
    assert client.end_offsets("fire") == [31]
    values = [r.value for r in read_partition(client, "fire", 0)]
    assert values == [b"n%d-%d" % (i, j) for i in range(1, 11) for j in range(3)] + [b"last"]


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "acks",
    [broker_pb2.ACKS_LEADER, broker_pb2.ACKS_ALL, broker_pb2.ACKS_UNSPECIFIED],
    ids=["leader", "all", "unspecified"],
)
def test_acks_leader_all_and_default_are_answered(client: RawClient, acks: int) -> None:
    client.create_topic("acked")
    requests = [
        request("acked", [b"a%d" % i, b"b%d" % i], request_id=i, acks=acks) for i in range(5)
    ]
    responses = list(client.produce(requests))
    assert [r.request_id for r in responses] == list(range(5))
    for i, response in enumerate(responses):
        assert not response.HasField("error"), response.error
        assert [(a.partition, a.base_offset, a.record_count) for a in response.appends] == [
            (0, 2 * i, 2)
        ]
    # The answered records are readable at once.
    assert [r.value for r in read_partition(client, "acked", 0)] == [
        v for i in range(5) for v in (b"a%d" % i, b"b%d" % i)
    ]


@pytest.mark.timeout(60)
def test_keyed_records_are_routed_by_murmur2(client: RawClient) -> None:
    partitions = 7
    client.create_topic("keyed", partitions=partitions)
    keys = [b"key-%d" % (i % 23) for i in range(200)] + [b"", b"foobar", bytes(range(256))]
    records = [records_pb2.Record(key=k, value=b"v%d" % i) for i, k in enumerate(keys)]

    response = client.produce_one(unrouted("keyed", records))
    placed = placements(response, len(records))
    for index, (partition, _) in placed.items():
        assert partition == kafka_partition(keys[index], partitions), keys[index]
    # Kafka's own value: Utils.murmur2("foobar") == -790332482.
    assert placed[201][0] == (-790332482 & 0x7FFFFFFF) % partitions

    # The same keys land in the same partitions again, after the first records.
    again = placements(client.produce_one(unrouted("keyed", records, request_id=2)), len(records))
    assert {i: p for i, (p, _) in again.items()} == {i: p for i, (p, _) in placed.items()}

    stored = {p: read_partition(client, "keyed", p) for p in range(partitions)}
    for placement in (placed, again):
        for index, (partition, offset) in placement.items():
            record = stored[partition][offset]
            assert (record.key, record.value) == (keys[index], b"v%d" % index)
            assert record.HasField("key")


@pytest.mark.timeout(60)
def test_keyless_records_go_to_one_partition_per_request_round_robin(
    client: RawClient,
) -> None:
    partitions = 3
    client.create_topic("rr", partitions=partitions)
    requests = [
        unrouted("rr", [records_pb2.Record(value=b"q%d-%d" % (i, j)) for j in range(4)], i)
        for i in range(9)
    ]
    responses = list(client.produce(requests))
    chosen = []
    for response in responses:
        assert not response.HasField("error"), response.error
        (append,) = response.appends
        assert list(append.record_indexes) == [0, 1, 2, 3]
        assert append.record_count == 4
        chosen.append(append.partition)
    first = chosen[0]
    assert chosen == [(first + i) % partitions for i in range(9)], chosen
    assert client.end_offsets("rr") == [12, 12, 12]


@pytest.mark.timeout(60)
def test_mixed_request_splits_keyed_and_keyless_records(client: RawClient) -> None:
    partitions = 4
    client.create_topic("mix", partitions=partitions)
    keys: list[bytes | None] = [None, b"alpha", None, b"beta", b"alpha", None, b"gamma", None]
    records = [
        records_pb2.Record(value=b"m%d" % i)
        if key is None
        else records_pb2.Record(key=key, value=b"m%d" % i)
        for i, key in enumerate(keys)
    ]
    placed = placements(client.produce_one(unrouted("mix", records)), len(records))
    keyless = {placed[i][0] for i, key in enumerate(keys) if key is None}
    assert len(keyless) == 1, "every keyless record of a request goes to one partition"
    for i, key in enumerate(keys):
        if key is not None:
            assert placed[i][0] == kafka_partition(key, partitions)

    stored = {p: read_partition(client, "mix", p) for p in range(partitions)}
    for index, (partition, offset) in placed.items():
        record = stored[partition][offset]
        assert record.value == b"m%d" % index
        assert record.HasField("key") == (keys[index] is not None)


@pytest.mark.timeout(60)
def test_broker_sets_missing_timestamps_and_keeps_producer_ones(client: RawClient) -> None:
    client.create_topic("time")
    producer_ts = [T0_MS + 123, 1, T0_MS - 5_000]
    records = [
        records_pb2.Record(value=b"broker-0"),
        records_pb2.Record(value=b"producer-0", timestamp_ms=producer_ts[0]),
        records_pb2.Record(value=b"broker-1", timestamp_ms=0),
        records_pb2.Record(value=b"producer-1", timestamp_ms=producer_ts[1]),
        records_pb2.Record(value=b"producer-2", timestamp_ms=producer_ts[2]),
    ]
    before_ms = time.time_ns() // 1_000_000
    response = client.produce_one(
        broker_pb2.ProduceRequest(
            request_id=1, topic="time", partition=0, batch=records_pb2.RecordBatch(records=records)
        )
    )
    after_ms = time.time_ns() // 1_000_000
    assert not response.HasField("error"), response.error

    stored = read_partition(client, "time", 0)
    assert [r.value for r in stored] == [r.value for r in records]
    assert [stored[i].timestamp_ms for i in (1, 3, 4)] == producer_ts, "kept as sent"
    filled = {stored[0].timestamp_ms, stored[2].timestamp_ms}
    assert len(filled) == 1, "one append time for the whole request"
    (append_ms,) = filled
    assert before_ms <= append_ms <= after_ms, (before_ms, append_ms, after_ms)

    # The filled-in time counts for timestamp lookups: the batch's max is the
    # append time, which is later than every producer timestamp here.
    for timestamp_ms, start in ((append_ms, 0), (append_ms + 1, 5)):
        stream, subscribed = open_stream(
            client,
            broker_pb2.Subscribe(
                topic="time",
                start=start_at(broker_pb2.START_KIND_TIMESTAMP, timestamp_ms=timestamp_ms),
                credit=broker_pb2.Credit(messages=10, bytes=1 << 20),
            ),
        )
        try:
            assert [p.offset for p in subscribed.partitions] == [start], timestamp_ms
            if start == 0:
                assert offsets_of(read_batches(stream, 5)) == [(0, o) for o in range(5)]
        finally:
            stream.close()


@pytest.mark.timeout(60)
def test_keys_values_and_headers_come_back_byte_for_byte(client: RawClient) -> None:
    client.create_topic("bytes", partitions=3)
    rng = random.Random(11)
    every_byte = bytes(range(256))
    records = [
        records_pb2.Record(value=b"", timestamp_ms=T0_MS),  # no key, empty value
        records_pb2.Record(key=b"", value=b"empty key", timestamp_ms=T0_MS),
        records_pb2.Record(key=every_byte, value=every_byte[::-1], timestamp_ms=T0_MS),
        records_pb2.Record(
            key=b"\x00",
            value=rng.randbytes(10_000),
            headers={
                "empty": b"",
                "binary": every_byte,
                "ünïcode-ключ": b"\x00\xff\x00",
                "": b"empty name",
                "big": rng.randbytes(5_000),
            },
            timestamp_ms=T0_MS + 1,
        ),
        records_pb2.Record(headers={"only": b"headers"}, timestamp_ms=T0_MS + 2),
    ]
    # Named partition: the records come back in order, compared whole.
    response = client.produce_one(
        broker_pb2.ProduceRequest(
            request_id=1, topic="bytes", partition=1, batch=records_pb2.RecordBatch(records=records)
        )
    )
    assert not response.HasField("error"), response.error
    stored = read_partition(client, "bytes", 1)
    assert stored == records
    assert [r.HasField("key") for r in stored] == [False, True, True, True, False]
    assert stored[1].key == b"" and stored[0].key == b""

    # Routed by the broker: the empty key is a key (murmur2 of b""), the
    # absent one is not.
    routed = client.produce_one(unrouted("bytes", records, request_id=2))
    placed = placements(routed, len(records))
    assert placed[1][0] == kafka_partition(b"", 3)
    assert placed[2][0] == kafka_partition(every_byte, 3)
    assert placed[0][0] == placed[4][0], "the keyless records share one partition"
    partitions = {p: read_partition(client, "bytes", p) for p in range(3)}
    for index, (partition, offset) in placed.items():
        assert partitions[partition][offset] == records[index], index
