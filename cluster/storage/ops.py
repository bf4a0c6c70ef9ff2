"""The write operations the group-commit writer applies, one class per kind.

Each op's `apply` runs in the writer thread inside the turn's transaction.
The time index is maintained here rather than on the event loop because its
"running max" depends on retention deletes that are still queued: only the
writer sees every op in FIFO order, so only it can keep the index exact.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

from ..raft.types import EntryType
from . import keys
from .codec import ROW_HEADER_BYTES, decode_batch_header, decode_row_header
from .delays import DELAY_ROW_BYTES, DelayedRecord, delete_delays_below, write_delays
from .lmdbenv import Db, WriteTxn
from .writer import Turn, WriteOp


def _load_time_head(group_id: int) -> Callable[[WriteTxn], int | None]:
    """Reads the running max timestamp: the ts of the group's last time index row."""

    def load(txn: WriteTxn) -> int | None:
        row = txn.last_below(Db.TIME_INDEX, keys.group_end(group_id), keys.group_key(group_id))
        if row is None:
            return None
        _, timestamp_ms, _ = keys.parse_time_key(row[0])
        return timestamp_ms

    return load


class IndexRow(NamedTuple):
    """The offset (and maybe time and delay) index rows of one applied RECORDS batch."""

    raft_index: int
    base_offset: int
    max_timestamp_ms: int
    # The batch's records with a deliver_at_ms (only DELAYED batches have any).
    delays: Sequence[DelayedRecord] = ()


class LogWriteOp(WriteOp):
    """Writes a group's log rows and/or the index rows of applied entries.

    The one op of the log paths: a Raft append (rows, maybe after deleting a
    conflicting suffix from `truncate_from` on), an apply (index rows and the
    applied index in `group_meta`, DESIGN §4 "Committed-only reads"), and the
    single-node append, which is both at once (applied on commit).

    `group_meta` (encoded) is written too when given; within a turn the last
    op's value wins, which is the newest state because ops keep FIFO order.
    """

    __slots__ = (
        "group_id",
        "group_meta",
        "index_rows",
        "producer_rows",
        "queue_rows",
        "rows",
        "truncate_from",
    )

    def __init__(
        self,
        group_id: int,
        rows: Sequence[tuple[int, bytes]],
        *,
        truncate_from: int | None = None,
        index_rows: Sequence[IndexRow] = (),
        group_meta: bytes | None,
        producer_rows: Sequence[tuple[int, bytes | None]] = (),
        queue_rows: Sequence[tuple[bytes, bytes | None]] = (),
        on_commit: Callable[[], None] | None = None,
        on_fail: Callable[[], None] | None = None,
    ) -> None:
        size = (
            sum(len(row) for _, row in rows)
            + INDEX_ROW_BYTES * len(index_rows)
            + DELAY_ROW_BYTES * sum(len(row.delays) for row in index_rows)
            + producer_rows_bytes(producer_rows)
            + queue_rows_bytes(queue_rows)
        )
        super().__init__(size, on_commit, on_fail=on_fail)
        self.group_id = group_id
        self.rows = rows
        self.truncate_from = truncate_from
        self.index_rows = index_rows
        self.group_meta = group_meta
        # (producer id, encoded state or None to delete) of applied entries.
        self.producer_rows = producer_rows
        # (key, encoded state or None to delete) of queue groups that applied
        # entries changed (queues.py).
        self.queue_rows = queue_rows

    def apply(self, turn: Turn) -> None:
        group_id = self.group_id
        if self.truncate_from is not None:
            self._truncate_suffix(turn, self.truncate_from)
        for raft_index, row in self.rows:
            turn.put(Db.LOG, keys.log_key(group_id, raft_index), row)
        for raft_index, base_offset, max_timestamp_ms, delays in self.index_rows:
            if delays:
                write_delays(turn, group_id, delays)
            index_value = keys.pack_u64(raft_index)
            turn.put(Db.OFFSET_INDEX, keys.offset_key(group_id, base_offset), index_value)
            head = turn.time_head(group_id, _load_time_head(group_id))
            # Index only batches that raise the running max (Kafka's time
            # index): then the first row >= t names the first batch whose
            # own max timestamp is >= t, even with unordered producer clocks.
            if head is None or max_timestamp_ms > head:
                turn.put(
                    Db.TIME_INDEX,
                    keys.time_key(group_id, max_timestamp_ms, base_offset),
                    index_value,
                )
                turn.set_time_head(group_id, max_timestamp_ms)
        for producer_id, value in self.producer_rows:
            key = keys.producer_key(group_id, producer_id)
            if value is None:
                turn.delete(Db.PRODUCERS, key)
            else:
                turn.put(Db.PRODUCERS, key, value)
        for key, value in self.queue_rows:
            if value is None:
                turn.delete(Db.QUEUE_STATE, key)
            else:
                turn.put(Db.QUEUE_STATE, key, value)
        if self.group_meta is not None:
            turn.put(Db.GROUP_META, keys.group_key(group_id), self.group_meta)

    def _truncate_suffix(self, turn: Turn, first: int) -> None:
        # Earlier ops of this turn may have put rows in the suffix: flushed
        # first so that the range delete removes them too.
        turn.barrier()
        group_id = self.group_id
        start = keys.group_key(group_id)
        end = keys.group_end(group_id)
        # Index rows are written only for applied entries, and applied entries
        # are committed, which Raft never truncates: so a conflicting suffix
        # has log rows only (DESIGN §4). A row pointing into it is a bug.
        last = turn.txn.last_below(Db.OFFSET_INDEX, end, start)
        assert last is None or keys.unpack_u64(bytes(last[1])) < first, (
            f"group {group_id}: truncating from {first} would orphan an applied entry"
        )
        turn.txn.delete_range(Db.LOG, keys.log_key(group_id, first), end)


