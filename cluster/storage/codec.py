"""Encoding of stored rows: Raft entries, record batches, group metadata, hard state.

The Raft log is the partition log, so a `log` row is a Raft `Entry` (from
`weir.cluster.raft`, the one vocabulary of entries) behind a fixed header:

    row    = version u8 | type u8 (raft EntryType) | flags u16 (0) | term u64 |
             next_offset u64 | data_bytes u32 | data_crc u32 | header_crc u32 | data

`data` is `Entry.data`, byte for byte, so a row is built with one copy of the
payload and an `Entry` read back with one copy. `next_offset` is the offset
that follows this entry in its partition (derived from the log, identical on
every replica by log matching), so recovery finds the tail offset in the last
row, even when the last entry is a no-op. `header_crc` covers the header
bytes before it (so `term(i)` can trust a header without reading the
payload); `data_crc` covers `data`. LMDB has no page checksums: both are
computed before the put and checked after the get (DESIGN §8).

In a partition group the `data` of every NORMAL entry is a batch:

    batch  = kind u8 (RECORDS=1, CONTROL=2, QUEUE_CONTROL=3) | flags u8 | reserved u16 (0) |
             record_count u32 | base_offset u64 | max_timestamp_ms i64 |
             append_time_ms i64 | [producer] | payload
    producer = producer_id u64 | epoch u32 | first_sequence u32 |
             expiry_ms u64 | producers_max u32 | reserved u32 (0)

Flag DELAYED (0x02) says some record of the payload has a `deliver_at_ms`:
the produce path knows it while it makes the batch canonical, so apply
parses the records of flagged batches only (delay index, delays.py) and
costs batches without delays one flag test.

`producer` is present when flag PRODUCER (0x01) is set: the batch came from
an idempotent producer (producers.py). It carries the leader's expiry and
eviction bounds too, so applying it is the same on every replica. The
payload (the stored `RecordBatch`) stays Weir's canonical encoding either
way, so consumers are served the same bytes.

The leader decides `base_offset` (and the append time) when it proposes
(DESIGN §4 "Offsets at propose time"), so the entry carries everything a
replica needs to write the identical row. CONTROL batches (offset commits),
QUEUE_CONTROL batches (queue ack state), NOOP and CONFIG entries take no offsets.
"""

from __future__ import annotations

import enum
import struct
import zlib
from dataclasses import dataclass

from ..raft.types import ConfState, Entry, EntryType, HardState, NodeId, SnapshotMeta
from .errors import CorruptEntryError
from .producers import ProducerFields

# Version 2: rows are Raft entries (raft EntryType numbers) with batches in `data`.
ENTRY_FORMAT_VERSION = 2
GROUP_META_FORMAT_VERSION = 2
SNAPSHOT_FORMAT_VERSION = 1
DATA_BYTES_MAX = 2**32 - 1

_ROW = struct.Struct(">BBHQQIII")
ROW_HEADER_BYTES = _ROW.size
# header_crc is the last header field, so the bytes it covers are a prefix.
_ROW_CHECKED_BYTES = ROW_HEADER_BYTES - 4

_BATCH = struct.Struct(">BBHIQqq")
BATCH_HEADER_BYTES = _BATCH.size
BATCH_FLAG_PRODUCER = 0x01
BATCH_FLAG_DELAYED = 0x02
BATCH_FLAGS_KNOWN = BATCH_FLAG_PRODUCER | BATCH_FLAG_DELAYED
_PRODUCER = struct.Struct(">QIIQII")
PRODUCER_HEADER_BYTES = _PRODUCER.size
# Where a batch's payload starts inside a stored row.
ROW_PAYLOAD_START = ROW_HEADER_BYTES + BATCH_HEADER_BYTES
# What the read path checks of a row that holds a batch, in one unpack per
# row (PartitionLog's scan; errors are still reported by the decoders):
# version, type, next_offset, data_bytes, data_crc, header_crc of the row,
# kind, flags, record_count, base_offset of the batch. The fields it does not
# need (term, reserved, timestamps) are skipped: fewer objects per row.
ROW_BATCH_CHECKED = struct.Struct(">BB10xQIIIBBxxIQ16x")
assert ROW_BATCH_CHECKED.size == ROW_PAYLOAD_START
assert _ROW.format == ">BBHQQIII" and _BATCH.format == ">BBHIQqq", "update ROW_BATCH_CHECKED"
ROW_CHECKED_BYTES = _ROW_CHECKED_BYTES

