"""The hand-built consume encoding must equal what protobuf itself would produce."""

from __future__ import annotations

import random

import pytest

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


@pytest.mark.parametrize("seed", range(20))
def test_record_ends_split_exactly_at_record_boundaries(seed: int) -> None:
    rng = random.Random(seed)
    batch = random_batch(rng, rng.randrange(1, 50))
    payload = batch.SerializeToString()
    ends = wire.record_ends(payload, len(batch.records) + 5)
    assert len(ends) == len(batch.records)
    assert ends[-1] == len(payload)
    begin = 0
    for record, end in zip(batch.records, ends, strict=True):
        part = records_pb2.RecordBatch.FromString(payload[begin:end])
        assert list(part.records) == [record]
        begin = end
    assert wire.record_ends(payload, 2) == ends[:2]


@pytest.mark.parametrize("seed", range(10))
def test_consume_response_matches_protobuf_encoding(seed: int) -> None:
    rng = random.Random(seed)
    batch = random_batch(rng, 7)
    payload = batch.SerializeToString()
    ends = wire.record_ends(payload, 7)
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
