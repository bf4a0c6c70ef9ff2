"""Where one group's log stands, and how it is loaded at open without a scan.

`LogState` is shared by the group's `PartitionLog` (the offset view readers
use) and, for a Raft group, its `LmdbRaftStorage` (the Raft log view): both
look at the same rows, so they keep one set of numbers. Everything here runs
on the event loop.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..raft.types import SnapshotMeta
from . import keys
from .codec import (
    GroupMeta,
    decode_group_meta,
    decode_row_header,
    decode_snapshot,
    verify_row_data,
)
from .errors import CorruptEntryError, StorageError
from .lmdbenv import Db, LmdbEnv, ReadTxn
from .producers import ProducerTable, decode_entry
from .queues import QueueTable, decode_row

# Raft indexes start at 1; 0 means "no entry" in the Raft paper.
FIRST_RAFT_INDEX = 1


@dataclass(slots=True)
class LogState:
    """The numbers of one group's log.

    `first_index`/`start_offset` move when a prefix truncation is submitted;
    `next_index`/`next_offset`/`size_bytes`/`last_term` follow the tail as
    written (including writes the writer has not committed yet);
    `applied_index` moves when the offset index rows of applied entries are
    committed; and `end_offset`, the high watermark readers see, moves when
    entries are known committed and their log rows are committed here (for a
    Raft group, possibly before their index rows: see `PartitionLog`).
    `first_index - 1 <= applied_index <= applied_submitted < next_index`.
    """

    partition: bool
    first_index: int
    start_offset: int
    next_index: int
    next_offset: int
    size_bytes: int
    applied_index: int
    end_offset: int
    last_term: int
    # The applied index of the newest op submitted (>= applied_index): what
    # every later op writes to group_meta, since it commits in a later or
    # the same turn as the index rows of those entries.
    applied_submitted: int = 0
    # The partition's idempotent producers as of `applied_submitted`
    # (producers.py): updated where entries are applied, persisted in the
    # same writer op as their index rows.
    producers: ProducerTable = field(default_factory=ProducerTable)
    # The partition's queue groups as of `applied_submitted` (queues.py):
    # updated where QUEUE_CONTROL entries are applied, persisted in the same
    # writer op.
    queues: QueueTable = field(default_factory=QueueTable)

    def __post_init__(self) -> None:
        self.applied_submitted = max(self.applied_submitted, self.applied_index)

    def group_meta(self) -> GroupMeta:
        return GroupMeta(
            self.first_index,
            self.start_offset,
            self.size_bytes,
            self.applied_submitted,
            self.partition,
        )


@dataclass(frozen=True, slots=True)
class LoadedGroup:
    state: LogState
    # The stored snapshot (None: the group never truncated its log through Raft).
    snapshot: tuple[SnapshotMeta, bytes] | None


def load_group(env: LmdbEnv, group_id: int, partition: bool) -> LoadedGroup:
    """Recovery without a scan: group_meta, the snapshot row, the last entry.

    And one more row when entries are written but not applied (to find the
    end offset of the applied index): O(1) rows whatever the log's length.
    """
    start = keys.group_key(group_id)
    with env.read() as txn:
        raw_meta = txn.get(Db.GROUP_META, start)
        meta = GroupMeta(FIRST_RAFT_INDEX, 0, 0, 0, partition)
        if raw_meta is not None:
            meta = decode_group_meta(raw_meta)
            if meta.partition != partition:
                kind = "a partition" if meta.partition else "not a partition"
                raise StorageError(f"group {group_id} is {kind} group on disk")
        raw_snapshot = txn.get(Db.GROUP_META, keys.snapshot_key(group_id))
        snapshot = None if raw_snapshot is None else decode_snapshot(raw_snapshot)
        snapshot_term = 0
        if snapshot is not None:
            snapshot_term = snapshot[0].term
            if snapshot[0].index != meta.first_index - 1:
                raise CorruptEntryError(
                    f"group {group_id}: snapshot at {snapshot[0].index}, "
                    f"first index {meta.first_index}"
                )
        last = txn.last_below(Db.LOG, keys.group_end(group_id), start)
        if last is None:
            state = LogState(
                partition,
                meta.first_index,
                meta.first_offset,
                meta.first_index,
                meta.first_offset,
                meta.size_bytes,
                max(meta.applied_index, meta.first_index - 1),
                meta.first_offset,
                snapshot_term,
            )
            if partition:
                state.producers = _load_producers(txn, group_id, state.end_offset)
                state.queues = load_queues(txn, group_id)
            return LoadedGroup(state, snapshot)
        _, last_index = keys.parse_log_key(last[0])
        header = decode_row_header(last[1])
        verify_row_data(last[1])
        if last_index < meta.first_index:
            raise CorruptEntryError(
                f"group {group_id}: last raft index {last_index} below first {meta.first_index}"
            )
        applied = max(meta.applied_index, meta.first_index - 1)
        if applied > last_index:
            raise CorruptEntryError(
                f"group {group_id}: applied index {applied} beyond the last {last_index}"
            )
        if applied == last_index:
            end_offset = header.next_offset
        elif applied == meta.first_index - 1:
            end_offset = meta.first_offset
        else:
            row = txn.get(Db.LOG, keys.log_key(group_id, applied))
            if row is None:
                raise CorruptEntryError(f"group {group_id}: applied entry {applied} is missing")
            end_offset = decode_row_header(row).next_offset
        producers = _load_producers(txn, group_id, end_offset) if partition else None
        queues = load_queues(txn, group_id) if partition else None
    state = LogState(
        partition,
        meta.first_index,
        meta.first_offset,
        last_index + 1,
        header.next_offset,
        meta.size_bytes,
        applied,
        end_offset,
        header.term,
    )
    if producers is not None:
        state.producers = producers
    if queues is not None:
        state.queues = queues
    return LoadedGroup(state, snapshot)


def _load_producers(txn: ReadTxn, group_id: int, applied_end_offset: int) -> ProducerTable:
    """The group's producer rows (bounded by producers_per_partition_max)."""
    entries = []
    covered = applied_end_offset
    for key, value in txn.iterate(
        Db.PRODUCERS, keys.producer_key(group_id, 0), keys.group_end(group_id)
    ):
        _, producer_id = keys.parse_producer_key(key)
        if producer_id == 0:
            # Written when a snapshot brought a table newer than its index.
            covered = max(covered, keys.unpack_u64(bytes(value)))
            continue
        entries.append((producer_id, decode_entry(value)))
    return ProducerTable(entries, covered)


def load_queues(txn: ReadTxn, group_id: int) -> QueueTable:
    """The group's queue state rows (bounded by queue_groups_per_partition_max)."""
    covered = 0
    groups = []
    for key, value in txn.iterate(
        Db.QUEUE_STATE, keys.queue_covered_key(group_id), keys.group_end(group_id)
    ):
        if key == keys.queue_covered_key(group_id):
            # Written when a snapshot brought a table newer than its index.
            covered = keys.unpack_u64(bytes(value))
            continue
        groups.append(decode_row(value))
    return QueueTable(groups, covered)
