"""The consumer counts byte credit as `Credit` in broker.proto defines it: a record's content."""

from __future__ import annotations

import random

import pytest
from google.protobuf.message import DecodeError

from weir import _wire
from weir._wire import credit_bytes
from weir.types import ConsumedRecord, make_consumed_record, make_delivered_record
from weir.v1 import broker_pb2, records_pb2

pytestmark = pytest.mark.timeout(10)


def random_record(rng: random.Random) -> records_pb2.Record:
    record = records_pb2.Record(
        value=rng.randbytes(rng.choice([0, 1, 100, 127, 128, 300, 20_000])),
        timestamp_ms=rng.choice([1, 1_764_300_000_000, 1 << 62]),
        headers={
            rng.choice(["", "h", "trace-id", "größe", "名前" * 50]) + str(j): rng.randbytes(
                rng.choice([0, 3, 200])
            )
            for j in range(rng.choice([0, 0, 1, 3]))
        },
    )
    if rng.random() < 0.5:
        record.key = rng.randbytes(rng.choice([0, 16, 200]))
    return record


def fields_of(record: records_pb2.Record) -> _wire.RecordFields:
    return (
        record.key if record.HasField("key") else None,
        record.value,
        dict(record.headers),
        record.timestamp_ms,
    )


def test_credit_bytes_counts_key_value_header_names_and_values() -> None:
    assert credit_bytes(None, b"", {}) == 0
    assert credit_bytes(b"", b"", {}) == 0
    assert credit_bytes(b"key", b"value", {}) == 8
    # Names count as UTF-8: "größe" is 7 bytes, "名" 3.
    assert credit_bytes(None, b"v", {"größe": b"12", "名": b""}) == 1 + 7 + 2 + 3


@pytest.mark.parametrize("seed", range(20))
def test_credit_bytes_is_never_more_than_the_record_encoding(seed: int) -> None:
    """So record_bytes_max (checked on the encoding at produce) always covers a record."""
    rng = random.Random(seed)
    for _ in range(50):
        record = random_record(rng)
        key, value, headers, _ = fields_of(record)
        assert credit_bytes(key, value, headers) <= record.ByteSize()


@pytest.mark.parametrize("seed", range(10))
def test_batch_reader_charges_credit_bytes_and_agrees_with_protobuf(seed: int) -> None:
    rng = random.Random(seed)
    records = [random_record(rng) for _ in range(30)]
    records += [
        records_pb2.Record(),
        records_pb2.Record(key=b""),
        records_pb2.Record(value=b"x", timestamp_ms=3),
    ]
    raw = broker_pb2.ConsumeResponse(
        batch=broker_pb2.ConsumedBatch(
            records=records, topic="t", partition=3, base_offset=5, end_offset=1000
        )
    ).SerializeToString()
    decoded = _wire.decode_batch_response(raw)
    assert decoded is not None
    topic, partition, base_offset, end_offset, fields, charges, deliveries = decoded
    assert (topic, partition, base_offset, end_offset) == ("t", 3, 5, 1000)
    assert fields == [fields_of(r) for r in records]
    assert charges == [credit_bytes(k, v, h) for k, v, h, _ in fields]
    assert deliveries is None


def random_delivery(rng: random.Random) -> broker_pb2.Delivery:
    return broker_pb2.Delivery(
        ack_id=rng.randbytes(rng.choice([0, 1, 24, 127, 128, 300])),
        offset=rng.choice([0, 1, 127, 128, 16_383, 16_384, (1 << 21) - 1, 1 << 21, (1 << 63) - 1]),
        delivery_attempt=rng.choice([0, 1, 2, 127, 128, (1 << 32) - 1]),
        ack_deadline_ms=rng.choice([0, 1, 1_764_300_030_000, 1_764_300_030_001, (1 << 63) - 1]),
    )