# Lookup table: calling the enum class per entry is measurably slow on the read path.
_ENTRY_TYPES = {int(t): t for t in EntryType}


class BatchKind(enum.IntEnum):
    """What the data of a NORMAL entry in a partition group holds."""

    RECORDS = 1
    CONTROL = 2
    # A queue group's per-partition state (acks, nacks, deliveries:
    # weir.cluster.queue.codec). Takes no offsets, like CONTROL.
    QUEUE_CONTROL = 3


_BATCH_KINDS = {int(k): k for k in BatchKind}


@dataclass(frozen=True, slots=True)
class RowHeader:
    entry_type: EntryType
    term: int
    next_offset: int
    data_bytes: int


@dataclass(frozen=True, slots=True)
class BatchHeader:
    kind: BatchKind
    record_count: int
    base_offset: int
    max_timestamp_ms: int
    append_time_ms: int
    producer: ProducerFields | None = None
    # Some record of the payload has a deliver_at_ms (BATCH_FLAG_DELAYED).
    delayed: bool = False

    @property
    def header_bytes(self) -> int:
        """Where the payload starts in the batch (the header with its producer part)."""
        if self.producer is None:
            return BATCH_HEADER_BYTES
        return BATCH_HEADER_BYTES + PRODUCER_HEADER_BYTES

    @property
    def takes_offsets(self) -> bool:
        return self.kind is BatchKind.RECORDS and self.record_count > 0

    @property
    def next_offset(self) -> int:
        return self.base_offset + self.record_count


def encode_row(entry_type: EntryType, term: int, next_offset: int, data: bytes) -> bytes:
    """The stored row of an entry: header, then `data` unchanged."""
    if len(data) > DATA_BYTES_MAX:
        raise ValueError(f"entry data of {len(data)} bytes exceeds {DATA_BYTES_MAX}")
    head = _ROW.pack(
        ENTRY_FORMAT_VERSION,
        int(entry_type),
        0,
        term,
        next_offset,
        len(data),
        zlib.crc32(data),
        0,
    )[:_ROW_CHECKED_BYTES]
    return head + zlib.crc32(head).to_bytes(4, "big") + data


def decode_row_header(value: bytes | memoryview) -> RowHeader:
    """The header, checked by its own crc; the data is not read (see `row_data`)."""
    if len(value) < ROW_HEADER_BYTES:
        raise CorruptEntryError(f"entry of {len(value)} bytes is shorter than its header")
    (version, raw_type, _flags, term, next_offset, data_bytes, _data_crc, header_crc) = (
        _ROW.unpack_from(value)
    )
    if zlib.crc32(memoryview(value)[:_ROW_CHECKED_BYTES]) != header_crc:
        raise CorruptEntryError("entry header failed its checksum")
    if version != ENTRY_FORMAT_VERSION:
        raise CorruptEntryError(f"unknown entry format version {version}")
    if data_bytes != len(value) - ROW_HEADER_BYTES:
        raise CorruptEntryError(
            f"entry declares {data_bytes} data bytes, holds {len(value) - ROW_HEADER_BYTES}"
        )
    entry_type = _ENTRY_TYPES.get(raw_type)
    if entry_type is None:
        raise CorruptEntryError(f"unknown entry type {raw_type}")
    return RowHeader(entry_type, term, next_offset, data_bytes)


def verify_row_data(value: bytes | memoryview) -> memoryview:
    """Checks `data_crc` over the data; returns a view of the data (no copy).

    Call after `decode_row_header` accepted `value` (it checks the lengths).
    """
    view = memoryview(value)
    (stored,) = struct.unpack_from(">I", view, _ROW_CHECKED_BYTES - 4)
    data = view[ROW_HEADER_BYTES:]
    crc = zlib.crc32(data)
    if crc != stored:
        raise CorruptEntryError(
            f"entry checksum mismatch: stored {stored:#010x}, computed {crc:#010x}"
        )
    return data


def decode_row(value: bytes | memoryview, index: int) -> Entry:
    """The Raft entry stored at `index`, both checksums verified; copies the data once."""
    header = decode_row_header(value)
    return Entry(header.term, index, header.entry_type, bytes(verify_row_data(value)))


