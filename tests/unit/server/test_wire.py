"""The hand-built consume encoding must equal what protobuf itself would produce."""

from __future__ import annotations

import random

import pytest

from weir._wire import credit_bytes
from weir.cluster.queue.ackid import encode_ack_id
from weir.cluster.storage import CorruptEntryError
from weir.server import wire
from weir.v1 import broker_pb2, records_pb2


def random_batch(rng: random.Random, count: int) -> records_pb2.RecordBatch:
    records = []
    for i in range(count):
        record = records_pb2.Record(
            value=rng.randbytes(rng.choice([0, 1, 100, 200, 20_000])),
            timestamp_ms=rng.randrange(1 << 41),
            headers={f"h{j}": rng.randbytes(3) for j in range(rng.randrange(3))},
        )
        if i % 3:
            record.key = rng.randbytes(rng.randrange(0, 40))
        records.append(record)
    return records_pb2.RecordBatch(records=records)


def test_stored_and_delivered_records_share_field_one() -> None:
    stored = records_pb2.RecordBatch.DESCRIPTOR.fields_by_name["records"].number
    delivered = broker_pb2.ConsumedBatch.DESCRIPTOR.fields_by_name["records"].number
    assert stored == delivered == 1


def record_ends(payload: bytes, count: int) -> list[int]:
    """End positions of the first `count` records, found with take_records alone."""
    ends: list[int] = []
    pos = 0
    while len(ends) < count and pos < len(payload):
        pos = wire.take_records(payload, pos, 1, 1 << 62, 1 << 62).end
        ends.append(pos)
    return ends


@pytest.mark.parametrize("seed", range(20))
def test_take_records_splits_exactly_at_record_boundaries(seed: int) -> None:
    rng = random.Random(seed)
    batch = random_batch(rng, rng.randrange(1, 50))
    payload = batch.SerializeToString()
    ends = record_ends(payload, len(batch.records) + 5)
    assert len(ends) == len(batch.records)
    assert ends[-1] == len(payload)
    begin = 0
    for record, end in zip(batch.records, ends, strict=True):
        part = records_pb2.RecordBatch.FromString(payload[begin:end])
        assert list(part.records) == [record]
        begin = end
    assert record_ends(payload, 2) == ends[:2]


def charges_of(batch: records_pb2.RecordBatch) -> list[int]:
    """Each record's byte credit as the SDK computes it from the decoded record."""
    return [
        credit_bytes(r.key if r.HasField("key") else None, r.value, dict(r.headers))
        for r in batch.records
    ]


@pytest.mark.parametrize("seed", range(20))
def test_take_records_charges_each_record_its_content_size(seed: int) -> None:
    """The broker's charge, read from stored bytes, is the SDK's `credit_bytes` of the record."""
    rng = random.Random(seed)
    batch = random_batch(rng, rng.randrange(1, 30))
    payload = batch.SerializeToString()
    sizes = charges_of(batch)
    taken = wire.take_records(payload, 0, len(sizes), sum(sizes), 1 << 62)
    assert (taken.end, taken.count, taken.charged_bytes, taken.blocked_bytes) == (
        len(payload),
        len(sizes),
        sum(sizes),
        -1,
    )
    # One byte short of the k-th record: k-1 records, and the k-th's charge is
    # reported (unless it costs nothing: then it goes too).
    k = rng.randrange(1, len(sizes) + 1)
    while k <= len(sizes) and sizes[k - 1] == 0:
        k += 1
    if k > len(sizes):
        return
    taken = wire.take_records(payload, 0, len(sizes), sum(sizes[:k]) - 1, 1 << 62)
    assert taken.count == k - 1
    assert taken.charged_bytes == sum(sizes[: k - 1])
    assert taken.blocked_bytes == sizes[k - 1]
    # Resuming where it stopped scans on from there.
    rest = wire.take_records(payload, taken.end, len(sizes), 1 << 62, 1 << 62)
    assert taken.count + rest.count == len(sizes)
    assert rest.end == len(payload)


def test_take_records_bounds_the_response_but_not_below_one_record() -> None:
    batch = records_pb2.RecordBatch(records=[records_pb2.Record(value=b"x" * 100)] * 5)
    payload = batch.SerializeToString()
    framed = len(payload) // 5
    taken = wire.take_records(payload, 0, 5, 1 << 62, 2 * framed + 1)
    assert (taken.count, taken.end) == (2, 2 * framed)
    # A caller with an empty response passes no bound: one large record still goes.
    assert wire.take_records(payload, 0, 1, 1 << 62, 1 << 62).count == 1


@pytest.mark.parametrize(
    "payload",
    [
        b"\x12\x02ab",  # wrong tag
        b"\x0a\x05ab",  # length past the end
        b"\x0a",  # no length at all
        b"\x0a\xff\xff",  # unterminated length
        b"\x0a\x00\x0b",  # a good record, then a wrong tag
        b"\x0a\x04\x12\x00\x0a\x00",  # a key after the value: not the broker's order
        b"\x0a\x03\x12\x05ab",  # a value running past its record
        b"\x0a\x04\x28\x01\x12\x00",  # a field Record does not have
        b"\x0a\x04\x1a\x02\x18\x00",  # a header entry with a foreign field
        b"\x0a\x03\x20\x80\x80",  # an unterminated timestamp
    ],
)
def test_damaged_stored_bytes_are_corruption_not_an_assertion(payload: bytes) -> None:
    with pytest.raises(CorruptEntryError):
        wire.take_records(payload, 0, 10, 1 << 62, 1 << 62)


