"""The QUEUE_CONTROL payload: every field round-trips and changes the bytes; damage is refused."""

from __future__ import annotations

import struct

import pytest

from weir.cluster.queue import (
    Acked,
    ControlRecord,
    DeadLettered,
    Delivered,
    DeliveredRecord,
    Nacked,
    decode_control,
    encode_control,
)
from weir.cluster.queue.codec import KIND_DELIVERED, encode_record
from weir.cluster.storage import BatchKind, encode_batch
from weir.cluster.storage.codec import decode_batch_header
from weir.cluster.storage.errors import CorruptEntryError

pytestmark = pytest.mark.timeout(10)

DELIVERED = Delivered.of(10, (DeliveredRecord(3, 1, None), DeliveredRecord(4, 1, None)))
KEYED = Delivered.of(10, (DeliveredRecord(3, 2, 0xDEADBEEF), DeliveredRecord(4, 2, 7)))
ACKED = Acked(((0, 5), (9, 10)))
NACKED = Nacked(6, 2, 12_345, "timeout: é")
DEAD = DeadLettered(((8, 9),))

# (name, base record, the same record with that one field changed)
FIELDS: list[tuple[str, ControlRecord, ControlRecord]] = [
    ("delivered.cursor", DELIVERED, Delivered.of(2**40, DELIVERED.records())),
    ("delivered.offset", DELIVERED, Delivered.of(10, (DeliveredRecord(2**50, 1),))),
    ("delivered.attempt", DELIVERED, Delivered.of(10, (DeliveredRecord(3, 2**32 - 1),))),
    (
        "delivered.key_hash",
        KEYED,
        Delivered.of(10, (next(KEYED.records()), DeliveredRecord(4, 2, 8))),
    ),
    ("delivered.keyedness", DELIVERED, Delivered.of(10, (DeliveredRecord(3, 1, 0),))),
    ("delivered.records", DELIVERED, Delivered(10, ())),
    ("acked.first", ACKED, Acked(((1, 5), (9, 10)))),
    ("acked.end", ACKED, Acked(((0, 5), (9, 2**31)))),
    ("acked.ranges", ACKED, Acked(())),
    ("nacked.offset", NACKED, Nacked(2**62, 2, 12_345, NACKED.reason)),
    ("nacked.attempt", NACKED, Nacked(6, 3, 12_345, NACKED.reason)),
    ("nacked.due_ms", NACKED, Nacked(6, 2, -1, NACKED.reason)),
    ("nacked.reason", NACKED, Nacked(6, 2, 12_345, "")),
    ("dead_lettered.first", DEAD, DeadLettered(((7, 9),))),
    ("dead_lettered.end", DEAD, DeadLettered(((8, 100),))),
]


@pytest.mark.parametrize(("name", "base", "changed"), FIELDS, ids=[f[0] for f in FIELDS])
def test_each_field_round_trips_and_is_encoded(
    name: str, base: ControlRecord, changed: ControlRecord
) -> None:
    for record in (base, changed):
        assert decode_control(encode_control("g", [record])) == ("g", (record,))
    assert encode_record(base) != encode_record(changed), name


def test_the_group_and_the_order_of_records_round_trip() -> None:
    records: list[ControlRecord] = [DELIVERED, ACKED, NACKED, KEYED, DEAD]
    assert decode_control(encode_control("orders-é", records)) == ("orders-é", tuple(records))
    assert decode_control(encode_control("h", records))[0] == "h"
    assert decode_control(encode_control("g", [])) == ("g", ())


def test_consecutive_first_deliveries_are_one_run() -> None:
    many = Delivered.of(1_000, tuple(DeliveredRecord(o, 1) for o in range(1_000)))
    # kind + cursor + run count + one run of 17 bytes, whatever the count.
    assert len(encode_record(many)) == 1 + 12 + 17
    mixed = Delivered.of(5, (DeliveredRecord(1, 1), DeliveredRecord(2, 2), DeliveredRecord(4, 2)))
    assert decode_control(encode_control("g", [mixed]))[1] == (mixed,)


def test_a_queue_control_batch_takes_no_offsets() -> None:
    data = encode_batch(BatchKind.QUEUE_CONTROL, 0, 0, 0, 0, encode_control("g", [ACKED]))
    header = decode_batch_header(data)
    assert header.kind is BatchKind.QUEUE_CONTROL and not header.takes_offsets
    assert decode_control(data[header.header_bytes :]) == ("g", (ACKED,))
    with pytest.raises(ValueError):
        encode_batch(BatchKind.QUEUE_CONTROL, 0, 1, 0, 0, b"")


def _corrupt(payload: bytes, at: int, value: bytes) -> bytes:
    return payload[:at] + value + payload[at + len(value) :]


GOOD = encode_control("g", [DELIVERED])
# version u8 | group_bytes u16 | "g" | count u16 | kind u8 | cursor u64 | runs u32 | run
RUN_AT = 1 + 2 + 1 + 2 + 1 + 8 + 4
DAMAGE = {
    "version": _corrupt(GOOD, 0, b"\x02"),
    "no group": encode_control("g", [DELIVERED]).replace(b"\x00\x01g", b"\x00\x00", 1),
    "group not utf-8": _corrupt(GOOD, 3, b"\xff"),
    "truncated": GOOD[:-1],
    "trailing bytes": GOOD + b"\x00",
    "unknown kind": _corrupt(GOOD, 6, b"\x09"),
    "attempt 0": _corrupt(GOOD, RUN_AT + 12, struct.pack(">I", 0)),
    "empty run": _corrupt(GOOD, RUN_AT + 8, struct.pack(">I", 0)),
    "keyed flag": _corrupt(GOOD, RUN_AT + 16, b"\x02"),
    "empty range": encode_control("g", [Acked(((3, 4),))])[:-4] + struct.pack(">I", 0),
    "reason not utf-8": encode_control("g", [Nacked(1, 1, 1, "x")])[:-1] + b"\xff",
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damage_is_refused(damage: str) -> None:
    assert GOOD[6] == KIND_DELIVERED
    with pytest.raises(CorruptEntryError):
        decode_control(DAMAGE[damage])
