"""Queue groups' applied state on one partition: applied from QUEUE_CONTROL entries, stored, snapshotted.

Queue mode keeps each queue group's per-partition state in the partition's
own log as QUEUE_CONTROL batches (weir.cluster.queue.codec; docs/groups.md
"Queue mode"). `QueueTable` is that state for every queue group of one
partition: a name -> `AppliedQueueState` map that every replica updates in
log order when it applies such an entry (cluster: `LmdbRaftStorage.
apply_entries`; single node: `PartitionLog.append_queue_control`, which
applies at once), as the producer table (producers.py) is updated from
RECORDS batches.

Stored like the producer table: one row per (partition, queue group) in the
`queue_state` database, written in the same writer op as the entry's apply
(so a restart loads it and replays nothing), carried in partition
snapshots (`encode_table` / `decode_table`) and deleted with the partition.
A row holds the group's whole state, rewritten when an apply changes it
(once per writer op, whatever the number of entries): its size is bounded
by what the leader bounds (`queue_pending_max`), but a large state costs
its size on every turn that changes it (docs/storage.md "Queue state").
Records delivered once and in flight, most of a busy group's state, are
ranges in the row (format version 2), so that size is mostly what was
nacked, redelivered or keyed.

Apply is total: a payload that does not decode (a leader validates what it
proposes, so only damage or a bug gets here) is logged, counted
(`malformed_entries`) and changes nothing, on every replica alike.

A snapshot's table may be newer than its index (the leader encodes the
table as applied, not as of the compaction point), so a table knows the
raft index it covers (`covered_index`): entries at or below it are already
reflected and their apply changes nothing. QUEUE_CONTROL entries take no
offsets, so the index, not an offset as for producers, is what tells.
"""

from __future__ import annotations

import logging
import struct
import zlib
from collections.abc import Iterable, Iterator, Sequence

from ..queue import codec as queue_codec
from ..queue.applied import SNAPSHOT_VERSION, AppliedQueueState, PendingRecord
from ..queue.errors import QueueGroupsFull
from ..queue.types import Acked, ControlRecord, DeadLettered, Delivered, Nacked
from .errors import CorruptEntryError

logger = logging.getLogger(__name__)

# A partition's queue groups, checked at the leader before a new group's first
# control entry (`QueueTable.check_group`); apply takes what leaders wrote.
QUEUE_GROUPS_PER_PARTITION_MAX_DEFAULT = 1_000
# Stale pending encodings kept per group beyond twice its pending records.
PACKED_SLACK = 64
# Entries decoded ahead of their apply that are kept (QueueTable.decode).
DECODED_KEPT_MAX = 256
ROW_FORMAT_VERSION = 2
# Version 1 rows (no plain ranges: every pending record listed) are still read.
ROW_FORMAT_VERSIONS_READ = (1, 2)
TABLE_FORMAT_VERSION = 1
# What a row's key costs (keys.queue_key), and a deleted row.
QUEUE_KEY_BYTES = 21

# version u8 | name_bytes u16 | name | low_watermark u64 | cursor u64 |
# dead_lettered_total u64 | range_count u32 | (first u64 | end u64)* |
# plain_count u32 | (first u64 | end u64)* (not in version 1) |
# pending_count u32 | pending* | crc32 u32
# where the plain ranges are records delivered once, without a key, never
# nacked (applied.PLAIN), and pending lists every other pending record:
# pending = offset u64 | attempt u32 | flags u8 (1: key hash, 2: due time) |
#           key_hash u32 | due_ms i64 | error_bytes u16 | error utf-8
_ROW_HEAD = struct.Struct(">BH")
_ROW_NUMBERS = struct.Struct(">QQQ")
_COUNT = struct.Struct(">I")
_RANGE = struct.Struct(">QQ")
_PENDING = struct.Struct(">QIBIqH")
_FLAG_KEY = 0x01
_FLAG_DUE = 0x02
_CRC_BYTES = 4
ROW_FIXED_BYTES = _ROW_HEAD.size + _ROW_NUMBERS.size + 3 * _COUNT.size + _CRC_BYTES
PENDING_FIXED_BYTES = _PENDING.size
RANGE_BYTES = _RANGE.size
# version u8 | covered_index u64 | count u32, then per group row_bytes u32 | row; crc32 u32.
_TABLE_HEAD = struct.Struct(">BQI")