# An offset index row and maybe a time index row (keys and values).
INDEX_ROW_BYTES = 64
# A producer row's key and what a deleted row is charged.
PRODUCER_KEY_BYTES = 12


def producer_rows_bytes(rows: Sequence[tuple[int, bytes | None]]) -> int:
    return sum(PRODUCER_KEY_BYTES + (0 if value is None else len(value)) for _, value in rows)


def queue_rows_bytes(rows: Sequence[tuple[bytes, bytes | None]]) -> int:
    return sum(len(key) + (0 if value is None else len(value)) for key, value in rows)


class MetaWriteOp(WriteOp):
    """Atomic puts and deletes in the `meta` database (deletes apply first)."""

    __slots__ = ("deletes", "puts")

    def __init__(self, puts: Sequence[tuple[bytes, bytes]], deletes: Sequence[bytes]) -> None:
        size = sum(len(k) + len(v) for k, v in puts) + sum(len(k) for k in deletes)
        # Topics and group offsets are promises to clients (a committed offset
        # never moves back, invariant 4): durable even in async durability.
        super().__init__(size, sync_required=True)
        self.puts = puts
        self.deletes = deletes

    def apply(self, turn: Turn) -> None:
        for key in self.deletes:
            turn.delete(Db.META, key)
        for key, value in self.puts:
            turn.put(Db.META, key, value)


class HardStateOp(WriteOp):
    """Puts a group's Raft hard state (term, vote, commit).

    Always durable before its future resolves, in every durability mode: a
    vote that a crash forgets lets a node vote twice in one term (DESIGN §4).
    """

    __slots__ = ("group_id", "hard_state")

    def __init__(self, group_id: int, hard_state: bytes) -> None:
        super().__init__(len(hard_state), sync_required=True)
        self.group_id = group_id
        self.hard_state = hard_state

    def apply(self, turn: Turn) -> None:
        turn.put(Db.HARDSTATE, keys.group_key(self.group_id), self.hard_state)


