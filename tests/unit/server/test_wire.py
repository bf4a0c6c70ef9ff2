"""The hand-built consume encoding must equal what protobuf itself would produce."""

from __future__ import annotations

import random

import pytest

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


@pytest.mark.parametrize("seed", range(20))
def test_take_records_charges_each_record_its_byte_size(seed: int) -> None:
    """The credit of a record is Record.ByteSize(), what any client can compute."""
    rng = random.Random(seed)
    batch = random_batch(rng, rng.randrange(1, 30))
    payload = batch.SerializeToString()
    sizes = [r.ByteSize() for r in batch.records]
    taken = wire.take_records(payload, 0, len(sizes), sum(sizes), 1 << 62)
    assert (taken.end, taken.count, taken.charged_bytes, taken.blocked_bytes) == (
        len(payload),
        len(sizes),
        sum(sizes),
        -1,
    )
    # One byte short of the k-th record: k-1 records, and the k-th's size is reported.
    k = rng.randrange(1, len(sizes) + 1)
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


@pytest.mark.parametrize("value", [1, 127, 128, 300, 2**32, 2**63 - 1])
def test_varint_matches_protobuf(value: int) -> None:
    encoded = broker_pb2.PartitionStart(offset=value).SerializeToString()
    assert encoded == b"\x10" + wire.encode_varint(value)