def encode_batch(
    kind: BatchKind,
    base_offset: int,
    record_count: int,
    max_timestamp_ms: int,
    append_time_ms: int,
    payload: bytes,
    producer: ProducerFields | None = None,
    *,
    delayed: bool = False,
) -> bytes:
    """The `Entry.data` of a NORMAL entry in a partition group.

    `delayed`: some record of `payload` has a `deliver_at_ms` (the caller
    knows; apply then indexes the batch's delays).
    """
    if kind is not BatchKind.RECORDS and record_count != 0:
        raise ValueError("only RECORDS batches carry records")
    if kind is BatchKind.RECORDS and record_count <= 0:
        raise ValueError(f"a batch holds at least one record, got {record_count}")
    if kind is not BatchKind.RECORDS and (producer is not None or delayed):
        raise ValueError("only RECORDS batches carry producer fields or delays")
    flags = BATCH_FLAG_DELAYED if delayed else 0
    if producer is None:
        head = _BATCH.pack(
            int(kind), flags, 0, record_count, base_offset, max_timestamp_ms, append_time_ms
        )
        return head + payload
    head = _BATCH.pack(
        int(kind),
        flags | BATCH_FLAG_PRODUCER,
        0,
        record_count,
        base_offset,
        max_timestamp_ms,
        append_time_ms,
    ) + _PRODUCER.pack(
        producer.producer_id,
        producer.epoch,
        producer.first_sequence,
        producer.expiry_ms,
        producer.producers_max,
        0,
    )
    return head + payload


def encode_control(payload: bytes) -> bytes:
    """A CONTROL batch: takes a Raft index, no offsets (offset commits, ack state)."""
    return encode_batch(BatchKind.CONTROL, 0, 0, 0, 0, payload)


def decode_batch_header(data: bytes | memoryview, at: int = 0) -> BatchHeader:
    """The batch header at `at` in `data` (an Entry's data, or a row at ROW_HEADER_BYTES)."""
    if len(data) - at < BATCH_HEADER_BYTES:
        raise CorruptEntryError(f"batch of {len(data) - at} bytes is shorter than its header")
    raw_kind, flags, _reserved, count, base, max_ts, append_ms = _BATCH.unpack_from(data, at)
    kind = _BATCH_KINDS.get(raw_kind)
    if kind is None:
        raise CorruptEntryError(f"unknown batch kind {raw_kind}")
    if (kind is BatchKind.RECORDS) != (count > 0):
        raise CorruptEntryError(f"{kind.name} batch with {count} records")
    if not flags:
        return BatchHeader(kind, count, base, max_ts, append_ms)
    if flags & ~BATCH_FLAGS_KNOWN or kind is not BatchKind.RECORDS:
        raise CorruptEntryError(f"{kind.name} batch with unknown flags {flags:#04x}")
    delayed = bool(flags & BATCH_FLAG_DELAYED)
    if not flags & BATCH_FLAG_PRODUCER:
        return BatchHeader(kind, count, base, max_ts, append_ms, None, delayed)
    if len(data) - at < BATCH_HEADER_BYTES + PRODUCER_HEADER_BYTES:
        raise CorruptEntryError("batch is shorter than its producer header")
    pid, epoch, first_sequence, expiry_ms, producers_max, _ = _PRODUCER.unpack_from(
        data, at + BATCH_HEADER_BYTES
    )
    producer = ProducerFields(pid, epoch, first_sequence, expiry_ms, producers_max)
    return BatchHeader(kind, count, base, max_ts, append_ms, producer, delayed)


def entry_next_offset(entry: Entry, previous_next_offset: int) -> int:
    """The offset after `entry` in a partition group, given the one before it.

    Asserts that a RECORDS batch starts exactly where the log left off: offsets
    are dense, and every replica derives the same ones from the same prefix.
    """
    if entry.type is not EntryType.NORMAL:
        return previous_next_offset
    batch = decode_batch_header(entry.data)
    if not batch.takes_offsets:
        return previous_next_offset
    assert batch.base_offset == previous_next_offset, (
        f"entry {entry.index}: batch base_offset {batch.base_offset}, "
        f"log continues at {previous_next_offset}"
    )
    return batch.next_offset


def payload_bytes_of(entry_type: EntryType, data: bytes | memoryview, at: int = 0) -> int:
    """Record payload bytes an entry adds to a partition's size (0 unless RECORDS)."""
    if entry_type is not EntryType.NORMAL:
        return 0
    batch = decode_batch_header(data, at)
    if not batch.takes_offsets:
        return 0
    return len(data) - at - batch.header_bytes


# ---- group metadata -------------------------------------------------------------