@pytest.mark.parametrize("seed", range(10))
def test_consume_response_matches_protobuf_encoding(seed: int) -> None:
    rng = random.Random(seed)
    batch = random_batch(rng, 7)
    payload = batch.SerializeToString()
    ends = record_ends(payload, 7)
    parts = [payload[: ends[2]], memoryview(payload)[ends[2] :]]
    base, end_offset, partition = (
        rng.randrange(1 << 40),
        rng.randrange(1 << 45),
        rng.randrange(5000),
    )
    raw = wire.consume_batch_response(wire.topic_field("tópic"), partition, base, end_offset, parts)
    expected = broker_pb2.ConsumeResponse(
        batch=broker_pb2.ConsumedBatch(
            records=batch.records,
            topic="tópic",
            partition=partition,
            base_offset=base,
            end_offset=end_offset,
        )
    )
    assert broker_pb2.ConsumeResponse.FromString(raw) == expected


@pytest.mark.parametrize(
    "value", [1, 127, 128, 300, 16_383, 16_384, 2**21 - 1, 2**21, 2**32, 2**63 - 1]
)
def test_varint_matches_protobuf(value: int) -> None:
    encoded = broker_pb2.PartitionStart(offset=value).SerializeToString()
    assert encoded == b"\x10" + wire.encode_varint(value)


def headers_record(rng: random.Random) -> records_pb2.Record:
    """Header entries of every shape the broker stores: empty, short, long names and values."""
    return records_pb2.Record(
        key=rng.randbytes(rng.choice([0, 5, 300])),
        value=rng.randbytes(rng.choice([0, 1, 127, 128, 70_000])),
        headers={
            "n" * rng.choice([0, 1, 60, 130]) + str(j): rng.randbytes(rng.choice([0, 1, 60, 200]))
            for j in range(rng.randrange(6))
        },
        timestamp_ms=rng.randrange(1, 1 << 63),
    )


@pytest.mark.parametrize("seed", range(10))
def test_content_size_of_long_headers_and_fields(seed: int) -> None:
    rng = random.Random(seed)
    batch = records_pb2.RecordBatch(records=[headers_record(rng) for _ in range(40)])
    payload = batch.SerializeToString()
    taken = wire.take_records(payload, 0, 1 << 62, 1 << 62, 1 << 62)
    assert (taken.count, taken.end) == (40, len(payload))
    assert taken.charged_bytes == sum(charges_of(batch))


@pytest.mark.parametrize("seed", range(5))
def test_a_record_of_record_bytes_max_fits_in_that_much_byte_credit(seed: int) -> None:
    """The guarantee: a record produce accepts (encoding <= record_bytes_max) costs no more."""
    rng = random.Random(seed)
    for _ in range(200):
        record = headers_record(rng)
        limit = record.ByteSize()  # the largest record a topic with this limit accepts
        payload = records_pb2.RecordBatch(records=[record]).SerializeToString()
        assert wire.take_records(payload, 0, 1, limit, 1 << 62).count == 1


@pytest.mark.parametrize("seed", range(10))
def test_queue_response_matches_protobuf_encoding(seed: int) -> None:
    """Byte for byte where protobuf writes every field (no zero among them)."""
    rng = random.Random(seed)
    batch = random_batch(rng, 9)
    payload = batch.SerializeToString()
    ends = record_ends(payload, 9)
    framed = [payload[a:b] for a, b in zip([0, *ends], ends, strict=False)]
    partition = rng.randrange(1, 5000)
    encode = wire.delivery_encoder("grüppe", partition)
    deliveries = [
        (
            rng.choice([1, 127, 128, 16_384, 2**21, 2**40, 2**63 - 1]),
            rng.choice([1, 2, 127, 128, 2**32 - 1]),
            rng.choice([1, 1_764_300_030_000, 2**63 - 1]),
        )
        for _ in framed
    ]
    raw = wire.queue_batch_response(
        wire.topic_field("tópic"),
        partition,
        deliveries[0][0],
        2**45,
        framed,
        [encode(*d) for d in deliveries],
    )
    expected = broker_pb2.ConsumeResponse(
        batch=broker_pb2.ConsumedBatch(
            records=batch.records,
            topic="tópic",
            partition=partition,
            base_offset=deliveries[0][0],
            end_offset=2**45,
            deliveries=[
                broker_pb2.Delivery(
                    ack_id=encode_ack_id("grüppe", partition, offset, attempt),
                    offset=offset,
                    delivery_attempt=attempt,
                    ack_deadline_ms=deadline,
                )
                for offset, attempt, deadline in deliveries
            ],
        )
    )
    assert raw == expected.SerializeToString()


def test_a_delivery_of_offset_zero_leaves_the_field_out_as_protobuf_does() -> None:
    encode = wire.delivery_encoder("g", 0)
    for deadline in (5, 5, 0, 6):  # the deadline's bytes are kept while it stays
        expected = broker_pb2.ConsumedBatch(
            deliveries=[
                broker_pb2.Delivery(
                    ack_id=encode_ack_id("g", 0, 0, 1), delivery_attempt=1, ack_deadline_ms=deadline
                )
            ]
        )
        assert encode(0, 1, deadline) == expected.SerializeToString()