@pytest.mark.parametrize("seed", range(10))
def test_batch_reader_decodes_queue_deliveries_as_protobuf_does(seed: int) -> None:
    """Defaults left out, long and one-byte lengths, deadlines shared or not."""
    rng = random.Random(seed)
    records = [random_record(rng) for _ in range(30)]
    deliveries = [random_delivery(rng) for _ in records]
    # Runs of the same deadline, as a response of one hand-out has.
    for delivery in deliveries[5:15]:
        delivery.ack_deadline_ms = 1_764_300_030_000
    raw = broker_pb2.ConsumeResponse(
        batch=broker_pb2.ConsumedBatch(
            records=records, topic="t", partition=1, base_offset=5, deliveries=deliveries
        )
    ).SerializeToString()
    decoded = _wire.decode_batch_response(raw)
    assert decoded is not None
    assert decoded[4] == [fields_of(r) for r in records]
    assert decoded[6] == [_wire.delivery_fields(d) for d in deliveries]


def test_batch_reader_leaves_odd_deliveries_to_protobuf() -> None:
    """Negative int64s, a field twice, fields out of order and unknown fields."""
    record = records_pb2.Record(value=b"v")

    def batch_of(delivery: bytes) -> bytes:
        body = b"\x0a" + bytes([record.ByteSize()]) + record.SerializeToString()
        body += b"\x32" + bytes([len(delivery)]) + delivery
        return b"\x12" + bytes([len(body)]) + body

    negative = broker_pb2.Delivery(ack_id=b"a", offset=-1).SerializeToString()
    twice = b"\x0a\x01a\x0a\x01b"
    reordered = b"\x10\x05\x0a\x01a"
    unknown = b"\x0a\x01a\x28\x01"
    for delivery in (negative, twice, reordered, unknown):
        raw = batch_of(delivery)
        assert _wire.decode_batch_response(raw) is None, delivery
        # Protobuf reads each of them (the consumer's slow path).
        broker_pb2.ConsumeResponse.FromString(raw)


def test_batch_reader_declines_a_notice() -> None:
    notice = broker_pb2.ConsumeResponse(notice={"reason": "CREDIT_TOO_SMALL"})
    assert _wire.decode_batch_response(notice.SerializeToString()) is None


def test_batch_reader_decodes_timestamps_that_share_their_high_bytes() -> None:
    """Timestamps a millisecond apart (records stored one per batch), across a
    128 ms step, negative ones, one-byte ones and a cut-off varint."""
    stamps = [1_764_300_000_000 + i for i in range(-3, 300, 7)]
    stamps += [1_764_300_000_127, 1_764_300_000_128, 1_764_300_000_127, -1, -2, -129, -128]
    stamps += [127, 5, 128, 1 << 62, (1 << 62) + 1, 1_764_300_000_000]
    records = [records_pb2.Record(value=b"v", timestamp_ms=t) for t in stamps]
    raw = broker_pb2.ConsumeResponse(
        batch=broker_pb2.ConsumedBatch(records=records, topic="t", base_offset=1)
    ).SerializeToString()
    decoded = _wire.decode_batch_response(raw)
    assert decoded is not None
    assert [fields[3] for fields in decoded[4]] == stamps

    # A record whose timestamp varint is cut off after its first byte is
    # damage (protobuf says so), never a timestamp taken from an earlier one.
    cut = b"\x0a\x02\x20\x80" + b"\x0a\x03\x12\x01v"
    with pytest.raises(DecodeError):
        _wire.decode_batch_response(b"\x12" + bytes([len(cut)]) + cut)


def test_the_hot_path_record_builders_make_what_the_constructor_makes() -> None:
    # make_consumed_record / make_delivered_record set the frozen slots directly.
    built = make_consumed_record("t", 2, 7, b"k", b"v", {"h": b"1"}, 99)
    assert built == ConsumedRecord("t", 2, 7, b"k", b"v", {"h": b"1"}, 99)
    delivery = broker_pb2.Delivery(ack_id=b"id", offset=8, delivery_attempt=3, ack_deadline_ms=5)
    delivered = make_delivered_record("t", 2, None, b"v", {}, 99, _wire.delivery_fields(delivery))
    assert delivered == ConsumedRecord("t", 2, 8, None, b"v", {}, 99, b"id", 3, 5)
