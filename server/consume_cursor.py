"""A subscribed partition's cursor (the next offset to send and the stored run it is in),
and building a response from it within credit and a size.

Reads are bounded by the credit, not only by a response's size: a read
asks storage for exactly the records the message credit still allows
(`records_max`: the stored batch holding the last of them is the last one
read), and for no more stored bytes than the response's room and the byte
credit plus a record's framing per record (at most twice the byte credit).
A consumer with a credit of 1 reads and checksums one stored batch per
response, not thousands (issue 7), and one with a credit of 1,000 over
single-record batches reads its response's 1,000 batches in one read
transaction and one cursor walk.

Storage hands back a read as one run: the stored batches' payloads joined
in one copy (offsets are dense, so the run is the records from its base
offset on, in order). A response is a slice of the run behind a few header
fields, so there is no Python object per stored batch on the way out.

A run that a response leaves partly sent is kept for the next response
(only its last batch when the records left are all in it), so that a batch
read in many small steps is read and checksummed once (reading
it again for every response made consuming a batch of tiny records
quadratic, issue 9). What is kept has two limits in bytes, per stream and
node-wide; past either, a cursor keeps only the run's base offset and the
byte position of its next record, and reads again (its cost per record stays
linear in the records scanned, it only checksums again).
"""

from __future__ import annotations

import dataclasses
from typing import Protocol

from weir.cluster.storage import PartitionLog, StoredRun
from weir.server import wire

MiB = 1024 * 1024
CURSOR_STREAM_BYTES_MAX = 16 * MiB
CURSOR_NODE_BYTES_MAX = 64 * MiB
# A limit `wire.take_records` never reaches.
NO_LIMIT = 1 << 62
# Stored bytes of a record beyond its byte credit, without headers: its
# field tag and length (3), key and value tags and lengths (6) and its
# timestamp (11). Sizes a read by the byte credit (see `_read`).
RECORD_FRAMING_BYTES = 20


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
    # Cursor: the stored run holding `position` (its base offset, or -1 when
    # unknown, and its record count), the byte position of record `position`
    # in its payload, and the payload while it is kept (`kept_bytes` charged
    # to the limits).
    run_base: int = -1
    run_records: int = 0
    run_pos: int = 0
    payload: bytes | None = None
    kept_bytes: int = 0
    # Where the run's last stored batch starts: its base offset and its byte
    # position in `payload` (0 once the run is that batch alone).
    last_base: int = -1
    last_start: int = 0
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

    def load(self, p: Partition, run: StoredRun) -> int:
        """Point `p` at its record in `run`; returns how many records were scanned."""
        base, record_count = run.base_offset, run.record_count
        if not base <= p.position < base + record_count:
            raise wire.MalformedBatchError(
                f"partition {p.partition}: read run {base}+{record_count} for offset {p.position}"
            )
        skip = 0
        if base != p.run_base:
            # First visit of a run from this batch: find the position's byte
            # offset once. (A run read again from the same first batch has
            # the same bytes up to the position, so the old one holds.)
            skip = p.position - base
            p.run_pos = (
                wire.take_records(run.payload, 0, skip, NO_LIMIT, NO_LIMIT).end if skip else 0
            )
            p.run_base = base
        p.payload = run.payload
        p.run_records = record_count
        p.last_base = run.last_base_offset
        p.last_start = run.last_start
        return skip

    def keep(self, p: Partition) -> None:
        """Keep `p`'s partly sent run for the next response if both limits allow.

        When only its last stored batch has records left (message credit
        stopped inside a batch of many records), that batch alone is kept,
        as a copy: a cursor holds at most one stored batch, or the rest of
        one response's read.
        """
        assert p.payload is not None
        if 0 < p.last_start <= p.run_pos:
            p.payload = p.payload[p.last_start :]
            p.run_pos -= p.last_start
            p.run_records -= p.last_base - p.run_base
            p.run_base = p.last_base
            p.last_start = 0
        size = len(p.payload)
        pool = self._pool
        if self.kept_bytes + size <= CURSOR_STREAM_BYTES_MAX and pool.bytes_free >= size:
            pool.bytes_free -= size
            self.kept_bytes += size
            p.kept_bytes = size
        else:
            # Over a limit: keep only the run's base offset and byte position.
            p.payload = None

    def drop(self, p: Partition) -> None:
        """Forget `p`'s run payload (its base offset and byte position stay)."""
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

    Synchronous, so the stored runs it reads are dropped (except a kept
    cursor) before the response is written.
    """
    if p.position < p.log.start_offset:
        # Retention deleted records this consumer had not read yet; it
        # sees the gap in the next batch's base_offset.
        p.position = p.log.start_offset
        cursors.drop(p)
        p.run_base = -1
    base_offset = p.position
    end_offset = p.log.end_offset
    parts: list[bytes | memoryview] = []
    messages = charged = framed = first_record_bytes = 0
    blocked_bytes = -1
    while p.position < end_offset and messages < credit.messages:
        if p.payload is None:
            run = _read(
                p,
                credit.messages - messages,
                credit.bytes - charged,
                framed_bytes_max - framed,
                stats,
            )
            stats.records_scanned += cursors.load(p, run)
        payload = p.payload
        assert payload is not None
        start = p.run_pos
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
            p.run_pos = taken.end
        elif not framed and taken.blocked_bytes < 0 and taken.end < len(payload):
            # Only the response's size stopped the first record: say how big it is.
            first_record_bytes = wire.take_records(payload, start, 1, NO_LIMIT, NO_LIMIT).end
            first_record_bytes -= start
        elif not framed:
            blocked_bytes = taken.blocked_bytes
        if taken.end < len(payload):
            break  # a limit stopped it inside this run; the cursor stays
        if p.position != p.run_base + p.run_records:
            raise wire.MalformedBatchError(
                f"partition {p.partition}: run {p.run_base} holds "
                f"{p.position - p.run_base} records, its batch headers say {p.run_records}"
            )
        cursors.drop(p)
        p.run_base = -1
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
    stats: ConsumeStats,
) -> StoredRun:
    """The stored run from `p.position` that credit and the response's room may use.

    Exact in records. In bytes, the response's room bounds the stored bytes
    taken exactly; byte credit bounds them only up to each record's framing
    (a record's charge is its content, what is stored adds its tag, lengths
    and timestamp), so a read may take RECORD_FRAMING_BYTES per record on
    top of the byte credit, but never more than twice the byte credit. A
    bound that falls short costs one more read for the same response;
    storage reads at least one batch.
    """
    framing = min(messages * RECORD_FRAMING_BYTES, charge_room)
    bytes_max = min(framed_room, charge_room + framing)
    run = p.log.read_run(p.position, max(bytes_max, 1), messages)
    # The caller reads below the end offset, which only grows.
    assert run is not None, (p.partition, p.position)
    stats.stored_bytes_read += len(run.payload)
    return run