# version u8 | flags u8 | reserved u16 | first_index u64 | first_offset u64 |
# size_bytes u64 | applied_index u64 | crc32 u32
_GROUP_META = struct.Struct(">BBHQQQQI")
GROUP_META_BYTES = _GROUP_META.size
_GROUP_META_CHECKED_BYTES = GROUP_META_BYTES - 4
GROUP_FLAG_PARTITION = 0x01


@dataclass(frozen=True, slots=True)
class GroupMeta:
    """Durable per-group facts that cannot be derived from the last log key alone.

    first_index/first_offset are the first retained Raft index and offset (the
    snapshot covers everything before); when retention empties the log they
    still say where the next entry goes. size_bytes is the retained record
    payload, so reopening needs no scan. applied_index is the highest entry
    whose offset and time index rows are written (committed-only reads).
    """

    first_index: int
    first_offset: int
    size_bytes: int
    applied_index: int
    partition: bool = True


def encode_group_meta(meta: GroupMeta) -> bytes:
    head = _GROUP_META.pack(
        GROUP_META_FORMAT_VERSION,
        GROUP_FLAG_PARTITION if meta.partition else 0,
        0,
        meta.first_index,
        meta.first_offset,
        meta.size_bytes,
        meta.applied_index,
        0,
    )[:_GROUP_META_CHECKED_BYTES]
    return head + zlib.crc32(head).to_bytes(4, "big")


def decode_group_meta(value: bytes | memoryview) -> GroupMeta:
    if len(value) != GROUP_META_BYTES:
        raise CorruptEntryError(
            f"group_meta row of {len(value)} bytes, expected {GROUP_META_BYTES}"
        )
    version, flags, _, first_index, first_offset, size_bytes, applied, crc = _GROUP_META.unpack(
        value
    )
    if version != GROUP_META_FORMAT_VERSION:
        raise CorruptEntryError(f"unknown group_meta format version {version}")
    if zlib.crc32(bytes(value[:_GROUP_META_CHECKED_BYTES])) != crc:
        raise CorruptEntryError("group_meta row failed its checksum")
    return GroupMeta(
        first_index, first_offset, size_bytes, applied, bool(flags & GROUP_FLAG_PARTITION)
    )


# version u8 | index u64 | term u64 | voters u16 | learners u16 | ids (u32 each) |
# data, then crc32 u32 over everything before it.
_SNAPSHOT_HEAD = struct.Struct(">BQQHH")


def encode_snapshot(meta: SnapshotMeta, data: bytes) -> bytes:
    """The stored snapshot of a group: its metadata, configuration and application bytes."""
    voters, learners = sorted(meta.conf.voters), sorted(meta.conf.learners)
    body = (
        _SNAPSHOT_HEAD.pack(
            SNAPSHOT_FORMAT_VERSION, meta.index, meta.term, len(voters), len(learners)
        )
        + struct.pack(f">{len(voters) + len(learners)}I", *voters, *learners)
        + data
    )
    return body + zlib.crc32(body).to_bytes(4, "big")


def decode_snapshot(value: bytes | memoryview) -> tuple[SnapshotMeta, bytes]:
    raw = bytes(value)
    if len(raw) < _SNAPSHOT_HEAD.size + 4 or zlib.crc32(raw[:-4]) != int.from_bytes(
        raw[-4:], "big"
    ):
        raise CorruptEntryError("snapshot row is damaged")
    version, index, term, n_voters, n_learners = _SNAPSHOT_HEAD.unpack_from(raw)
    if version != SNAPSHOT_FORMAT_VERSION:
        raise CorruptEntryError(f"unknown snapshot format version {version}")
    ids_end = _SNAPSHOT_HEAD.size + 4 * (n_voters + n_learners)
    if ids_end > len(raw) - 4:
        raise CorruptEntryError("snapshot row is damaged")
    ids: tuple[NodeId, ...] = struct.unpack_from(
        f">{n_voters + n_learners}I", raw, _SNAPSHOT_HEAD.size
    )
    conf = ConfState(frozenset(ids[:n_voters]), frozenset(ids[n_voters:]))
    return SnapshotMeta(index, term, conf), raw[ids_end:-4]


# The application bytes of a partition group's snapshot start with the offset
# that follows the snapshot's index: a follower that installs the snapshot has
# none of the rows before it, so this is how it learns where its offsets go on.
# Version 2 adds the partition's producer table (producers.py), version 3 its
# queue table (queues.py), which the follower takes over as they are; versions
# 1 (neither) and 2 (no queues) still decode.
_PARTITION_SNAPSHOT = struct.Struct(">BQ")
_TABLE_BYTES = struct.Struct(">I")
PARTITION_SNAPSHOT_FORMAT_VERSION = 3


