"""PartitionLog: the offset-addressed view of one Raft group's log.

Appends are assigned dense offsets on the event loop and queued to the
group-commit writer; `end_offset` (the high watermark readers see) moves only
when the write commits, in offset order. Reads run on the loop in short read
transactions (mmap reads, bounded by bytes) and verify every entry's checksum.
Single-node today: entries get term 0 and consecutive Raft indexes.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass

from . import keys
from .codec import (
    ENTRY_HEADER_BYTES,
    GROUP_META_BYTES,
    Entry,
    EntryType,
    GroupMeta,
    decode_group_meta,
    decode_header,
    encode_entry,
    encode_group_meta,
    verified_payload,
    verify_entry,
)
from .errors import CorruptEntryError, OffsetOutOfRangeError, StorageError
from .lmdbenv import Db, LmdbEnv
from .ops import AppendEntryOp, TruncatePrefixOp
from .writer import GroupCommitWriter, WriteOp

logger = logging.getLogger(__name__)

# Raft indexes start at 1; 0 means "no entry" in the Raft paper.
FIRST_RAFT_INDEX = 1
# Entries one read visits at most (control entries carry no payload, so the
# byte bound alone would not stop a scan over many of them).
READ_ENTRIES_MAX = 4096
# Entries one retention call examines at most; callers run retention
# periodically, so a large backlog is worked off over several calls without
# holding the event loop.
RETENTION_ENTRIES_MAX = 10_000
# Term written by the single-node log; the Raft host will pass real terms.
SINGLE_NODE_TERM = 0


@dataclass(frozen=True, slots=True)
class StoredBatch:
    base_offset: int
    record_count: int
    max_timestamp_ms: int
    append_time_ms: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class RetentionPlan:
    """The committed prefix a retention call deletes: entries below `first_index`."""

    first_index: int
    start_offset: int
    deleted_bytes: int
    deleted_entries: int


@dataclass(frozen=True, slots=True)
class AppendTicket:
    base_offset: int
    durable: asyncio.Future[None]


@dataclass(slots=True)
class LogState:
    """Where a group's log stands; loaded from LMDB when a log is opened."""

    first_index: int
    start_offset: int
    next_index: int
    next_offset: int
    size_bytes: int

    @classmethod
    def empty(cls) -> LogState:
        return cls(FIRST_RAFT_INDEX, 0, FIRST_RAFT_INDEX, 0, 0)

    @classmethod
    def load(cls, env: LmdbEnv, group_id: int) -> LogState:
        """Recovery without a scan: group_meta plus the group's last log entry."""
        start = keys.group_key(group_id)
        with env.read() as txn:
            raw_meta = txn.get(Db.GROUP_META, start)
            meta = GroupMeta(FIRST_RAFT_INDEX, 0, 0)
            if raw_meta is not None:
                meta = decode_group_meta(raw_meta)
            last = txn.last_below(Db.LOG, keys.group_end(group_id), start)
            if last is None:
                return cls(
                    meta.first_index,
                    meta.first_offset,
                    meta.first_index,
                    meta.first_offset,
                    meta.size_bytes,
                )
            _, last_index = keys.parse_log_key(last[0])
            header = verify_entry(last[1])
        if last_index < meta.first_index:
            raise CorruptEntryError(
                f"group {group_id}: last raft index {last_index} below first {meta.first_index}"
            )
        return cls(
            meta.first_index,
            meta.first_offset,
            last_index + 1,
            header.base_offset + header.record_count,
            meta.size_bytes,
        )


def _retrieve_exception(future: asyncio.Future[None]) -> None:
    # A producer with acks=NONE may never await `durable`. The writer logs its
    # own death once; without this every such ticket would log again at GC.
    if not future.cancelled():
        future.exception()


