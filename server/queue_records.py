"""Queue mode's reads of the partition log: records by offset, as dispatch candidates.

The dispatcher (queue_dispatch.py) hands out records one by one and out of
offset order (a redelivery comes back among newer records), so it reads
records by offset rather than as runs of stored bytes: `read_from` reads
the records from the dispatch cursor on (at most `READ_RECORDS_MAX` and
`READ_BYTES_MAX` of stored bytes at once), `read_one` the stored batch that
holds one offset. Records are decoded (`weir.v1.Record`): a queue delivery
carries its own `Delivery` next to each record, so the consume path's
zero-copy slices of stored bytes (consume_cursor.py) do not fit it.

A record's key hash, which ordered keys compare, is crc32 of the key bytes
(None without a key): the same on every node, so a new leader's applied
state and its live state agree.
"""

from __future__ import annotations

import zlib
from typing import NamedTuple

from weir.cluster.queue import Candidate
from weir.cluster.storage import PartitionLog
from weir.v1 import records_pb2

# One read from the dispatch cursor takes at most this much.
READ_RECORDS_MAX = 256
READ_BYTES_MAX = 1024 * 1024


class QueueRecord(NamedTuple):  # one per record read (cluster/queue/types.py: why)
    """A record read for dispatch: offset, the record, its byte credit and candidate fields."""

    offset: int
    record: records_pb2.Record
    # Its cost in byte credit: key, value, header names and values (Credit in broker.proto).
    charge: int
    key_hash: int | None
    deliver_at_ms: int | None

    def candidate(self) -> Candidate:
        return Candidate(self.offset, self.key_hash, self.deliver_at_ms)


def charge_of(record: records_pb2.Record) -> int:
    charge = len(record.key) + len(record.value)
    if record.headers:  # most records have none: no generator for them
        charge += sum(len(name.encode()) + len(value) for name, value in record.headers.items())
    return charge


def _queue_record(offset: int, record: records_pb2.Record) -> QueueRecord:
    key_hash = zlib.crc32(record.key) if record.HasField("key") else None
    deliver_at = record.deliver_at_ms if record.deliver_at_ms > 0 else None
    return QueueRecord(offset, record, charge_of(record), key_hash, deliver_at)


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
    records = records_pb2.RecordBatch.FromString(run.payload).records
    skip = max(0, offset - run.base_offset)
    # `_queue_record` inlined, the tuple built in C: this runs once per record
    # handed out, on the leader's loop.
    crc32, new = zlib.crc32, tuple.__new__
    out: list[QueueRecord] = []
    for at, record in enumerate(records[skip:] if skip else records, run.base_offset + skip):
        key = record.key
        has_key = record.HasField("key")
        charge = charge_of(record) if record.headers else len(key) + len(record.value)
        deliver_at = record.deliver_at_ms
        key_hash = crc32(key) if has_key else None
        fields = (at, record, charge, key_hash, deliver_at if deliver_at > 0 else None)
        out.append(new(QueueRecord, fields))
    return out


def read_one(log: PartitionLog, offset: int) -> QueueRecord | None:
    """The record at `offset`; None if retention deleted it or it is not committed."""
    if not log.start_offset <= offset < log.end_offset:
        return None
    run = log.read_run(offset, 1, 1)
    if run is None:
        return None
    batch = records_pb2.RecordBatch.FromString(run.payload)
    index = offset - run.base_offset
    if not 0 <= index < len(batch.records):
        return None
    return _queue_record(offset, batch.records[index])