@dataclass(frozen=True, slots=True)
class PartitionSnapshot:
    """The parts of a partition group's snapshot data."""

    next_offset: int
    producers: bytes
    queues: bytes
    app_state: bytes


def encode_partition_snapshot(
    next_offset: int, app_state: bytes = b"", producers: bytes = b"", queues: bytes = b""
) -> bytes:
    """`Snapshot.data` for a partition group (what the host passes to `RawNode.compact`).

    `producers` is `producers.encode_table` of the partition's table and
    `queues` `queues.encode_table` of its queue groups, each empty for none.
    """
    return (
        _PARTITION_SNAPSHOT.pack(PARTITION_SNAPSHOT_FORMAT_VERSION, next_offset)
        + _TABLE_BYTES.pack(len(producers))
        + producers
        + _TABLE_BYTES.pack(len(queues))
        + queues
        + app_state
    )


def split_partition_snapshot(data: bytes) -> PartitionSnapshot:
    if len(data) < _PARTITION_SNAPSHOT.size:
        raise CorruptEntryError(f"partition snapshot of {len(data)} bytes is too short")
    version, next_offset = _PARTITION_SNAPSHOT.unpack_from(data)
    at = _PARTITION_SNAPSHOT.size
    if version == 1:
        return PartitionSnapshot(next_offset, b"", b"", data[at:])
    if version not in (2, PARTITION_SNAPSHOT_FORMAT_VERSION):
        raise CorruptEntryError(f"unknown partition snapshot format version {version}")
    tables = []
    for name in ("producer", "queue")[: version - 1]:
        if len(data) < at + _TABLE_BYTES.size:
            raise CorruptEntryError(f"partition snapshot is too short for its {name} table")
        (size,) = _TABLE_BYTES.unpack_from(data, at)
        at += _TABLE_BYTES.size
        if len(data) < at + size:
            raise CorruptEntryError(f"partition snapshot's {name} table is truncated")
        tables.append(data[at : at + size])
        at += size
    producers = tables[0]
    queues = tables[1] if len(tables) > 1 else b""
    return PartitionSnapshot(next_offset, producers, queues, data[at:])


def decode_partition_snapshot(data: bytes) -> tuple[int, bytes]:
    """Returns (next offset, application state) of a partition group's snapshot data."""
    parts = split_partition_snapshot(data)
    return parts.next_offset, parts.app_state


def partition_snapshot_producers(data: bytes) -> bytes:
    """The encoded producer table of a partition snapshot (empty: none)."""
    return split_partition_snapshot(data).producers


def partition_snapshot_queues(data: bytes) -> bytes:
    """The encoded queue table of a partition snapshot (empty: none)."""
    return split_partition_snapshot(data).queues


# ---- hard state -------------------------------------------------------------------

HARD_STATE_FORMAT_VERSION = 1
# version u8 | term u64 | vote u32 (0: none; node ids start at 1) | commit u64 | crc32 u32
_HARD_STATE = struct.Struct(">BQIQI")
_HARD_STATE_CHECKED_BYTES = _HARD_STATE.size - 4


def encode_hard_state(state: HardState) -> bytes:
    head = _HARD_STATE.pack(HARD_STATE_FORMAT_VERSION, state.term, state.vote, state.commit, 0)
    crc = zlib.crc32(head[:_HARD_STATE_CHECKED_BYTES])
    return head[:_HARD_STATE_CHECKED_BYTES] + crc.to_bytes(4, "big")


def decode_hard_state(value: bytes | memoryview) -> HardState:
    # A damaged vote could let a node vote twice in a term: checked like entries.
    if len(value) != _HARD_STATE.size:
        raise CorruptEntryError(f"hardstate row of {len(value)} bytes, expected {_HARD_STATE.size}")
    version, term, vote, commit, crc = _HARD_STATE.unpack(value)
    if version != HARD_STATE_FORMAT_VERSION:
        raise CorruptEntryError(f"unknown hardstate format version {version}")
    if zlib.crc32(bytes(value[:_HARD_STATE_CHECKED_BYTES])) != crc:
        raise CorruptEntryError("hardstate row failed its checksum")
    return HardState(term, vote, commit)
