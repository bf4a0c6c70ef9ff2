"""The produce path's pure parts: counting records on the wire, and preparing a batch.

`count_records` must agree with protobuf's parse on every request it
counts (records spread over repeated `batch` fields, unknown fields and
groups between them, padded tags), and refuse only bytes protobuf refuses
too. `prepare` must store Weir's own encoding, fill in timestamps and
measure records exactly as stored.
"""

from __future__ import annotations

import random

import grpc
import pytest
from google.protobuf import unknown_fields
from google.protobuf.message import DecodeError

from weir.partitioner import murmur2
from weir.server.errors import BrokerError
from weir.server.produce import (
    MALFORMED,
    TooManyRecords,
    _BadWire,
    _Plan,
    count_records,
    parse_request,
    prepare,
)
from weir.v1 import broker_pb2, records_pb2

pytestmark = [pytest.mark.timeout(60)]

SEED = 20260611
NOW_MS = 1_700_000_000_000


def varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def ld(number: int, payload: bytes) -> bytes:
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def junk(rng: random.Random) -> bytes:
    """One unknown field of a random wire type, a group among them."""
    number = rng.choice([6, 7, 9, 15, 100, 5000])
    kind = rng.randrange(5)
    if kind == 0:
        return varint(number << 3) + varint(rng.randrange(1 << 40))
    if kind == 1:
        return varint(number << 3 | 1) + rng.randbytes(8)
    if kind == 2:
        return ld(number, rng.randbytes(rng.randrange(6)))
    if kind == 3:
        return varint(number << 3 | 5) + rng.randbytes(4)
    inner = varint(1 << 3) + varint(3) + ld(2, b"\x0a\x0a")
    return varint(number << 3 | 3) + inner + varint(number << 3 | 4)


def record_field(rng: random.Random) -> bytes:
    """One `records` field; sometimes with its tag padded, as protobuf also accepts."""
    body = records_pb2.Record(
        value=rng.choice([b"", b"\n", b"\n\n\x8a", b"value"])
    ).SerializeToString()
    if rng.random() < 0.5 and rng.random() < 0.2:
        body += junk(rng)
    tag = b"\x8a\x00" if rng.random() < 0.1 else b"\x0a"
    return tag + varint(len(body)) + body


def random_request(rng: random.Random) -> bytes:
    fields = [varint(1 << 3) + varint(rng.randrange(1 << 64)), ld(2, b"topic")]
    for _ in range(rng.randrange(1, 4)):
        parts = [record_field(rng) for _ in range(rng.randrange(0, 40))]
        parts += [junk(rng) for _ in range(rng.randrange(3))]
        rng.shuffle(parts)
        fields.append(ld(4, b"".join(parts)))
    fields += [junk(rng) for _ in range(rng.randrange(3))]
    rng.shuffle(fields)
    return b"".join(fields)


def test_count_agrees_with_protobuf_on_random_requests() -> None:
    rng = random.Random(SEED)
    for case in range(2000):
        raw = random_request(rng)
        parsed = broker_pb2.ProduceRequest.FromString(raw)
        records = len(parsed.batch.records)
        for limit in {max(records - 1, 0), records, records + 1, 0}:
            request_id, over = count_records(raw, limit)
            assert over == (records > limit), (case, SEED, limit, records)
            if not over:
                assert request_id == parsed.request_id, (case, SEED)


def protobuf_parses(raw: bytes) -> bool:
    try:
        broker_pb2.ProduceRequest.FromString(raw)
    except DecodeError:
        return False
    return True


