"""Retention of a partition's log: which applied prefix to delete, in whole entries.

`plan_retention` reads the log's oldest applied rows (one short read
transaction, at most `RETENTION_ENTRIES_MAX` of them) and names the prefix
that the limits let go; it changes nothing. The single node deletes it
itself (`PartitionLog.truncate_prefix`); a Raft group compacts through its
core (cluster/host/host.py), so every replica deletes the same prefix.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..raft.types import EntryType
from . import keys
from .codec import ROW_HEADER_BYTES, decode_batch_header, decode_row_header
from .delays import DELAY_ROWS_PER_RETENTION_MAX
from .lmdbenv import Db, LmdbEnv
from .state import LogState

__all__ = ["RETENTION_ENTRIES_MAX", "RetentionPlan", "plan_retention"]

# Entries one retention call examines at most; callers run retention
# periodically, so a large backlog is worked off over several calls without
# holding the event loop.
RETENTION_ENTRIES_MAX = 10_000


@dataclass(frozen=True, slots=True)
class RetentionPlan:
    """The applied prefix a retention call deletes: entries below `first_index`.

    A Raft group compacts through its core instead: `RawNode.compact(
    first_index - 1, encode_partition_snapshot(start_offset))`.
    """

    first_index: int
    start_offset: int
    deleted_bytes: int
    deleted_entries: int


def plan_retention(
    env: LmdbEnv,
    group_id: int,
    state: LogState,
    retention_bytes: int | None,
    retention_ms: int | None,
    now_ms: int,
) -> RetentionPlan | None:
    """The applied prefix to delete beyond the limits: whole entries, oldest first.

    Entries without records (no-ops, configurations, control batches) have
    no age of their own: they go with the next record batch that goes, so
    they never hold retention back and never go alone.
    """
    if retention_bytes is None and retention_ms is None:
        return None
    cutoff_ms = None if retention_ms is None else now_ms - retention_ms
    size_bytes = state.size_bytes
    first_index = state.first_index
    start_offset = state.start_offset
    deleted = visited = delay_rows = 0
    with env.read() as txn:
        scan = txn.iterate(
            Db.LOG,
            keys.log_key(group_id, first_index),
            keys.log_key(group_id, state.applied_index + 1),
        )
        for key, value in scan:
            visited += 1
            if visited > RETENTION_ENTRIES_MAX:
                break
            row = decode_row_header(value)
            if row.entry_type is not EntryType.NORMAL:
                continue
            batch = decode_batch_header(value, ROW_HEADER_BYTES)
            if not batch.takes_offsets:
                continue
            over_size = retention_bytes is not None and size_bytes > retention_bytes
            too_old = cutoff_ms is not None and batch.append_time_ms < cutoff_ms
            if not (over_size or too_old):
                break
            if batch.delayed:
                # Its records bound its delay rows, which this delete removes too.
                delay_rows += batch.record_count
                if delay_rows > DELAY_ROWS_PER_RETENTION_MAX and deleted:
                    break
            _, raft_index = keys.parse_log_key(key)
            deleted += raft_index + 1 - first_index
            first_index = raft_index + 1
            start_offset = batch.next_offset
            size_bytes -= row.data_bytes - batch.header_bytes
    if deleted == 0:
        return None
    return RetentionPlan(first_index, start_offset, state.size_bytes - size_bytes, deleted)
