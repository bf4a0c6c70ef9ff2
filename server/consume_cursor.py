"""A subscribed partition's cursor (the next offset to send and the stored batch it is in),
and building a response from it within credit and a size.

Reads are bounded by the credit, not only by a response's size: a read asks
for about as many stored bytes as the records the message credit still
allows take (the partition's recent stored bytes per record times that
count), so a consumer with a credit of 1 reads and checksums one stored
batch per response, not thousands (issue 7). Storage reads at least one
batch, so the estimate only has to be small enough, never exact.

Stored batches are kept between responses so that a batch read in many
small steps is read and checksummed once (reading it again for every
response made consuming a batch of tiny records quadratic, issue 9). What
is kept has two limits in bytes, per stream and node-wide; past either, a
cursor keeps only the batch's base offset and the byte position of its
next record, and reads the batch again (its cost per record stays linear
in the records scanned, it only checksums again).
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Protocol

from weir.cluster.storage import PartitionLog
from weir.server import wire

MiB = 1024 * 1024
CURSOR_STREAM_BYTES_MAX = 16 * MiB
CURSOR_NODE_BYTES_MAX = 64 * MiB
# A limit `wire.take_records` never reaches.
NO_LIMIT = 1 << 62


class Listener(Protocol):
    def on_log_event(self, p: Partition) -> None: ...


@dataclasses.dataclass(slots=True, eq=False)
class Partition:
    """A subscribed partition: its position, its cursor, and its log listener.

    The instance itself is the callback registered with the log (eq=False:
    the log finds it again by identity when it is removed).
    """

    partition: int
    log: PartitionLog
    position: int  # the next offset to send
    stream: Listener | None = None
    queued: bool = False  # in the stream's ready queue
    # Cursor: the stored batch holding `position` (base offset, or -1 when
    # unknown), the byte position of record `position` in its payload, and
    # the payload while it is kept (`kept_bytes` charged to the limits).
    batch_base: int = -1
    batch_records: int = 0
    batch_pos: int = 0
    payload: bytes | None = None
    kept_bytes: int = 0
    # Stored bytes per record in this partition's last read, to size the
    # next read by the message credit (0 before the first read).
    stored_bytes_per_record: int = 0
    # A CREDIT_TOO_SMALL notice was sent and no record since.
    notified: bool = False

    def __call__(self) -> None:
        if self.stream is not None:
            self.stream.on_log_event(self)


@dataclasses.dataclass(slots=True)
class CursorPool:
    """Node-wide: the bytes of stored batches that cursors may still keep."""

    bytes_free: int = CURSOR_NODE_BYTES_MAX


class StreamCursors:
    """The cursors of one stream, and the stored bytes they keep."""

    def __init__(self, pool: CursorPool) -> None:
        self._pool = pool
        self.kept_bytes = 0

    def load(self, p: Partition, base: int, record_count: int, payload: bytes) -> int:
        """Point `p` at its record in `payload`; returns how many records were scanned."""
        if not base <= p.position < base + record_count:
            raise wire.MalformedBatchError(
                f"partition {p.partition}: read batch {base}+{record_count} for offset {p.position}"
            )
        skip = 0
        if base != p.batch_base:
            # First visit of this batch: find the position's byte offset once.
            skip = p.position - base
            p.batch_pos = wire.take_records(payload, 0, skip, NO_LIMIT, NO_LIMIT).end if skip else 0
            p.batch_base = base
        p.payload = payload
        p.batch_records = record_count
        return skip

    def keep(self, p: Partition) -> None:
        """Keep `p`'s partly sent batch for the next response if both limits allow."""
        assert p.payload is not None
        size = len(p.payload)
        pool = self._pool
        if self.kept_bytes + size <= CURSOR_STREAM_BYTES_MAX and pool.bytes_free >= size:
            pool.bytes_free -= size
            self.kept_bytes += size
            p.kept_bytes = size
        else:
            # Over a limit: keep only the batch's base offset and byte position.
            p.payload = None

    def drop(self, p: Partition) -> None:
        """Forget `p`'s batch payload (its base offset and byte position stay)."""
        p.payload = None
        if p.kept_bytes:
            self._pool.bytes_free += p.kept_bytes
            self.kept_bytes -= p.kept_bytes
            p.kept_bytes = 0


@dataclasses.dataclass(slots=True)
class ConsumeStats:
    """Work counters of the whole path, so tests can count work instead of timing it."""

    records_scanned: int = 0  # record headers read by wire.take_records
    stored_bytes_read: int = 0  # payload bytes returned by PartitionLog.read
    listener_calls: int = 0  # wakeups delivered by partition logs
    writer_turns: int = 0  # iterations of every stream's writer loop
    responses: int = 0  # ConsumeResponses written
    budget_waits: int = 0  # responses that waited for budget (a record over the floor)
    notices: int = 0  # CREDIT_TOO_SMALL notices written
    commit_writes: int = 0  # offsets.commit calls (each stores every commit waiting)