class QueueTable:
    """One partition's queue groups and their applied state."""

    def __init__(
        self, groups: Iterable[tuple[str, AppliedQueueState]] = (), covered_index: int = 0
    ) -> None:
        self._groups: dict[str, AppliedQueueState] = dict(groups)
        # Encoded size of each group's row as last written or loaded: the
        # base of the writer budget an apply reserves (`apply_bytes_max`).
        self._row_bytes: dict[str, int] = {
            name: len(encode_row(name, state)) for name, state in self._groups.items()
        }
        # Entries at or below this raft index are already reflected.
        self.covered_index = covered_index
        # Payloads that did not decode (logged and skipped) since this table was loaded.
        self.malformed_entries = 0
        # Entries decoded for the writer budget (`decode(..., quiet=True)`, before
        # the apply) by raft index, so that their apply does not decode again.
        self._decoded: dict[int, tuple[str, tuple[ControlRecord, ...]]] = {}
        # Per group, its pending records' encodings (`encode_row`).
        self._packed: dict[str, PackedPending] = {}

    def __len__(self) -> int:
        return len(self._groups)

    def __contains__(self, name: object) -> bool:
        return name in self._groups

    def get(self, name: str) -> AppliedQueueState | None:
        """The group's applied state (the live object: callers must not change it)."""
        return self._groups.get(name)

    def names(self) -> list[str]:
        return sorted(self._groups)

    def items(self) -> Iterator[tuple[str, AppliedQueueState]]:
        for name in sorted(self._groups):
            yield name, self._groups[name]

    def snapshot(self) -> dict[str, object]:
        """Plain data, deterministic: what replicas compare."""
        return {name: state.snapshot() for name, state in self.items()}

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, QueueTable):
            return NotImplemented
        return self.snapshot() == other.snapshot()

    def __repr__(self) -> str:
        return f"QueueTable({self.names()!r}, covered_index={self.covered_index})"

    # ---- the leader's check ----------------------------------------------------------

    def check_group(
        self, name: str, groups_max: int, proposed: Iterable[str] = ()
    ) -> QueueGroupsFull | None:
        """None if a control entry of queue group `name` may be proposed.

        A group this partition knows always may; a new one only while the
        partition has fewer than `groups_max` groups, counting `proposed`
        (new groups the leader proposed that are not applied yet).
        """
        if name in self._groups:
            return None
        known = len(self._groups) + sum(1 for p in set(proposed) if p != name and p not in self)
        if known < groups_max:
            return None
        return QueueGroupsFull(
            f"this partition has {known} queue groups, the most it keeps "
            f"(queue_groups_per_partition_max {groups_max}); delete unused queue groups "
            "or use a stream group"
        )

    # ---- apply -----------------------------------------------------------------------

    def decode(
        self, index: int, payload: bytes | memoryview, *, quiet: bool = False
    ) -> tuple[str, tuple[ControlRecord, ...]] | None:
        """The group and records of the QUEUE_CONTROL entry at `index`, None to skip it
        (already covered, or malformed: logged and counted unless `quiet`)."""
        if index <= self.covered_index:
            return None
        decoded = self._decoded.pop(index, None) if not quiet else None
        if decoded is not None:
            return decoded
        try:
            decoded = queue_codec.decode_control(payload)
        except CorruptEntryError as e:
            if quiet:
                return None
            self.malformed_entries += 1
            logger.warning("queue control entry %d is malformed and changes nothing: %s", index, e)
            return None
        if quiet:
            # Kept for the apply that follows (the same committed entry); bounded
            # to what one Ready carries, and dropped if that apply never comes.
            if len(self._decoded) >= DECODED_KEPT_MAX:
                self._decoded.clear()
            self._decoded[index] = decoded
        return decoded

    def apply(self, index: int, payload: bytes | memoryview) -> str | None:
        """Applies one QUEUE_CONTROL entry; returns the group it changed (None: nothing)."""
        decoded = self.decode(index, payload)
        if decoded is None:
            return None
        name, records = decoded
        state = self._groups.get(name)
        if state is None:
            state = self._groups[name] = AppliedQueueState()
        for record in records:
            state.apply(record)
        # Known again when its row is encoded (the writer op of this apply).
        self._row_bytes.pop(name, None)
        return name

    def row(self, name: str) -> bytes:
        """The group's row as it stands (and its size remembered for the next bound)."""
        value = encode_row(name, self._groups[name], self._packed.setdefault(name, {}))
        self._row_bytes[name] = len(value)
        return value

    def apply_bytes_max(self, decoded: Iterable[tuple[str, Sequence[ControlRecord]]]) -> int:
        """An upper bound of the rows that applying `decoded` writes (writer budget)."""
        base: dict[str, int] = {}
        growth = 0
        for name, records in decoded:
            if name not in base:
                state = self._groups.get(name)
                if state is None:
                    known = ROW_FIXED_BYTES + len(name.encode())
                else:
                    known = self._row_bytes.get(name) or self._row_size(name, state)
                base[name] = QUEUE_KEY_BYTES + known
            growth += sum(_growth_bytes(r) for r in records)
        return sum(base.values()) + growth

    def _row_size(self, name: str, state: AppliedQueueState) -> int:
        size = len(encode_row(name, state))
        self._row_bytes[name] = size
        return size

    def forget(self, name: str) -> None:
        """Drops a group from memory (its row was not written: a failed single-node append)."""
        self._groups.pop(name, None)
        self._row_bytes.pop(name, None)
        self._packed.pop(name, None)

    def put(self, name: str, state: AppliedQueueState) -> None:
        """Sets a group's state as loaded from its row (the undo of a failed append)."""
        self._groups[name] = state
        self._row_bytes[name] = len(encode_row(name, state))

    def replace(self, other: QueueTable) -> None:
        """Takes `other`'s contents (a snapshot installed from the leader)."""
        self._decoded.clear()
        self._packed.clear()
        self._groups = dict(other._groups)
        self._row_bytes = dict(other._row_bytes)
        self.covered_index = other.covered_index