class DropGroupOp(WriteOp):
    """Deletes at most `rows_max` rows of a group; `finished` once none is left.

    A whole topic's rows in one transaction held the writer for seconds
    (issue 9), so NodeStorage submits one chunk per turn and other groups'
    writes interleave. Index rows go before log rows and the group's
    hardstate and group_meta last, so a crash mid-drop leaves a log whose
    last entry and meta still load (its dropped prefix reads as damaged) and
    that a repeated drop finishes.
    """

    __slots__ = ("deleted_rows", "finished", "group_id", "rows_max")

    # A drop chunk is a turn's worth of work on its own.
    heavy = True

    def __init__(self, group_id: int, rows_max: int) -> None:
        assert rows_max > 0
        super().__init__(0)
        self.group_id = group_id
        self.rows_max = rows_max
        self.deleted_rows = 0
        self.finished = False

    def apply(self, turn: Turn) -> None:
        turn.barrier()
        start = keys.group_key(self.group_id)
        end = keys.group_end(self.group_id)
        deleted = 0
        for db in _DROP_ORDER:
            budget = self.rows_max - deleted
            if budget == 0:
                break
            deleted += turn.txn.delete_range(db, start, end, rows_max=budget)
        self.deleted_rows = deleted
        # Each delete_range stops at its budget or at the group's end, so with
        # budget left over every database was emptied.
        self.finished = deleted < self.rows_max or not _group_has_rows(turn.txn, start, end)
        # The running max must be reloaded (or forgotten) after any chunk.
        turn.forget_time_head(self.group_id)


# Index rows first, the rows that recovery reads (last log entry, meta) last.
_DROP_ORDER = (
    Db.OFFSET_INDEX,
    Db.TIME_INDEX,
    Db.DELAY_INDEX,
    Db.DELAY_OFFSETS,
    Db.PRODUCERS,
    Db.QUEUE_STATE,
    Db.LOG,
    Db.HARDSTATE,
    Db.GROUP_META,
)


def _group_has_rows(txn: WriteTxn, start: bytes, end: bytes | None) -> bool:
    return any(txn.ceiling(db, start, end) is not None for db in _DROP_ORDER)


class TruncatePrefixOp(WriteOp):
    """Retention: deletes whole entries below `first_index` and their index rows.

    Then repairs the time index: rows of deleted batches go, and retained
    batches that were not indexed (an older deleted batch held a higher max
    timestamp) get rows where they now raise the running max. The repair scan
    reads only entry headers and stops at the first surviving index row,
    which is short unless a far-future timestamp was just deleted.
    """

    __slots__ = (
        "applied_index",
        "first_index",
        "first_offset",
        "group_id",
        "group_meta",
        "repair_time_index",
        "snapshot",
    )

    # Up to RETENTION_ENTRIES_MAX entries and their index rows: one per turn.
    heavy = True

    def __init__(
        self,
        group_id: int,
        first_index: int,
        first_offset: int,
        group_meta: bytes,
        *,
        applied_index: int,
        repair_time_index: bool = True,
        snapshot: bytes | None = None,
        on_commit: Callable[[], None] | None = None,
        on_fail: Callable[[], None] | None = None,
    ) -> None:
        size = len(group_meta) + (0 if snapshot is None else len(snapshot))
        super().__init__(size, on_commit, on_fail=on_fail)
        self.applied_index = applied_index
        # Groups that are not partitions (the controller) have no offsets.
        self.repair_time_index = repair_time_index
        self.group_id = group_id
        self.first_index = first_index
        self.first_offset = first_offset
        self.group_meta = group_meta
        # A Raft compaction keeps the snapshot (configuration, application
        # bytes) in the same transaction as the delete.
        self.snapshot = snapshot

    def apply(self, turn: Turn) -> None:
        turn.barrier()
        txn = turn.txn
        group_id = self.group_id
        start = keys.group_key(group_id)
        end = keys.group_end(group_id)
        txn.delete_range(Db.LOG, start, keys.log_key(group_id, self.first_index))
        txn.delete_range(Db.OFFSET_INDEX, start, keys.offset_key(group_id, self.first_offset))
        # Time rows increase in both timestamp and base offset, so the rows of
        # deleted batches are a prefix in key order.
        survivor: tuple[int, int] | None = None
        time_cut = end
        for key, _ in txn.iterate(Db.TIME_INDEX, start, end):
            _, timestamp_ms, base_offset = keys.parse_time_key(key)
            if base_offset >= self.first_offset:
                survivor = (timestamp_ms, base_offset)
                time_cut = key
                break
        txn.delete_range(Db.TIME_INDEX, start, time_cut)
        # The delayed records of the deleted entries (bounded by the plan).
        delete_delays_below(turn, group_id, self.first_offset)
        if self.repair_time_index:
            self._repair_time_index(turn, survivor)
        turn.put(Db.GROUP_META, start, self.group_meta)
        if self.snapshot is not None:
            turn.put(Db.GROUP_META, keys.snapshot_key(group_id), self.snapshot)

    def _repair_time_index(self, turn: Turn, survivor: tuple[int, int] | None) -> None:
        group_id = self.group_id
        running_max: int | None = None
        rows: list[tuple[bytes, bytes]] = []
        scan = turn.txn.iterate(
            Db.LOG, keys.log_key(group_id, self.first_index), keys.group_end(group_id)
        )
        for key, value in scan:
            _, raft_index = keys.parse_log_key(key)
            if raft_index > self.applied_index:
                # Entries past the applied index have no index rows yet.
                break
            if decode_row_header(value).entry_type is not EntryType.NORMAL:
                continue
            batch = decode_batch_header(value, ROW_HEADER_BYTES)
            if not batch.takes_offsets:
                continue
            if survivor is not None and batch.base_offset >= survivor[1]:
                break
            if running_max is None or batch.max_timestamp_ms > running_max:
                running_max = batch.max_timestamp_ms
                rows.append(
                    (
                        keys.time_key(group_id, running_max, batch.base_offset),
                        keys.pack_u64(raft_index),
                    )
                )
        for row_key, row_value in rows:
            turn.put(Db.TIME_INDEX, row_key, row_value)
        if survivor is None:
            turn.set_time_head(group_id, running_max)


