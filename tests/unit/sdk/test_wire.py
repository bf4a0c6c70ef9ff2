"""The consumer measures records exactly as the broker charged them."""

from __future__ import annotations

import pytest

from weir._wire import batch_record_sizes
from weir.aio.accumulator import framed_size
from weir.v1 import broker_pb2, records_pb2

pytestmark = pytest.mark.timeout(10)


def test_sizes_are_framed_record_sizes() -> None:
    records = [
        records_pb2.Record(value=b"x" * n, key=b"k" if n % 2 else None, headers={"h": b"v"})
        for n in (0, 1, 127, 128, 300, 20_000)
    ]
    response = broker_pb2.ConsumeResponse(
        batch=broker_pb2.ConsumedBatch(
            records=records, topic="t", partition=3, base_offset=10, end_offset=99
        )
    )
    sizes = batch_record_sizes(response.SerializeToString())
    assert sizes == [framed_size(r.ByteSize()) for r in records]


def test_non_canonical_encoding_is_measured_as_sent() -> None:
    # A record whose encoder wrote timestamp_ms=0 explicitly (field 4, varint 0):
    # ByteSize() of the parsed record is 2 bytes smaller than what was sent.
    body = b"\x12\x01v" + b"\x20\x00"
    record_field = b"\x0a" + bytes([len(body)]) + body
    batch = record_field + b"\x12\x01t" + b"\x18\x01"
    raw = b"\x12" + bytes([len(batch)]) + batch
    parsed = broker_pb2.ConsumeResponse.FromString(raw)
    assert parsed.batch.records[0].ByteSize() == 3
    assert batch_record_sizes(raw) == [len(record_field)]


def test_non_batch_responses_have_no_records() -> None:
    response = broker_pb2.ConsumeResponse(commit=broker_pb2.CommitResult(commit_id=1))
    assert batch_record_sizes(response.SerializeToString()) == []
    assert framed_size(127) == 129 and framed_size(128) == 131