def _growth_bytes(record: ControlRecord) -> int:
    """How much applying `record` can grow a row, at most: a new range, or a
    record listed on its own plus the split of the plain range it left."""
    match record:
        case Delivered(_, runs):
            return sum(
                RANGE_BYTES * count
                if attempt == 1 and keys is None
                else (PENDING_FIXED_BYTES + RANGE_BYTES) * count
                for _, count, attempt, keys in runs
            )
        case Nacked(_, _, _, reason):
            return PENDING_FIXED_BYTES + RANGE_BYTES + len(reason.encode())
        case Acked(ranges) | DeadLettered(ranges):
            # An acked range, and the split of a plain range it cut.
            return 2 * RANGE_BYTES * len(ranges)
    raise AssertionError(f"not a control record: {record!r}")


# ---- encodings: a row per group, and the whole table for snapshots --------------------


PackedPending = dict[int, tuple[PendingRecord, bytes]]


def _pack_pending(offset: int, record: PendingRecord) -> bytes:
    error = record.last_error.encode()
    flags = (_FLAG_KEY if record.key_hash is not None else 0) | (
        _FLAG_DUE if record.due_ms is not None else 0
    )
    return (
        _PENDING.pack(
            offset, record.attempt, flags, record.key_hash or 0, record.due_ms or 0, len(error)
        )
        + error
    )


def encode_row(name: str, state: AppliedQueueState, packed: PackedPending | None = None) -> bytes:
    """The group's row. `packed` (offset -> (record, its bytes)) remembers the
    pending records' encodings across calls: a row is written on every turn that
    changes the group, and most of its pending records did not change since the
    last (a record is replaced, never changed in place, so `is` tells)."""
    raw_name = name.encode()
    parts = [
        _ROW_HEAD.pack(ROW_FORMAT_VERSION, len(raw_name)),
        raw_name,
        _ROW_NUMBERS.pack(state.acked.low_watermark, state.cursor, state.dead_lettered_total),
        _COUNT.pack(len(state.acked)),
    ]
    parts.extend(_RANGE.pack(first, end) for first, end in state.acked.ranges())
    plain = state.pending.plain
    parts.append(_COUNT.pack(len(plain)))
    parts.extend(_RANGE.pack(first, end) for first, end in plain.ranges())
    other = state.pending.other
    parts.append(_COUNT.pack(len(other)))
    if packed is None:
        parts.extend(_pack_pending(offset, other[offset]) for offset in sorted(other))
    else:
        for offset in sorted(other):
            record = other[offset]
            hit = packed.get(offset)
            if hit is None or hit[0] is not record:
                hit = packed[offset] = (record, _pack_pending(offset, record))
            parts.append(hit[1])
        if len(packed) > 2 * len(other) + PACKED_SLACK:
            for offset in [o for o in packed if o not in other]:
                del packed[offset]
    body = b"".join(parts)
    return body + zlib.crc32(body).to_bytes(_CRC_BYTES, "big")


