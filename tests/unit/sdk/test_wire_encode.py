"""The producer's hand-encoded records and requests equal protobuf's; the
consumer's one-pass batch reader agrees with protobuf's parser."""

from __future__ import annotations

import itertools

import pytest

from weir import _wire
from weir.v1 import broker_pb2, records_pb2

pytestmark = pytest.mark.timeout(10)

KEYS = (None, b"", b"k" * 200)
VALUES = (b"", b"v", b"x" * 125, b"y" * 126, b"z" * 20_000)
HEADERS: tuple[dict[str, bytes] | None, ...] = (None, {}, {"a": b""}, {"h\u00e9": b"v" * 300})
TIMESTAMPS = (0, 1, -1, 1_764_300_000_000, 1 << 62)


def test_record_body_is_byte_equal_to_protobuf() -> None:
    for key, value, headers, ts in itertools.product(KEYS, VALUES, HEADERS, TIMESTAMPS):
        proto = records_pb2.Record(key=key, value=value, headers=headers, timestamp_ms=ts)
        body = _wire.record_body(value, key, headers, ts)
        assert body == proto.SerializeToString(), (key, value[:4], headers, ts)
        framed = _wire.framed_record(body)
        assert framed == records_pb2.RecordBatch(records=[proto]).SerializeToString()
        if key is None and not headers and not ts and len(value) <= _wire.VALUE_ONLY_SMALL_MAX:
            assert _wire.value_only_framed(value) == framed


def test_several_headers_parse_back_equal() -> None:
    # Map order on the wire is unspecified; the content and size must match.
    headers = {"": b"x", "b": b"2", "a": b"1" * 200}
    body = _wire.record_body(b"v", None, headers, 5)
    proto = records_pb2.Record(value=b"v", headers=headers, timestamp_ms=5)
    assert records_pb2.Record.FromString(body) == proto
    assert len(body) == proto.ByteSize()


@pytest.mark.parametrize("acks", [0, 1, 2, 3])
@pytest.mark.parametrize("request_id", [1, 300, 1 << 40])
@pytest.mark.parametrize("partition", [0, 5, 1000])
def test_produce_request_is_byte_equal_to_protobuf(
    acks: int, request_id: int, partition: int
) -> None:
    batch = records_pb2.RecordBatch(
        records=[records_pb2.Record(value=b"a"), records_pb2.Record(key=b"k")]
    )
    expected = broker_pb2.ProduceRequest(
        request_id=request_id,
        topic="t\u00f6",
        partition=partition,
        batch=batch,
        acks=acks,  # type: ignore[arg-type]
    ).SerializeToString()
    payload = bytearray(batch.SerializeToString())
    got = _wire.produce_request(request_id, _wire.topic_field("t\u00f6"), partition, payload, acks)
    assert got == expected


def test_batch_reader_agrees_with_protobuf() -> None:
    records = [
        records_pb2.Record(value=b"%03d" % i * 30, timestamp_ms=1_764_300_000_000) for i in range(3)
    ]
    records += [
        records_pb2.Record(key=b"k", value=b"v" * 300, timestamp_ms=-5),
        records_pb2.Record(),
        records_pb2.Record(key=b""),
        records_pb2.Record(headers={"a": b"b"}, value=b"x", timestamp_ms=3),
        records_pb2.Record(value=b"x", timestamp_ms=3),
        records_pb2.Record(value=b"x", timestamp_ms=4),
    ]
    raw = broker_pb2.ConsumeResponse(
        batch=broker_pb2.ConsumedBatch(
            records=records, topic="t", partition=3, base_offset=5, end_offset=1000
        )
    ).SerializeToString()
    decoded = _wire.decode_batch_response(raw)
    assert decoded is not None
    topic, partition, base_offset, end_offset, fields, sizes, _ = decoded
    assert (topic, partition, base_offset, end_offset) == ("t", 3, 5, 1000)
    assert fields == [
        (r.key if r.HasField("key") else None, r.value, dict(r.headers), r.timestamp_ms)
        for r in records
    ]
    assert sizes == [_wire.credit_bytes(k, v, h) for k, v, h, _ in fields]


def test_batch_reader_declines_other_responses() -> None:
    commit = broker_pb2.ConsumeResponse(commit=broker_pb2.CommitResult(commit_id=1))
    assert _wire.decode_batch_response(commit.SerializeToString()) is None
    subscribed = broker_pb2.ConsumeResponse(subscribed=broker_pb2.Subscribed(topic="t"))
    assert _wire.decode_batch_response(subscribed.SerializeToString()) is None
