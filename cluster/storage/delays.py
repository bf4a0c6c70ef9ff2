"""The delay index: a partition's records with a `deliver_at_ms`, by due time.

Queue-mode dispatch must find records that become due long after they were
appended (any delay the topic's retention allows) without holding them in
memory, so the rows live in LMDB next to the offset index and are written
the same way: when the entry is applied (committed), in the same writer
turn as its offset index rows, never for an entry a follower may still
truncate.

    delay_index    group u32 | deliver_at_ms u64 | offset u64 -> empty
    delay_index    group u32 | 0 | 0                           -> row count u64
    delay_offsets  group u32 | offset u64                      -> deliver_at_ms u64

`delay_index` answers "what is due at t" with one cursor walk in due order.
`delay_offsets` is the same rows by offset: retention deletes a prefix of
offsets, and this is how it finds their `delay_index` rows without parsing
the records it deletes. The count row (deliver_at 0 never names a record)
is kept in the same transactions as the rows, so `delayed_count` is one get.

Only batches flagged DELAYED (codec.BATCH_FLAG_DELAYED, set by the produce
path while it makes a batch canonical) are parsed at apply; any other batch
costs one flag test.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from . import keys
from .errors import CorruptEntryError
from .lmdbenv import Db
from .writer import Turn

# What a delayed record's two rows and its share of the count row cost in
# the writer's byte budget (keys, values, LMDB's per-row overhead).
DELAY_ROW_BYTES = 80
# Delayed records whose rows one retention delete removes at most: retention
# plans fewer entries rather than exceed it (but always at least one entry,
# whose records the produce path bounds).
DELAY_ROWS_PER_RETENTION_MAX = 10_000
# A `due_delayed` answer holds at most this many rows, whatever the caller asks.
DUE_DELAYED_LIMIT_MAX = 10_000

_RECORD_TAG = 0x0A  # RecordBatch.records, field 1, length-delimited
_DELIVER_AT_TAG = 0x28  # Record.deliver_at_ms, field 5, varint
_INT64_SIGN = 1 << 63
_UINT64 = 1 << 64


@dataclass(frozen=True, slots=True, order=True)
class DelayedRecord:
    """One row of the delay index: the record at `offset` is due at `deliver_at_ms`."""

    deliver_at_ms: int
    offset: int


def _varint(data: bytes | memoryview, pos: int, end: int) -> tuple[int, int]:
    result = 0
    shift = 0
    while pos < end and shift < 70:
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7
    raise CorruptEntryError("record batch: a varint runs past its end")


def batch_delays(
    payload: bytes | memoryview, base_offset: int, record_count: int
) -> list[DelayedRecord]:
    """The delayed records of a stored `RecordBatch` payload (canonical protobuf).

    Walks the records' fields without building messages; values and keys
    are skipped by their lengths. A `deliver_at_ms` of 0 or less means no
    delay (the produce path refuses negative ones). Raises
    `CorruptEntryError` if the payload does not hold `record_count` records.
    """
    delays: list[DelayedRecord] = []
    end = len(payload)
    pos = 0
    offset = base_offset
    while pos < end:
        if payload[pos] != _RECORD_TAG:
            raise CorruptEntryError(f"record batch: unexpected field tag {payload[pos]:#x}")
        length, pos = _varint(payload, pos + 1, end)
        record_end = pos + length
        if record_end > end:
            raise CorruptEntryError("record batch: a record runs past its end")
        deliver_at_ms = 0
        while pos < record_end:
            tag, pos = _varint(payload, pos, record_end)
            wire_type = tag & 7
            if wire_type == 0:
                value, pos = _varint(payload, pos, record_end)
                if tag == _DELIVER_AT_TAG:
                    deliver_at_ms = value - _UINT64 if value >= _INT64_SIGN else value
            elif wire_type == 2:
                length, pos = _varint(payload, pos, record_end)
                pos += length
            elif wire_type == 1:
                pos += 8
            elif wire_type == 5:
                pos += 4
            else:
                raise CorruptEntryError(f"record batch: wire type {wire_type} in a record")
        if pos != record_end:
            raise CorruptEntryError("record batch: a field runs past its record")
        if deliver_at_ms > 0:
            delays.append(DelayedRecord(deliver_at_ms, offset))
        offset += 1
    if offset - base_offset != record_count:
        raise CorruptEntryError(
            f"record batch holds {offset - base_offset} records, its header says {record_count}"
        )
    return delays


def _add_count(turn: Turn, group_id: int, delta: int) -> None:
    key = keys.delay_count_key(group_id)
    current = turn.get(Db.DELAY_INDEX, key)
    count = (0 if current is None else keys.unpack_u64(current)) + delta
    assert count >= 0, f"group {group_id}: delay index count below zero"
    turn.put(Db.DELAY_INDEX, key, keys.pack_u64(count))


def write_delays(turn: Turn, group_id: int, delays: Sequence[DelayedRecord]) -> None:
    """Puts the rows of applied delayed records (each entry is applied once)."""
    if not delays:
        return
    for delay in delays:
        turn.put(Db.DELAY_INDEX, keys.delay_key(group_id, delay.deliver_at_ms, delay.offset), b"")
        turn.put(
            Db.DELAY_OFFSETS,
            keys.delay_offset_key(group_id, delay.offset),
            keys.pack_u64(delay.deliver_at_ms),
        )
    _add_count(turn, group_id, len(delays))


def delete_delays_below(turn: Turn, group_id: int, first_offset: int) -> int:
    """Retention: deletes the rows of records below `first_offset`; returns how many.

    Call after `turn.barrier()`. Bounded by what retention plans
    (DELAY_ROWS_PER_RETENTION_MAX, `retention.plan_retention`).
    """
    txn = turn.txn
    start = keys.group_key(group_id)
    cut = keys.delay_offset_key(group_id, first_offset)
    doomed = [
        keys.delay_key(group_id, keys.unpack_u64(bytes(value)), offset)
        for offset, value in (
            (keys.parse_offset_key(key)[1], value)
            for key, value in txn.iterate(Db.DELAY_OFFSETS, start, cut)
        )
    ]
    if not doomed:
        return 0
    for key in doomed:
        turn.delete(Db.DELAY_INDEX, key)
    txn.delete_range(Db.DELAY_OFFSETS, start, cut)
    _add_count(turn, group_id, -len(doomed))
    return len(doomed)


__all__ = [
    "DELAY_ROWS_PER_RETENTION_MAX",
    "DELAY_ROW_BYTES",
    "DUE_DELAYED_LIMIT_MAX",
    "DelayedRecord",
    "batch_delays",
    "delete_delays_below",
    "write_delays",
]