def test_the_scan_refuses_only_what_protobuf_refuses() -> None:
    rng = random.Random(SEED + 1)
    refused = 0
    for case in range(3000):
        data = bytearray(random_request(rng))
        for _ in range(rng.randrange(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        if rng.random() < 0.3:
            del data[rng.randrange(len(data)) :]
        raw = bytes(data)
        try:
            count_records(raw, 0)  # the strictest walk: every field is visited
        except _BadWire:
            refused += 1
            assert not protobuf_parses(raw), (case, SEED)
            if len(raw) >= 2:  # big enough to be counted under a limit of 0
                assert parse_request(raw, 0) is MALFORMED
    assert refused > 100, "the mutations exercise the refusals"


def test_small_requests_skip_the_count_and_large_ones_are_refused_unparsed() -> None:
    empty = b"\x0a\x00"
    head = b"\x08\x2a" + ld(2, b"t")
    at_limit = head + ld(4, empty * 10)
    assert isinstance(parse_request(at_limit, 10), broker_pb2.ProduceRequest)
    over = head + ld(4, empty * 11)
    assert parse_request(over, 10) == TooManyRecords(request_id=42, limit=10)
    # Hostile: no records at all, but a million unknown fields to walk.
    flood = head + b"\x48\x01" * 1_000_000
    assert parse_request(flood, 1000) == TooManyRecords(request_id=42, limit=1000)
    assert parse_request(b"\xff" * 100, 10) is MALFORMED
    assert parse_request(b"\xff" * 10, 1000) is MALFORMED  # small: protobuf refuses it


def test_four_million_empty_records_are_refused_cheaply() -> None:
    raw = b"\x08\x01" + ld(2, b"t") + b"\x22" + varint(8_000_000) + b"\x0a\x00" * 4_000_000
    assert parse_request(raw, 100_000) == TooManyRecords(request_id=1, limit=100_000)


def plan(limit: int = 1000, partition: int | None = 0, count: int = 1, sticky: int = 0) -> _Plan:
    return _Plan("t", limit, NOW_MS, partition, count, sticky)


def test_prepare_stores_weirs_own_encoding() -> None:
    record = records_pb2.Record(value=b"v", headers={"h": b"x"}).SerializeToString()
    raw = ld(1, record + b"\x48\x07" + ld(15, b"?")) + b"\x20\x07" + ld(1, b"\x12\x01w")
    batch = records_pb2.RecordBatch.FromString(raw)
    (part,), max_ts = prepare(batch, plan())
    stored = records_pb2.RecordBatch.FromString(part.payload)
    assert len(unknown_fields.UnknownFieldSet(stored)) == 0
    assert all(len(unknown_fields.UnknownFieldSet(r)) == 0 for r in stored.records)
    assert [(r.value, dict(r.headers), r.timestamp_ms) for r in stored.records] == [
        (b"v", {"h": b"x"}, NOW_MS),
        (b"w", {}, NOW_MS),
    ]
    assert part.payload == stored.SerializeToString()
    assert (part.partition, part.record_count, part.record_indexes, max_ts) == (0, 2, [], NOW_MS)


@pytest.mark.parametrize("timestamp_ms", [0, 5, NOW_MS + 1])
def test_prepare_measures_records_as_stored(timestamp_ms: int) -> None:
    limit = 300
    stamped = timestamp_ms or NOW_MS
    length = next(
        n
        for n in range(limit, 0, -1)
        if records_pb2.Record(value=b"x" * n, key=b"k", timestamp_ms=stamped).ByteSize() == limit
    )

    def batch(n: int) -> records_pb2.RecordBatch:
        record = records_pb2.Record(value=b"x" * n, key=b"k", timestamp_ms=timestamp_ms)
        return records_pb2.RecordBatch(records=[records_pb2.Record(), record])

    (part,), _ = prepare(batch(length), plan(limit))
    assert records_pb2.RecordBatch.FromString(part.payload).records[1].ByteSize() == limit
    with pytest.raises(BrokerError) as raised:
        prepare(batch(length + 1), plan(limit))
    assert raised.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert raised.value.reason == "RECORD_TOO_LARGE"
    assert raised.value.metadata == {
        "topic": "t",
        "index": "1",
        "size": str(limit + 1),
        "limit": str(limit),
    }


def test_prepare_refuses_negative_timestamps() -> None:
    batch = records_pb2.RecordBatch(
        records=[records_pb2.Record(), records_pb2.Record(timestamp_ms=-1)]
    )
    with pytest.raises(BrokerError) as raised:
        prepare(batch, plan())
    assert raised.value.reason == "INVALID_TIMESTAMP"


def test_prepare_routes_by_key_and_keeps_one_partition_whole() -> None:
    keys = [b"a", None, b"b", b"c", None, b"a"]
    records = [
        records_pb2.Record(value=b"%d" % i, key=k)
        if k is not None
        else records_pb2.Record(value=b"%d" % i)
        for i, k in enumerate(keys)
    ]
    parts, _ = prepare(
        records_pb2.RecordBatch(records=records), plan(partition=None, count=4, sticky=3)
    )
    expected: dict[int, list[int]] = {}
    for i, key in enumerate(keys):
        partition = 3 if key is None else (murmur2(key) & 0x7FFFFFFF) % 4
        expected.setdefault(partition, []).append(i)
    assert {p.partition: p.record_indexes for p in parts} == expected
    for part in parts:
        values = [r.value for r in records_pb2.RecordBatch.FromString(part.payload).records]
        assert values == [b"%d" % i for i in part.record_indexes]
    keyless = records_pb2.RecordBatch(records=[records_pb2.Record(value=b"x")] * 3)
    (whole,), _ = prepare(keyless, plan(partition=None, count=4, sticky=2))
    assert (whole.partition, whole.record_count, whole.record_indexes) == (2, 3, [0, 1, 2])
