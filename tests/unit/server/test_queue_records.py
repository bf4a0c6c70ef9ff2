"""Queue mode reads stored records in one pass; it must agree with protobuf's reading."""

from __future__ import annotations

import random
import zlib

import pytest

from weir.cluster.storage import CorruptEntryError
from weir.server.queue_records import QueueRecord, charge_of, parse_records
from weir.v1 import records_pb2

pytestmark = pytest.mark.timeout(10)


def random_record(rng: random.Random) -> records_pb2.Record:
    record = records_pb2.Record(
        value=rng.randbytes(rng.choice([0, 1, 100, 127, 128, 20_000])),
        timestamp_ms=rng.choice([0, 1, 127, 1_764_300_000_000, -1, 2**63 - 1]),
        deliver_at_ms=rng.choice([0, 0, 1, 1_764_300_060_000, -5]),
        headers={f"h{j}": rng.randbytes(rng.choice([0, 3])) for j in range(rng.choice([0, 0, 2]))},
    )
    if rng.random() < 0.5:
        record.key = rng.randbytes(rng.choice([0, 1, 16, 200]))
    return record


def expected(offset: int, record: records_pb2.Record) -> QueueRecord:
    body = record.SerializeToString()
    framed = records_pb2.RecordBatch(records=[record]).SerializeToString()
    assert framed.endswith(body)
    return QueueRecord(
        offset,
        framed,
        charge_of(record),
        zlib.crc32(record.key) if record.HasField("key") else None,
        record.deliver_at_ms if record.deliver_at_ms > 0 else None,
    )


@pytest.mark.parametrize("seed", range(20))
def test_parse_records_agrees_with_protobuf(seed: int) -> None:
    rng = random.Random(seed)
    records = [random_record(rng) for _ in range(25)]
    payload = records_pb2.RecordBatch(records=records).SerializeToString()
    base = rng.randrange(1 << 40)
    skip = rng.randrange(len(records))
    parsed = parse_records(payload, base, base + skip)
    assert parsed == [expected(base + i, r) for i, r in enumerate(records)][skip:]
    for got, record in zip(parsed, records[skip:], strict=True):
        assert got.decoded() == record


@pytest.mark.parametrize(
    "payload",
    [
        b"\x12\x00",  # not a records field
        b"\x0a\x05\x12\x01v",  # a record running past the batch
        b"\x0a\x03\x12\x05a",  # a value running past its record
        b"\x0a\x03\x20\x80\x80",  # an unterminated timestamp
    ],
)
def test_damaged_stored_bytes_are_corruption(payload: bytes) -> None:
    with pytest.raises(CorruptEntryError):
        parse_records(payload, 0, 0)
