"""`Record.deliver_at_ms` on the produce and consume paths (issue 8, delayed
delivery): refusals with their reasons, the DELAYED flag on the parts that
carry delays, the consume scan over stored records that have one, and the
SDK's hand encoding of the field."""

from __future__ import annotations

import random

import grpc
import pytest

from weir import _wire
from weir._wire import credit_bytes
from weir.server import wire
from weir.server.errors import BrokerError
from weir.server.produce_route import Plan, prepare
from weir.v1 import records_pb2

pytestmark = [pytest.mark.timeout(30)]

NOW_MS = 1_700_000_000_000
DAY_MS = 86_400_000


def plan(retention_ms: int | None = None, partition: int | None = 0, count: int = 1) -> Plan:
    return Plan(
        "jobs",
        1 << 20,
        NOW_MS,
        partition,
        count,
        0,
        deliver_at_ms_max=None if retention_ms is None else NOW_MS + retention_ms,
    )


def batch(*deliver_at_ms: int, keys: bool = False) -> records_pb2.RecordBatch:
    return records_pb2.RecordBatch(
        records=[
            records_pb2.Record(value=b"v", deliver_at_ms=d, key=b"%d" % i if keys else None)
            for i, d in enumerate(deliver_at_ms)
        ]
    )


def test_a_batch_with_a_delay_is_flagged_and_stored_with_it() -> None:
    (part,), _ = prepare(batch(0, NOW_MS + 5000), plan())
    assert part.delayed
    stored = records_pb2.RecordBatch.FromString(part.payload)
    assert [r.deliver_at_ms for r in stored.records] == [0, NOW_MS + 5000]
    (plain,), _ = prepare(batch(0, 0), plan())
    assert not plain.delayed


def test_a_split_request_flags_every_part() -> None:
    parts, _ = prepare(batch(NOW_MS, 0, 0, 0, keys=True), plan(partition=None, count=8))
    assert len(parts) > 1
    assert all(p.delayed for p in parts)


def test_a_negative_delay_is_refused_naming_the_record() -> None:
    with pytest.raises(BrokerError) as raised:
        prepare(batch(0, -1), plan())
    assert raised.value.code is grpc.StatusCode.INVALID_ARGUMENT
    assert raised.value.reason == "INVALID_DELIVER_AT"
    assert raised.value.metadata["index"] == "1"


def test_a_delay_beyond_time_retention_is_refused() -> None:
    ok = NOW_MS + DAY_MS
    (part,), _ = prepare(batch(ok), plan(retention_ms=DAY_MS))
    assert part.delayed
    with pytest.raises(BrokerError) as raised:
        prepare(batch(0, ok + 1), plan(retention_ms=DAY_MS))
    assert raised.value.code is grpc.StatusCode.INVALID_ARGUMENT
    assert raised.value.reason == "DELIVER_AT_BEYOND_RETENTION"
    assert raised.value.metadata["deliver_at_ms_max"] == str(ok)
    # Without time retention any delay goes.
    (far,), _ = prepare(batch(2**63 - 1), plan())
    assert far.delayed


def test_the_consume_scan_takes_delayed_records_and_charges_their_content() -> None:
    rng = random.Random(20261201)
    for _ in range(200):
        records = [
            records_pb2.Record(
                key=rng.choice((None, b"", b"k" * rng.randint(1, 200))),
                value=rng.randbytes(rng.choice((0, 5, 130, 20_000))),
                headers={"h": b"x"} if rng.random() < 0.3 else {},
                timestamp_ms=rng.choice((1, 127, NOW_MS, 2**63 - 1)),
                deliver_at_ms=rng.choice((0, 1, NOW_MS + DAY_MS, 2**63 - 1)),
            )
            for _ in range(rng.randint(1, 5))
        ]
        payload = records_pb2.RecordBatch(records=records).SerializeToString()
        taken = wire.take_records(payload, 0, 1 << 30, 1 << 62, 1 << 62)
        assert (taken.end, taken.count) == (len(payload), len(records))
        assert taken.charged_bytes == sum(
            credit_bytes(r.key if r.HasField("key") else None, r.value, dict(r.headers))
            for r in records
        )


def test_the_sdk_encodes_deliver_at_byte_for_byte_as_protobuf() -> None:
    for deliver_at_ms in (0, 1, 127, 128, NOW_MS, 2**63 - 1):
        for key, ts in ((None, 0), (b"k", NOW_MS)):
            proto = records_pb2.Record(
                key=key, value=b"v", timestamp_ms=ts, deliver_at_ms=deliver_at_ms
            )
            body = _wire.record_body(b"v", key, {"a": b"b"} if key else None, ts, deliver_at_ms)
            if key:
                proto.headers["a"] = b"b"
            assert body == proto.SerializeToString()
