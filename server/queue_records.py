"""Queue mode's reads of the partition log: records by offset, as dispatch candidates.

The dispatcher (queue_dispatch.py) hands out records one by one and out of
offset order (a redelivery comes back among newer records), so it reads
records by offset rather than as runs of stored bytes: `read_from` reads
the records from the dispatch cursor on (at most `READ_RECORDS_MAX` and
`READ_BYTES_MAX` of stored bytes at once), `read_one` the stored batch that
holds one offset. Each record keeps its stored bytes (`QueueRecord.framed`),
which a response carries unchanged next to the `Delivery` built for it
(server/wire.py `queue_batch_response`); only the fields dispatch needs
are read from them (`parse_records`).

A record's key hash, which ordered keys compare, is crc32 of the key bytes
(None without a key): the same on every node, so a new leader's applied
state and its live state agree.
"""

from __future__ import annotations

import zlib
from typing import NamedTuple

from google.protobuf.message import DecodeError

from weir.cluster.queue import Candidate
from weir.cluster.storage import PartitionLog
from weir.server.wire import RECORDS_TAG, MalformedBatchError, varint_at
from weir.v1 import records_pb2

# One read from the dispatch cursor takes at most this much.
READ_RECORDS_MAX = 256
READ_BYTES_MAX = 1024 * 1024


class QueueRecord(NamedTuple):  # one per record read (cluster/queue/types.py: why)
    """A record read for dispatch: offset, its stored bytes, its byte credit and candidate fields."""

    offset: int
    # The record as one `records` field (tag, length, `weir.v1.Record`), as
    # stored: `ConsumedBatch.records` has the same field number, so a
    # response carries these bytes unchanged (server/wire.py).
    framed: bytes
    # Its cost in byte credit: key, value, header names and values (Credit in broker.proto).
    charge: int
    key_hash: int | None
    deliver_at_ms: int | None

    def candidate(self) -> Candidate:
        return Candidate(self.offset, self.key_hash, self.deliver_at_ms)

    def decoded(self) -> records_pb2.Record:
        """The record itself (dead-lettering needs its fields)."""
        length, body = varint_at(self.framed, 1)
        return records_pb2.Record.FromString(self.framed[body : body + length])


def charge_of(record: records_pb2.Record) -> int:
    charge = len(record.key) + len(record.value)
    if record.headers:  # most records have none: no generator for them
        charge += sum(len(name.encode()) + len(value) for name, value in record.headers.items())
    return charge


def read_from(
    log: PartitionLog, offset: int, records_max: int = READ_RECORDS_MAX
) -> list[QueueRecord]:
    """The committed records from `offset` on (dense), bounded; [] at the end.

    Raises `OffsetOutOfRangeError` below the log start (the caller writes
    those records off first, see `AppliedQueueState.below_log_start`).
    """
    run = log.read_run(offset, READ_BYTES_MAX, max(1, min(records_max, READ_RECORDS_MAX)))
    if run is None:
        return []
    return parse_records(run.payload, run.base_offset, offset)


def read_one(log: PartitionLog, offset: int) -> QueueRecord | None:
    """The record at `offset`; None if retention deleted it or it is not committed."""
    if not log.start_offset <= offset < log.end_offset:
        return None
    run = log.read_run(offset, 1, 1)
    if run is None:
        return None
    found = parse_records(run.payload, run.base_offset, offset)
    return found[0] if found and found[0].offset == offset else None


def parse_records(payload: bytes, base_offset: int, offset: int) -> list[QueueRecord]:
    """The records of stored `payload` (record i has offset `base_offset + i`) from `offset` on.

    One pass over the bytes, as `take_records` (server/wire.py) reads them:
    stored records are the broker's own encoding, fields in number order.
    For the usual record (a value, maybe a key, a timestamp) the key hash,
    the charge and `deliver_at_ms` come from the bytes; a record with
    headers or anything unusual is decoded by protobuf. This runs once per
    record handed out, on the leader's loop: decoding every record with
    protobuf and re-encoding it into the response cost about twice as much.
    """
    size = len(payload)
    crc32, new = zlib.crc32, tuple.__new__
    out: list[QueueRecord] = []
    at = base_offset
    pos = 0
    try:
        while pos < size:
            if payload[pos] != RECORDS_TAG:
                raise MalformedBatchError(f"unexpected tag {payload[pos]:#x} at byte {pos}")
            length = payload[pos + 1]
            if length < 0x80:
                body = pos + 2
            else:
                length, body = varint_at(payload, pos + 1)
            end = body + length
            if end > size:
                raise MalformedBatchError(f"record at byte {pos} runs past the end of its batch")
            if at < offset:
                at += 1
                pos = end
                continue
            key_hash: int | None = None
            charge = 0
            deliver_at: int | None = None
            p = body
            tag = payload[p] if p < end else 0
            if tag == 0x0A:  # key
                n = payload[p + 1]
                if n < 0x80:
                    p += 2
                else:
                    n, p = varint_at(payload, p + 1)
                key_hash = crc32(payload[p : p + n])
                charge = n
                p += n
                tag = payload[p] if p < end else 0
            if tag == 0x12:  # value
                n = payload[p + 1]
                if n < 0x80:
                    p += 2
                else:
                    n, p = varint_at(payload, p + 1)
                charge += n
                p += n
                tag = payload[p] if p < end else 0
            if tag == 0x20:  # timestamp_ms: skipped
                # Usually the last field: one varint up to the record's end
                # (every byte but the last has its high bit set).
                if (
                    end - p <= 11
                    and payload[end - 1] < 0x80
                    and (end - p == 2 or min(payload[p + 1 : end - 1]) >= 0x80)
                ):
                    p = end
                else:
                    _, p = varint_at(payload, p + 1)
                    tag = payload[p] if p < end else 0
            if tag == 0x28 and p < end:  # deliver_at_ms
                value, p = varint_at(payload, p + 1)
                deliver_at = value if 0 < value < 1 << 63 else None
            if p != end:
                # Headers (or anything else): protobuf reads the record.
                try:
                    record = records_pb2.Record.FromString(payload[body:end])
                except DecodeError:
                    raise MalformedBatchError(f"record at byte {pos} does not decode") from None
                key_hash = crc32(record.key) if record.HasField("key") else None
                charge = charge_of(record)
                value = record.deliver_at_ms
                deliver_at = value if value > 0 else None
            fields = (at, payload[pos:end], charge, key_hash, deliver_at)
            out.append(new(QueueRecord, fields))
            at += 1
            pos = end
    except IndexError:
        raise MalformedBatchError(f"a record at byte {pos} is cut off") from None
    return out