def decode_row(value: bytes | memoryview) -> tuple[str, AppliedQueueState]:
    raw = bytes(value)
    # The shortest row there is: version 1's, which has no plain ranges' count.
    if len(raw) < ROW_FIXED_BYTES - _COUNT.size or zlib.crc32(raw[:-_CRC_BYTES]) != int.from_bytes(
        raw[-_CRC_BYTES:], "big"
    ):
        raise CorruptEntryError("queue state row is damaged")
    end = len(raw) - _CRC_BYTES
    try:
        version, name_bytes = _ROW_HEAD.unpack_from(raw)
        if version not in ROW_FORMAT_VERSIONS_READ:
            raise CorruptEntryError(f"unknown queue state format version {version}")
        at = _ROW_HEAD.size
        name = raw[at : at + name_bytes].decode()
        at += name_bytes
        low_watermark, cursor, dead_lettered_total = _ROW_NUMBERS.unpack_from(raw, at)
        at += _ROW_NUMBERS.size
        (range_count,) = _COUNT.unpack_from(raw, at)
        at += _COUNT.size
        acked = []
        for _ in range(range_count):
            acked.append(list(_RANGE.unpack_from(raw, at)))
            at += _RANGE.size
        plain = []
        if version >= 2:
            (plain_count,) = _COUNT.unpack_from(raw, at)
            at += _COUNT.size
            for _ in range(plain_count):
                plain.append(list(_RANGE.unpack_from(raw, at)))
                at += _RANGE.size
        (pending_count,) = _COUNT.unpack_from(raw, at)
        at += _COUNT.size
        pending = []
        for _ in range(pending_count):
            offset, attempt, flags, key_hash, due_ms, error_bytes = _PENDING.unpack_from(raw, at)
            at += _PENDING.size
            if at + error_bytes > end:
                raise CorruptEntryError("queue state row is truncated")
            error = raw[at : at + error_bytes].decode()
            at += error_bytes
            pending.append(
                [
                    offset,
                    attempt,
                    key_hash if flags & _FLAG_KEY else None,
                    due_ms if flags & _FLAG_DUE else None,
                    error,
                ]
            )
        if at != end:
            raise CorruptEntryError("queue state row has the wrong length")
        state = AppliedQueueState.restore(
            {
                "version": SNAPSHOT_VERSION,
                "low_watermark": low_watermark,
                "acked": acked,
                "cursor": cursor,
                "plain": plain,
                "pending": pending,
                "dead_lettered_total": dead_lettered_total,
            }
        )
    except (struct.error, UnicodeDecodeError, AssertionError, ValueError) as e:
        # restore() checks the state's invariants: a row that breaks them is damage.
        if isinstance(e, CorruptEntryError):
            raise
        raise CorruptEntryError(f"queue state row is damaged: {e}") from None
    return name, state


def encode_table(table: QueueTable, applied_index: int) -> bytes:
    """The table for a partition snapshot, as applied up to `applied_index`."""
    items = list(table.items())
    parts = [
        _TABLE_HEAD.pack(TABLE_FORMAT_VERSION, max(table.covered_index, applied_index), len(items))
    ]
    for name, state in items:
        row = encode_row(name, state)
        parts.append(_COUNT.pack(len(row)))
        parts.append(row)
    body = b"".join(parts)
    return body + zlib.crc32(body).to_bytes(_CRC_BYTES, "big")


def decode_table(data: bytes | memoryview) -> QueueTable:
    raw = bytes(data)
    if len(raw) < _TABLE_HEAD.size + _CRC_BYTES or zlib.crc32(raw[:-_CRC_BYTES]) != int.from_bytes(
        raw[-_CRC_BYTES:], "big"
    ):
        raise CorruptEntryError("queue table in a snapshot is damaged")
    version, covered_index, count = _TABLE_HEAD.unpack_from(raw)
    if version != TABLE_FORMAT_VERSION:
        raise CorruptEntryError(f"unknown queue table format version {version}")
    at = _TABLE_HEAD.size
    end = len(raw) - _CRC_BYTES
    groups = []
    for _ in range(count):
        if at + _COUNT.size > end:
            raise CorruptEntryError("queue table in a snapshot is truncated")
        (size,) = _COUNT.unpack_from(raw, at)
        at += _COUNT.size
        if at + size > end:
            raise CorruptEntryError("queue table in a snapshot is truncated")
        groups.append(decode_row(raw[at : at + size]))
        at += size
    if at != end:
        raise CorruptEntryError("queue table in a snapshot has trailing bytes")
    return QueueTable(groups, covered_index)


__all__ = [
    "QUEUE_GROUPS_PER_PARTITION_MAX_DEFAULT",
    "QUEUE_KEY_BYTES",
    "QueueTable",
    "decode_row",
    "decode_table",
    "encode_row",
    "encode_table",
]