@dataclasses.dataclass(slots=True)
class Credit:
    messages: int = 0
    bytes: int = 0

    @property
    def usable(self) -> bool:
        # A record may cost no bytes (no key, empty value, no headers), so
        # only message credit decides whether anything can be sent at all.
        return self.messages > 0


@dataclasses.dataclass(frozen=True, slots=True)
class Built:
    """A response built from one partition, or why there is none."""

    response: bytes | None  # None: nothing fit
    # When only the response's size kept its first record out: that record's
    # bytes in the response (else 0).
    first_record_bytes: int
    # When byte credit kept the first record out: its cost in byte credit
    # (else -1).
    blocked_bytes: int = -1


def build_response(
    p: Partition,
    cursors: StreamCursors,
    credit: Credit,
    stats: ConsumeStats,
    topic_field: bytes,
    framed_bytes_max: int,
) -> Built:
    """One response of records from `p` within credit and `framed_bytes_max`.

    Synchronous, so the stored batches it reads are dropped (except a
    kept cursor) before the response is written.
    """
    if p.position < p.log.start_offset:
        # Retention deleted records this consumer had not read yet; it
        # sees the gap in the next batch's base_offset.
        p.position = p.log.start_offset
        cursors.drop(p)
        p.batch_base = -1
    base_offset = p.position
    end_offset = p.log.end_offset
    parts: list[bytes | memoryview] = []
    messages = charged = framed = first_record_bytes = 0
    blocked_bytes = -1
    fetched: collections.deque[tuple[int, int, bytes]] = collections.deque()
    while p.position < end_offset and messages < credit.messages:
        if p.payload is None:
            if not fetched:
                _read(
                    p,
                    credit.messages - messages,
                    credit.bytes - charged,
                    framed_bytes_max - framed,
                    fetched,
                    stats,
                )
            stats.records_scanned += cursors.load(p, *fetched.popleft())
        payload = p.payload
        assert payload is not None
        start = p.batch_pos
        taken = wire.take_records(
            payload,
            start,
            credit.messages - messages,
            credit.bytes - charged,
            framed_bytes_max - framed,
        )
        stats.records_scanned += taken.count + (taken.blocked_bytes >= 0)
        if taken.count:
            parts.append(memoryview(payload)[start : taken.end])
            messages += taken.count
            charged += taken.charged_bytes
            framed += taken.end - start
            p.position += taken.count
            p.batch_pos = taken.end
        elif not framed and taken.blocked_bytes < 0 and taken.end < len(payload):
            # Only the response's size stopped the first record: say how big it is.
            first_record_bytes = wire.take_records(payload, start, 1, NO_LIMIT, NO_LIMIT).end
            first_record_bytes -= start
        elif not framed:
            blocked_bytes = taken.blocked_bytes
        if taken.end < len(payload):
            break  # a limit stopped it inside this batch; the cursor stays
        if p.position != p.batch_base + p.batch_records:
            raise wire.MalformedBatchError(
                f"partition {p.partition}: batch {p.batch_base} holds "
                f"{p.position - p.batch_base} records, its header says {p.batch_records}"
            )
        cursors.drop(p)
        p.batch_base = -1
    if p.payload is not None and not p.kept_bytes:
        cursors.keep(p)
    if messages == 0:
        return Built(None, first_record_bytes, blocked_bytes)
    credit.messages -= messages
    credit.bytes -= charged
    response = wire.consume_batch_response(topic_field, p.partition, base_offset, end_offset, parts)
    return Built(response, 0)


def _read(
    p: Partition,
    messages: int,
    charge_room: int,
    framed_room: int,
    fetched: collections.deque[tuple[int, int, bytes]],
    stats: ConsumeStats,
) -> None:
    """Read the stored batches from `p.position` that credit and response size may use.

    A record's charge is never more than its stored bytes, so byte credit
    and the response's room bound the bytes worth reading; message credit
    bounds them through the partition's stored bytes per record (1 before
    the first read, so the first read is small and teaches the next).
    """
    per_record = p.stored_bytes_per_record or 1
    bytes_max = min(charge_room, framed_room, messages * per_record)
    payload_bytes = records = 0
    for batch in p.log.read(p.position, max(bytes_max, 1)):
        payload_bytes += len(batch.payload)
        records += batch.record_count
        fetched.append((batch.base_offset, batch.record_count, batch.payload))
    stats.stored_bytes_read += payload_bytes
    if records:
        p.stored_bytes_per_record = max(1, payload_bytes // records)
