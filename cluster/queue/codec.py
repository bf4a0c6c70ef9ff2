"""Encoding of queue control records: the payload of a QUEUE_CONTROL batch.

One batch carries one turn's control records of one queue group on one
partition (storage codec: `BatchKind.QUEUE_CONTROL`, no offsets taken):

    payload   = version u8 (1) | group_bytes u16 | group utf-8 | count u16 | record*
    record    = kind u8 | body
    DELIVERED = cursor u64 | run_count u32 | run*
      run     = first_offset u64 | count u32 | attempt u32 | keyed u8 | key_hash u32 * count if keyed
    ACKED, DEAD_LETTERED = range_count u32 | (first_offset u64 | count u32)*
    NACKED    = offset u64 | attempt u32 | due_ms i64 | reason_bytes u16 | reason utf-8

Deliveries are compact in the common case: new records go out in offset
order with attempt 1, so a turn's deliveries are a few runs. Big-endian,
like the storage codec. Decoding refuses anything malformed with
`CorruptEntryError` (the log's checksums make that damage, not input).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

from ..storage.errors import CorruptEntryError
from .types import (
    ATTEMPT_MAX,
    RUN_RECORDS_MAX,
    Acked,
    ControlRecord,
    DeadLettered,
    Delivered,
    DeliveredRun,
    Nacked,
)

CONTROL_FORMAT_VERSION = 1
GROUP_BYTES_MAX = 2**16 - 1
RECORDS_PER_BATCH_MAX = 2**16 - 1
REASON_BYTES_MAX = 2**16 - 1

KIND_DELIVERED = 1
KIND_ACKED = 2
KIND_NACKED = 3
KIND_DEAD_LETTERED = 4

_HEAD = struct.Struct(">BH")
_COUNT16 = struct.Struct(">H")
_KIND = struct.Struct(">B")
_DELIVERED = struct.Struct(">QI")
_RUN = struct.Struct(">QIIB")
_KEY = struct.Struct(">I")
_COUNT32 = struct.Struct(">I")
_RANGE = struct.Struct(">QI")
_NACKED = struct.Struct(">QIqH")


def _encode_ranges(kind: int, ranges: tuple[tuple[int, int], ...]) -> bytes:
    parts = [_KIND.pack(kind), _COUNT32.pack(len(ranges))]
    for first, end in ranges:
        assert 0 <= first < end and end - first < 2**32, (first, end)
        parts.append(_RANGE.pack(first, end - first))
    return b"".join(parts)


def encode_record(record: ControlRecord) -> bytes:
    match record:
        case Delivered(cursor, runs):
            parts = [_KIND.pack(KIND_DELIVERED), _DELIVERED.pack(cursor, len(runs))]
            for first, count, attempt, keys in runs:
                assert 0 < count <= RUN_RECORDS_MAX and (keys is None or len(keys) == count)
                parts.append(_RUN.pack(first, count, attempt, int(keys is not None)))
                if keys is not None:
                    parts.append(struct.pack(f">{count}I", *keys))
            return b"".join(parts)
        case Acked(ranges):
            return _encode_ranges(KIND_ACKED, ranges)
        case DeadLettered(ranges):
            return _encode_ranges(KIND_DEAD_LETTERED, ranges)
        case Nacked(offset, attempt, due_ms, reason):
            raw = reason.encode()
            assert len(raw) <= REASON_BYTES_MAX
            return _KIND.pack(KIND_NACKED) + _NACKED.pack(offset, attempt, due_ms, len(raw)) + raw
    raise AssertionError(f"not a control record: {record!r}")


def encode_control(group: str, records: Sequence[ControlRecord]) -> bytes:
    """The QUEUE_CONTROL payload of `records` of queue group `group`."""
    name = group.encode()
    assert 0 < len(name) <= GROUP_BYTES_MAX and len(records) <= RECORDS_PER_BATCH_MAX
    parts = [_HEAD.pack(CONTROL_FORMAT_VERSION, len(name)), name, _COUNT16.pack(len(records))]
    parts.extend(encode_record(r) for r in records)
    return b"".join(parts)


class _Reader:
    __slots__ = ("at", "data")

    def __init__(self, data: bytes | memoryview) -> None:
        self.data = memoryview(data)
        self.at = 0

    def take(self, layout: struct.Struct) -> tuple[int, ...]:
        if len(self.data) - self.at < layout.size:
            raise CorruptEntryError(f"queue control record truncated at byte {self.at}")
        values = layout.unpack_from(self.data, self.at)
        self.at += layout.size
        return tuple(values)

    def text(self, size: int) -> str:
        if len(self.data) - self.at < size:
            raise CorruptEntryError(f"queue control text truncated at byte {self.at}")
        raw = bytes(self.data[self.at : self.at + size])
        self.at += size
        try:
            return raw.decode()
        except UnicodeDecodeError as e:
            raise CorruptEntryError(f"queue control text is not utf-8: {e}") from None


def _check_attempt(attempt: int) -> int:
    if not 1 <= attempt <= ATTEMPT_MAX:
        raise CorruptEntryError(f"queue control record with attempt {attempt}")
    return attempt


def _decode_ranges(reader: _Reader) -> tuple[tuple[int, int], ...]:
    (count,) = reader.take(_COUNT32)
    ranges = []
    for _ in range(count):
        first, n = reader.take(_RANGE)
        if n == 0:
            raise CorruptEntryError("queue control range of no offsets")
        ranges.append((first, first + n))
    return tuple(ranges)


def _decode_record(reader: _Reader) -> ControlRecord:
    (kind,) = reader.take(_KIND)
    if kind == KIND_DELIVERED:
        cursor, run_count = reader.take(_DELIVERED)
        runs: list[DeliveredRun] = []
        for _ in range(run_count):
            first, count, attempt, keyed = reader.take(_RUN)
            _check_attempt(attempt)
            if count == 0 or keyed not in (0, 1):
                raise CorruptEntryError(f"queue delivery run of {count} (keyed {keyed})")
            # A run is decoded in one step, never per record: a turn delivers
            # thousands of records and every replica decodes them.
            keys = reader.take(struct.Struct(f">{count}I")) if keyed else None
            runs.append(DeliveredRun(first, count, attempt, keys))
        return Delivered(cursor, tuple(runs))
    if kind == KIND_ACKED:
        return Acked(_decode_ranges(reader))
    if kind == KIND_DEAD_LETTERED:
        return DeadLettered(_decode_ranges(reader))
    if kind == KIND_NACKED:
        offset, attempt, due_ms, reason_bytes = reader.take(_NACKED)
        return Nacked(offset, _check_attempt(attempt), due_ms, reader.text(reason_bytes))
    raise CorruptEntryError(f"unknown queue control record kind {kind}")


def decode_control(payload: bytes | memoryview) -> tuple[str, tuple[ControlRecord, ...]]:
    """The group and the control records of a QUEUE_CONTROL payload."""
    reader = _Reader(payload)
    version, group_bytes = reader.take(_HEAD)
    if version != CONTROL_FORMAT_VERSION:
        raise CorruptEntryError(f"unknown queue control format version {version}")
    if group_bytes == 0:
        raise CorruptEntryError("queue control batch names no group")
    group = reader.text(group_bytes)
    (count,) = reader.take(_COUNT16)
    records = tuple(_decode_record(reader) for _ in range(count))
    if reader.at != len(reader.data):
        raise CorruptEntryError(f"{len(reader.data) - reader.at} bytes after queue control records")
    return group, records