class InstallSnapshotOp(WriteOp):
    """Replaces a group's whole log by a snapshot received from its leader.

    Deletes every log, offset index, time index, delay index, producer and queue
    state row of the group and writes group_meta, the snapshot row, the producer
    rows the snapshot carries (`producer_rows`, with the offset the table covers
    under producer id 0) and its queue rows (`queue_rows`, with the raft index
    the table covers), in one transaction: a crash
    leaves either the old log or the snapshot, never a mix. (Bounded by the
    group's log, which a follower far enough behind to need a snapshot
    usually has little of; see docs/storage.md.)
    """

    __slots__ = ("group_id", "group_meta", "producer_rows", "queue_rows", "snapshot")

    heavy = True

    def __init__(
        self,
        group_id: int,
        group_meta: bytes,
        snapshot: bytes,
        *,
        producer_rows: Sequence[tuple[int, bytes | None]] = (),
        queue_rows: Sequence[tuple[bytes, bytes | None]] = (),
        on_commit: Callable[[], None] | None = None,
        on_fail: Callable[[], None] | None = None,
    ) -> None:
        super().__init__(
            len(group_meta)
            + len(snapshot)
            + producer_rows_bytes(producer_rows)
            + queue_rows_bytes(queue_rows),
            on_commit,
            on_fail=on_fail,
        )
        self.group_id = group_id
        self.group_meta = group_meta
        self.snapshot = snapshot
        self.producer_rows = producer_rows
        self.queue_rows = queue_rows

    def apply(self, turn: Turn) -> None:
        turn.barrier()
        group_id = self.group_id
        start, end = keys.group_key(group_id), keys.group_end(group_id)
        for db in (
            Db.OFFSET_INDEX,
            Db.TIME_INDEX,
            Db.DELAY_INDEX,
            Db.DELAY_OFFSETS,
            Db.PRODUCERS,
            Db.QUEUE_STATE,
            Db.LOG,
        ):
            turn.txn.delete_range(db, start, end)
        turn.set_time_head(group_id, None)
        turn.put(Db.GROUP_META, start, self.group_meta)
        turn.put(Db.GROUP_META, keys.snapshot_key(group_id), self.snapshot)
        for producer_id, value in self.producer_rows:
            if value is not None:
                turn.put(Db.PRODUCERS, keys.producer_key(group_id, producer_id), value)
        for key, value in self.queue_rows:
            if value is not None:
                turn.put(Db.QUEUE_STATE, key, value)