class PartitionLog:
    """One group's log. All methods run on the event loop; none blocks on disk writes."""

    def __init__(
        self,
        group_id: int,
        env: LmdbEnv,
        writer: GroupCommitWriter,
        state: LogState,
        clock_ms: Callable[[], int],
    ) -> None:
        self.group_id = group_id
        self._env = env
        self._writer = writer
        self._clock_ms = clock_ms
        # Logical start: moves when retention is decided, before its delete
        # commits, so readers never look at rows that are being removed.
        self._first_index = state.first_index
        self._start_offset = state.start_offset
        self._next_index = state.next_index
        self._next_offset = state.next_offset
        self._size_bytes = state.size_bytes
        self._committed_next_index = state.next_index
        self._end_offset = state.next_offset
        self._data_waiter: asyncio.Future[None] | None = None
        # Called on the loop when end_offset grows or the log closes, so a
        # consumer of this partition wakes without a future per append.
        self._listeners: list[Callable[[], None]] = []
        self._closed: StorageError | None = None
        self._truncating = False

    @property
    def start_offset(self) -> int:
        return self._start_offset

    @property
    def end_offset(self) -> int:
        return self._end_offset

    @property
    def next_offset(self) -> int:
        return self._next_offset

    @property
    def size_bytes(self) -> int:
        return self._size_bytes

    @property
    def next_raft_index(self) -> int:
        return self._next_index

    async def append(
        self, payload: bytes, record_count: int, max_timestamp_ms: int
    ) -> AppendTicket:
        if record_count <= 0:
            raise ValueError(f"a batch holds at least one record, got {record_count}")
        return await self._append(EntryType.DATA, payload, record_count, max_timestamp_ms)

    async def append_control(self, entry_type: EntryType, payload: bytes = b"") -> AppendTicket:
        """Appends an entry that takes a Raft index but no offset (NOOP, CONFIG, CONTROL)."""
        if entry_type is EntryType.DATA:
            raise ValueError("use append() for DATA entries")
        return await self._append(entry_type, payload, 0, 0)

    async def _append(
        self, entry_type: EntryType, payload: bytes, record_count: int, max_timestamp_ms: int
    ) -> AppendTicket:
        self._check_open()
        size_bytes = ENTRY_HEADER_BYTES + len(payload)
        reserved = WriteOp.reserved_bytes(size_bytes)
        await self._writer.reserve(reserved)
        # Nothing below awaits, so offsets are assigned in submission order.
        if self._closed is not None:
            self._writer.release(reserved)
            raise self._closed
        raft_index = self._next_index
        base_offset = self._next_offset
        entry = Entry(
            entry_type,
            SINGLE_NODE_TERM,
            base_offset,
            record_count,
            max_timestamp_ms,
            self._clock_ms(),
            payload,
        )
        size_after = self._size_bytes + len(payload)
        next_offset = base_offset + record_count
        meta = GroupMeta(self._first_index, self._start_offset, size_after)
        op = AppendEntryOp(
            self.group_id,
            raft_index,
            encode_entry(entry),
            entry_type=entry_type,
            base_offset=base_offset,
            record_count=record_count,
            max_timestamp_ms=max_timestamp_ms,
            group_meta=encode_group_meta(meta),
            on_commit=functools.partial(self._on_committed, raft_index + 1, next_offset),
            on_fail=functools.partial(
                self._on_append_failed, raft_index, record_count, len(payload)
            ),
        )
        assert op.size_bytes == reserved
        durable = self._writer.submit(op)
        durable.add_done_callback(_retrieve_exception)
        self._next_index = raft_index + 1
        self._next_offset = next_offset
        self._size_bytes = size_after
        return AppendTicket(base_offset, durable)

    def _on_committed(self, committed_next_index: int, end_offset: int) -> None:
        # Turns complete in FIFO order, so these only move forward.
        self._committed_next_index = committed_next_index
        if end_offset > self._end_offset:
            self._end_offset = end_offset
            self._wake_data_waiters()

    def _on_append_failed(self, raft_index: int, record_count: int, payload_bytes: int) -> None:
        # The writer undoes failed ops newest first and refuses submissions
        # until it has, so this entry is the newest one this log assigned.
        assert self._next_index == raft_index + 1, (self._next_index, raft_index)
        self._next_index = raft_index
        self._next_offset -= record_count
        self._size_bytes -= payload_bytes
        assert self._next_offset >= self._end_offset

    def read(self, offset: int, bytes_max: int) -> list[StoredBatch]:
        self._check_open()
        start, end = self._start_offset, self._end_offset
        if offset < start or offset > end:
            raise OffsetOutOfRangeError(start, end, offset)
        if offset == end:
            return []
        group_id = self.group_id
        batches: list[StoredBatch] = []
        total_bytes = 0
        with self._env.read() as txn:
            row = txn.floor(
                Db.OFFSET_INDEX, keys.offset_key(group_id, offset), keys.group_key(group_id)
            )
            if row is None:
                raise CorruptEntryError(
                    f"group {group_id}: no offset index row at or below {offset}"
                )
            first_index = keys.unpack_u64(bytes(row[1]))
            scan = txn.iterate(
                Db.LOG, keys.log_key(group_id, first_index), keys.group_end(group_id)
            )
            for visited, (_, value) in enumerate(scan):
                header = decode_header(value)
                if header.entry_type is not EntryType.DATA or header.record_count == 0:
                    if visited >= READ_ENTRIES_MAX:
                        break
                    continue
                if header.base_offset >= end:
                    break
                if not batches and not (
                    header.base_offset <= offset < header.base_offset + header.record_count
                ):
                    raise CorruptEntryError(
                        f"group {group_id}: offset index points at batch {header.base_offset}"
                        f"+{header.record_count}, which does not contain offset {offset}"
                    )
                if batches and total_bytes + header.payload_bytes > bytes_max:
                    break
                batches.append(
                    StoredBatch(
                        header.base_offset,
                        header.record_count,
                        header.max_timestamp_ms,
                        header.append_time_ms,
                        verified_payload(value),
                    )
                )
                total_bytes += header.payload_bytes
                if total_bytes >= bytes_max or visited >= READ_ENTRIES_MAX:
                    break
        if not batches:
            raise CorruptEntryError(f"group {group_id}: no committed batch holds offset {offset}")
        return batches

    def offset_for_timestamp(self, timestamp_ms: int) -> int:
        self._check_open()
        group_id = self.group_id
        with self._env.read() as txn:
            row = txn.ceiling(
                Db.TIME_INDEX,
                keys.time_seek_key(group_id, timestamp_ms),
                keys.group_end(group_id),
            )
        if row is None:
            return self._end_offset
        _, _, base_offset = keys.parse_time_key(row[0])
        if base_offset >= self._end_offset:
            return self._end_offset
        # While a retention delete is queued its rows are still visible; the
        # answer is then the start (earlier, never later, than the exact one).
        return max(base_offset, self._start_offset)

    def add_listener(self, callback: Callable[[], None]) -> None:
        """Calls `callback()` on the loop whenever `end_offset` grows or the log closes.

        Callbacks run synchronously inside the commit callback, so they must be
        cheap (set an event, schedule a task) and must not raise. A callback
        added twice is called twice.
        """
        self._listeners.append(callback)

    def remove_listener(self, callback: Callable[[], None]) -> None:
        """Forgets one registration of `callback`; unknown callbacks are ignored."""
        with contextlib.suppress(ValueError):
            self._listeners.remove(callback)

    async def wait_for_data(self, offset: int) -> None:
        while True:
            self._check_open()
            if self._end_offset > offset:
                return
            if self._data_waiter is None:
                self._data_waiter = asyncio.get_running_loop().create_future()
            # Shielded: one waiter's cancellation must not cancel the shared future.
            await asyncio.shield(self._data_waiter)

    async def truncate_prefix(self, retention_bytes: int | None, retention_ms: int | None) -> int:
        """Deletes whole committed entries, oldest first, beyond the limits.

        Returns how many entries it deleted (at most RETENTION_ENTRIES_MAX). The
        logical start moves when the delete is submitted, before it commits
        (readers then get OffsetOutOfRange for those offsets); if the delete
        fails because storage is full, the start moves back.
        """
        if self._truncating:
            # One prefix delete per log at a time keeps the undo exact.
            return 0
        plan = self.plan_retention(retention_bytes, retention_ms)
        if plan is None:
            return 0
        self._truncating = True
        try:
            reserved = WriteOp.reserved_bytes(GROUP_META_BYTES)
            await self._writer.reserve(reserved)
            # Nothing below awaits until the op is submitted, so no append
            # lands between the state change and the op (their group_meta
            # rows agree with the delete's).
            if self._closed is not None:
                self._writer.release(reserved)
                raise self._closed
            op = self._truncate_op(plan)
            assert op.size_bytes == reserved
            committed = self._writer.submit(op)
        except BaseException:
            self._truncating = False
            raise
        self._first_index = plan.first_index
        self._start_offset = plan.start_offset
        self._size_bytes -= plan.deleted_bytes
        await committed
        return plan.deleted_entries

    def plan_retention(
        self, retention_bytes: int | None, retention_ms: int | None
    ) -> RetentionPlan | None:
        """Chooses the committed prefix to delete: whole entries, oldest first (no change)."""
        self._check_open()
        if retention_bytes is None and retention_ms is None:
            return None
        cutoff_ms = None if retention_ms is None else self._clock_ms() - retention_ms
        group_id = self.group_id
        size_bytes = self._size_bytes
        first_index = self._first_index
        start_offset = self._start_offset
        deleted = 0
        with self._env.read() as txn:
            scan = txn.iterate(
                Db.LOG,
                keys.log_key(group_id, first_index),
                keys.log_key(group_id, self._committed_next_index),
            )
            for key, value in scan:
                header = decode_header(value)
                over_size = retention_bytes is not None and size_bytes > retention_bytes
                too_old = cutoff_ms is not None and header.append_time_ms < cutoff_ms
                if not (over_size or too_old):
                    break
                _, raft_index = keys.parse_log_key(key)
                first_index = raft_index + 1
                start_offset = header.base_offset + header.record_count
                size_bytes -= header.payload_bytes
                deleted += 1
                if deleted >= RETENTION_ENTRIES_MAX:
                    break
        if deleted == 0:
            return None
        return RetentionPlan(first_index, start_offset, self._size_bytes - size_bytes, deleted)

    def _truncate_op(self, plan: RetentionPlan) -> TruncatePrefixOp:
        meta = GroupMeta(plan.first_index, plan.start_offset, self._size_bytes - plan.deleted_bytes)
        return TruncatePrefixOp(
            self.group_id,
            plan.first_index,
            plan.start_offset,
            encode_group_meta(meta),
            on_commit=self._on_truncated,
            on_fail=functools.partial(
                self._on_truncate_failed, self._first_index, self._start_offset, plan
            ),
        )

    def _on_truncated(self) -> None:
        self._truncating = False

    def _on_truncate_failed(self, first_index: int, start_offset: int, plan: RetentionPlan) -> None:
        # Only one truncation runs at a time, so nothing moved the start since.
        assert self._first_index == plan.first_index
        self._first_index = first_index
        self._start_offset = start_offset
        self._size_bytes += plan.deleted_bytes
        self._truncating = False

    def close(self, error: StorageError) -> None:
        """Stops the log: later calls and current waiters raise `error`."""
        if self._closed is None:
            self._closed = error
            self._wake_data_waiters()

    @property
    def closed(self) -> bool:
        return self._closed is not None

    def _wake_data_waiters(self) -> None:
        waiter, self._data_waiter = self._data_waiter, None
        if waiter is not None and not waiter.done():
            # Always a plain result: waiters re-check state, so no exception
            # sits unretrieved on a future nobody awaits.
            waiter.set_result(None)
        # A copy: a listener may remove itself (or others) while we iterate.
        for listener in tuple(self._listeners):
            try:
                listener()
            except Exception:
                # One broken consumer must not stop the commit callback that
                # resolves every other write of the turn.
                logger.exception("partition log listener of group %d failed", self.group_id)

    def _check_open(self) -> None:
        if self._closed is not None:
            raise self._closed
