"""PartitionLog: the offset-addressed view of one group's log.

The Raft log is the partition log: a RECORDS batch is the data of a NORMAL
Raft entry (codec.py). Offsets become visible to readers when their entry is
known *committed* and its log row is committed on this node
(`on_committed`), never on the local fsync alone (DESIGN §4 "Committed-only
reads"). Its offset and time index rows are written when it is applied, in
the same or a later writer turn (`on_applied`); until then `read()` finds
the entry through a small in-memory map of the visible but unindexed tail.

Two writers feed it. A Raft group's `LmdbRaftStorage` appends entries and
applies them as Raft commits them. The single-node path (`append()`, used by
`LocalReplicator`) is the special case of a one-member group: entries get
term 1 and are applied in the same writer turn that writes them. Reads run on
the loop in short read transactions (mmap reads, bounded by bytes and by
records, one cursor walk per read) and verify every entry's checksums.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import dataclasses
import functools
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ..queue import codec as queue_codec
from ..queue.applied import AppliedQueueState
from ..queue.errors import QueueGroupsFull
from ..queue.types import ControlRecord
from ..raft.types import EntryType
from . import keys
from .codec import (
    BATCH_HEADER_BYTES,
    GROUP_META_BYTES,
    PRODUCER_HEADER_BYTES,
    ROW_HEADER_BYTES,
    BatchKind,
    decode_batch_header,
    encode_batch,
    encode_control,
    encode_group_meta,
    encode_row,
)
from .delays import (
    DELAY_ROW_BYTES,
    DUE_DELAYED_LIMIT_MAX,
    DelayedRecord,
    batch_delays,
)
from .errors import CorruptEntryError, OffsetOutOfRangeError, StorageError
from .lmdbenv import Db, LmdbEnv, ReadTxn, Value
from .log_scan import scan_rows
from .ops import (
    INDEX_ROW_BYTES,
    PRODUCER_KEY_BYTES,
    IndexRow,
    LogWriteOp,
    TruncatePrefixOp,
)
from .producers import (
    ENTRY_BYTES_MAX,
    EVICTIONS_PER_APPLY_MAX,
    Changes,
    Duplicate,
    ProducerError,
    ProducerFields,
    decide,
    encode_entry,
)
from .queues import QUEUE_GROUPS_PER_PARTITION_MAX_DEFAULT, QueueTable
from .queues import decode_row as decode_queue_row
from .retention import RetentionPlan, plan_retention
from .state import FIRST_RAFT_INDEX, LogState
from .writer import GroupCommitWriter, WriteOp

logger = logging.getLogger(__name__)

__all__ = [
    "FIRST_RAFT_INDEX",
    "AppendTicket",
    "PartitionLog",
    "RetentionPlan",
    "StoredBatch",
    "StoredRun",
]

# `read`'s default records_max: no bound but the others.
READ_RECORDS_UNBOUNDED = 1 << 62
# Entries one read visits at most (control entries carry no payload, so the
# byte bound alone would not stop a scan over many of them).
READ_ENTRIES_MAX = 4096
# Term of the single-node path: a one-member group whose only term is 1.
SINGLE_NODE_TERM = 1
# What applying one idempotent batch may write to `producers`: its producer's
# row and the deletes of the producers it expires or evicts.
PRODUCER_APPLY_BYTES_MAX = (
    PRODUCER_KEY_BYTES + ENTRY_BYTES_MAX + EVICTIONS_PER_APPLY_MAX * PRODUCER_KEY_BYTES
)


@dataclass(frozen=True, slots=True)
class StoredBatch:
    base_offset: int
    record_count: int
    max_timestamp_ms: int
    append_time_ms: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class StoredRun:
    """Consecutive stored batches read at once (`PartitionLog.read_run`).

    `payload` is their payloads joined, itself a run of `RecordBatch.records`
    fields; offsets are dense, so it holds the records `base_offset` ..
    `base_offset + record_count - 1` in order. Its last batch starts at
    offset `last_base_offset` and byte `last_start` of `payload`.
    """

    base_offset: int
    record_count: int
    payload: bytes
    last_base_offset: int
    last_start: int


@dataclass(frozen=True, slots=True)
class AppendTicket:
    base_offset: int
    durable: asyncio.Future[None]


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
        *,
        queue_groups_max: int = QUEUE_GROUPS_PER_PARTITION_MAX_DEFAULT,
    ) -> None:
        assert state.partition, "a PartitionLog is the offset view of a partition group"
        assert queue_groups_max > 0
        self.group_id = group_id
        # The leader's bound on this partition's queue groups (check_queue_group).
        self.queue_groups_max = queue_groups_max
        self._env = env
        self._writer = writer
        self._clock_ms = clock_ms
        # Shared with the group's LmdbRaftStorage, if Raft replicates it.
        # first_index/start_offset move when retention is decided, before its
        # delete commits, so readers never look at rows that are being removed.
        self._state = state
        # True once an LmdbRaftStorage owns the tail: then only Raft appends.
        self.raft_owned = False
        self._data_waiter: asyncio.Future[None] | None = None
        # Called on the loop when end_offset grows or the log closes, so a
        # consumer of this partition wakes without a future per append.
        self._listeners: list[Callable[[], None]] = []
        self._closed: StorageError | None = None
        self._truncating = False
        # Visibility runs ahead of the index rows (on_committed): the highest
        # visible Raft index, the offset after the last indexed (applied)
        # batch, and (base_offset, raft index) of every visible batch whose
        # index rows are not committed yet, oldest first. The map holds at
        # most the committed entries of the writer turns in flight, which the
        # apply budget and the writer's queue bound.
        self._visible_index = state.applied_index
        self._indexed_end_offset = state.end_offset
        self._unindexed: list[tuple[int, int]] = []
        # The single-node path's newest append: a retried batch waits for it.
        self._last_durable: asyncio.Future[None] | None = None

    @property
    def start_offset(self) -> int:
        return self._state.start_offset

    @property
    def end_offset(self) -> int:
        """The high watermark: the offset after the last visible (committed) batch."""
        return self._state.end_offset

    @property
    def next_offset(self) -> int:
        """The offset after the log's tail, including entries not yet applied."""
        return self._state.next_offset

    @property
    def size_bytes(self) -> int:
        return self._state.size_bytes

    @property
    def next_raft_index(self) -> int:
        return self._state.next_index

    @property
    def applied_index(self) -> int:
        return self._state.applied_index

    async def append(
        self,
        payload: bytes,
        record_count: int,
        max_timestamp_ms: int,
        producer: ProducerFields | None = None,
        *,
        delayed: bool = False,
    ) -> AppendTicket:
        """Single-node path: writes a RECORDS batch and applies it in the same turn.

        `delayed`: some record has a deliver_at_ms; the batch is flagged and
        its delay index rows are written in the same turn (delays.py).

        With `producer` (an idempotent producer's batch) the producer check
        runs first (producers.py): a retry of a remembered batch answers the
        original offsets (its future resolves once everything this log
        submitted so far is durable, the original included) and appends
        nothing; a refused batch raises a `ProducerError`.
        """
        if record_count <= 0:
            raise ValueError(f"a batch holds at least one record, got {record_count}")
        return await self._append(
            EntryType.NORMAL, payload, record_count, max_timestamp_ms, producer, delayed
        )

    async def append_control(
        self, entry_type: EntryType = EntryType.NORMAL, payload: bytes = b""
    ) -> AppendTicket:
        """Single-node path: an entry that takes a Raft index but no offset.

        NORMAL writes a CONTROL batch (`payload` is the application's); NOOP
        and CONFIG write `payload` as the entry's data.
        """
        return await self._append(entry_type, payload, 0, 0)

    async def _append(
        self,
        entry_type: EntryType,
        payload: bytes,
        record_count: int,
        max_timestamp_ms: int,
        producer: ProducerFields | None = None,
        delayed: bool = False,
    ) -> AppendTicket:
        self._check_open()
        if self.raft_owned:
            raise StorageError(f"group {self.group_id} is replicated by Raft: propose through it")
        data_bytes = len(payload) + (BATCH_HEADER_BYTES if entry_type is EntryType.NORMAL else 0)
        index_bytes = INDEX_ROW_BYTES if record_count else 0
        if producer is not None:
            data_bytes += PRODUCER_HEADER_BYTES
            index_bytes += PRODUCER_APPLY_BYTES_MAX
        delays: list[DelayedRecord] = []
        if delayed:
            # Parsed before the reservation: the rows count against it. The
            # offsets are relative until the base offset is known.
            delays = batch_delays(payload, 0, record_count)
            index_bytes += DELAY_ROW_BYTES * len(delays)
        reserved = WriteOp.reserved_bytes(ROW_HEADER_BYTES + data_bytes + index_bytes)
        await self._writer.reserve(reserved)
        # Nothing below awaits, so offsets are assigned in submission order.
        if self._closed is not None:
            self._writer.release(reserved)
            raise self._closed
        state = self._state
        if producer is not None:
            try:
                decision = decide(
                    state.producers.get(producer.producer_id), (), producer, record_count
                )
            except ProducerError:
                self._writer.release(reserved)
                raise
            if isinstance(decision, Duplicate):
                self._writer.release(reserved)
                return AppendTicket(decision.base_offset, self._durable_so_far())
        raft_index = state.next_index
        base_offset = state.next_offset
        next_offset = base_offset + record_count
        index_rows: tuple[IndexRow, ...] = ()
        changes: Changes | None = None
        if record_count:
            append_time_ms = self._clock_ms()
            data = encode_batch(
                BatchKind.RECORDS,
                base_offset,
                record_count,
                max_timestamp_ms,
                append_time_ms,
                payload,
                producer,
                delayed=delayed,
            )
            index_rows = (
                IndexRow(
                    raft_index,
                    base_offset,
                    max_timestamp_ms,
                    [DelayedRecord(d.deliver_at_ms, base_offset + d.offset) for d in delays],
                ),
            )
            changes = state.producers.apply(producer, base_offset, record_count, append_time_ms)
        elif entry_type is EntryType.NORMAL:
            data = encode_control(payload)
        else:
            data = payload
        size_after = state.size_bytes + (len(payload) if record_count else 0)
        # Applied on commit: the group_meta row says so in the same turn.
        meta = dataclasses.replace(
            state.group_meta(), size_bytes=size_after, applied_index=raft_index
        )
        state.applied_submitted = raft_index
        op = LogWriteOp(
            self.group_id,
            [(raft_index, encode_row(entry_type, SINGLE_NODE_TERM, next_offset, data))],
            index_rows=index_rows,
            group_meta=encode_group_meta(meta),
            producer_rows=[
                (pid, None if entry is None else encode_entry(entry))
                for pid, entry in (changes.rows.items() if changes else ())
            ],
            on_commit=functools.partial(self.on_applied, raft_index, next_offset),
            on_fail=functools.partial(
                self._on_append_failed,
                raft_index,
                record_count,
                size_after - state.size_bytes,
                changes,
            ),
        )
        assert op.size_bytes <= reserved
        if op.size_bytes < reserved:
            self._writer.release(reserved - op.size_bytes)
        durable = self._writer.submit(op)
        durable.add_done_callback(_retrieve_exception)
        self._last_durable = durable
        state.next_index = raft_index + 1
        state.next_offset = next_offset
        state.size_bytes = size_after
        state.last_term = SINGLE_NODE_TERM
        return AppendTicket(base_offset, durable)

    def _durable_so_far(self) -> asyncio.Future[None]:
        """Resolves once every append this log submitted so far is durable (ops commit FIFO)."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.add_done_callback(_retrieve_exception)
        last = self._last_durable
        if last is None or (last.done() and not last.cancelled() and last.exception() is None):
            done.set_result(None)
        else:

            def copy(source: asyncio.Future[None]) -> None:
                if done.done():
                    return
                error = None if source.cancelled() else source.exception()
                if source.cancelled() or error is not None:
                    done.set_exception(error or StorageError("the original append was cancelled"))
                else:
                    done.set_result(None)

            last.add_done_callback(copy)
        return done

    # ---- queue groups (queues.py) ------------------------------------------------------

    @property
    def queues(self) -> QueueTable:
        """The partition's queue groups as applied (as of `applied_submitted`)."""
        return self._state.queues

    def queue_state(self, queue_group: str) -> AppliedQueueState | None:
        """The applied state of `queue_group` on this partition (None: it never wrote here).

        The live object, updated in place as entries apply: read it, do not
        change it. Its cursor, low watermark and pending records may be below
        `start_offset` (retention deleted those records: see
        `AppliedQueueState.below_log_start`).
        """
        self._check_open()
        return self._state.queues.get(queue_group)

    def queue_groups(self) -> list[str]:
        """The queue groups this partition holds state for, sorted."""
        self._check_open()
        return self._state.queues.names()

    def check_queue_group(
        self, queue_group: str, proposed: Sequence[str] = ()
    ) -> QueueGroupsFull | None:
        """The leader's check before a queue group's control entry: None if it may go.

        A new group is refused once the partition holds `queue_groups_max`
        groups, counting `proposed` (new groups proposed and not applied yet).
        """
        self._check_open()
        return self._state.queues.check_group(queue_group, self.queue_groups_max, proposed)

    def validate_queue_control(
        self, payload: bytes, proposed: Sequence[str] = ()
    ) -> tuple[str, tuple[ControlRecord, ...]]:
        """Decodes a QUEUE_CONTROL payload a leader is about to write.

        Raises ValueError for a payload that does not decode or names a
        queue group `check_queue_group` refuses: the caller (the dispatcher)
        encodes with `weir.cluster.queue.encode_control` and checks first,
        so this is misuse, never client input.
        """
        try:
            group, records = queue_codec.decode_control(payload)
        except CorruptEntryError as e:
            raise ValueError(f"not a queue control payload: {e}") from None
        refused = self.check_queue_group(group, proposed)
        if refused is not None:
            raise ValueError(refused.message)
        return group, records

    async def append_queue_control(self, payload: bytes) -> AppendTicket:
        """Single-node path: writes a QUEUE_CONTROL batch and applies it in the same turn.

        `payload` is `weir.cluster.queue.encode_control(group, records)`. The
        group's applied state changes at once (reads see it) and its row is
        written in the entry's writer op; the ticket's `durable` resolves
        when both are durable. The entry takes no offsets (`base_offset` is
        the log's next offset, unchanged). Raises ValueError as
        `validate_queue_control` does; nothing is written then.
        """
        self._check_open()
        if self.raft_owned:
            raise StorageError(f"group {self.group_id} is replicated by Raft: propose through it")
        group, records = self.validate_queue_control(payload)
        queues = self._state.queues
        while True:
            data_bytes = ROW_HEADER_BYTES + BATCH_HEADER_BYTES + len(payload)
            reserved = WriteOp.reserved_bytes(
                data_bytes + queues.apply_bytes_max([(group, records)])
            )
            await self._writer.reserve(reserved)
            # Nothing below awaits, so the entry takes the next index in order.
            if self._closed is not None:
                self._writer.release(reserved)
                raise self._closed
            # Another append may have changed the table while we waited.
            refused = self.check_queue_group(group)
            if refused is not None:
                self._writer.release(reserved)
                raise ValueError(refused.message)
            if (
                WriteOp.reserved_bytes(data_bytes + queues.apply_bytes_max([(group, records)]))
                <= reserved
            ):
                break
            self._writer.release(reserved)
        state = self._state
        raft_index = state.next_index
        next_offset = state.next_offset
        changed = queues.apply(raft_index, payload)
        assert changed == group, "a validated payload applies"
        data = encode_batch(BatchKind.QUEUE_CONTROL, 0, 0, 0, 0, payload)
        meta = dataclasses.replace(state.group_meta(), applied_index=raft_index)
        state.applied_submitted = raft_index
        op = LogWriteOp(
            self.group_id,
            [(raft_index, encode_row(EntryType.NORMAL, SINGLE_NODE_TERM, next_offset, data))],
            group_meta=encode_group_meta(meta),
            queue_rows=[(keys.queue_key(self.group_id, group), queues.row(group))],
            on_commit=functools.partial(self.on_applied, raft_index, next_offset),
            on_fail=functools.partial(self._on_queue_append_failed, raft_index, group),
        )
        assert op.size_bytes <= reserved, (op.size_bytes, reserved)
        if op.size_bytes < reserved:
            self._writer.release(reserved - op.size_bytes)
        durable = self._writer.submit(op)
        durable.add_done_callback(_retrieve_exception)
        self._last_durable = durable
        state.next_index = raft_index + 1
        state.last_term = SINGLE_NODE_TERM
        return AppendTicket(next_offset, durable)

    def _on_queue_append_failed(self, raft_index: int, group: str) -> None:
        # Newest first, as _on_append_failed: the disk holds the group's state
        # as of the last committed turn, and every later op failed too.
        state = self._state
        assert state.next_index == raft_index + 1, (state.next_index, raft_index)
        state.next_index = raft_index
        state.applied_submitted = raft_index - 1
        with self._env.read() as txn:
            value = txn.get(Db.QUEUE_STATE, keys.queue_key(self.group_id, group))
            if value is None:
                state.queues.forget(group)
            else:
                state.queues.put(*decode_queue_row(value))

    def on_committed(self, entries: Sequence[tuple[int, int]]) -> None:
        """Entries `(raft index, offset after it)`, oldest first, continuing the visible
        ones, are committed and their log rows are committed here: readers may see them.

        Their index rows may not be written yet; `read()` finds them through
        the unindexed map until `on_applied` covers them.
        """
        if not entries:
            return
        state = self._state
        end = state.end_offset
        for raft_index, next_offset in entries:
            assert raft_index > self._visible_index, "visibility moves forward only"
            if next_offset > end:
                self._unindexed.append((end, raft_index))
                end = next_offset
            self._visible_index = raft_index
        if end > state.end_offset:
            state.end_offset = end
            self._wake_data_waiters()

    def on_applied(self, applied_index: int, end_offset: int) -> None:
        """The index rows up to `applied_index` are committed (and the entries visible).

        Called on the loop by the commit callbacks of the log's writers; turns
        complete in FIFO order, so these only move forward.
        """
        state = self._state
        if applied_index > state.applied_index:
            state.applied_index = applied_index
        self._visible_index = max(self._visible_index, applied_index)
        self._indexed_end_offset = max(self._indexed_end_offset, end_offset)
        unindexed = self._unindexed
        cut = 0
        while cut < len(unindexed) and unindexed[cut][1] <= applied_index:
            cut += 1
        if cut:
            del unindexed[:cut]
        if end_offset > state.end_offset:
            state.end_offset = end_offset
            self._wake_data_waiters()

    def _on_append_failed(
        self, raft_index: int, record_count: int, payload_bytes: int, changes: Changes | None
    ) -> None:
        # The writer undoes failed ops newest first and refuses submissions
        # until it has, so this entry is the newest one this log assigned.
        state = self._state
        if changes is not None:
            state.producers.undo(changes)
        assert state.next_index == raft_index + 1, (state.next_index, raft_index)
        state.next_index = raft_index
        state.applied_submitted = raft_index - 1
        state.next_offset -= record_count
        state.size_bytes -= payload_bytes
        assert state.next_offset >= state.end_offset

    def read(
        self, offset: int, bytes_max: int, records_max: int = READ_RECORDS_UNBOUNDED
    ) -> list[StoredBatch]:
        """The committed batches from the one containing `offset` on, each payload copied once.

        Bounded by `bytes_max` of payload (at least one batch), by
        `records_max` records counted from `offset` (exact: the batch that
        reaches it is the last) and by READ_ENTRIES_MAX entries.
        `OffsetOutOfRangeError` outside `[start_offset, end_offset]`; `[]` at
        `end_offset`.
        """
        if self._at_end(offset):
            return []
        with self._env.read() as txn:
            batches = []
            for data in self._scan(txn, offset, bytes_max, records_max, whole_batches=True)[0]:
                header = decode_batch_header(data)
                batches.append(
                    StoredBatch(
                        header.base_offset,
                        header.record_count,
                        header.max_timestamp_ms,
                        header.append_time_ms,
                        bytes(data[header.header_bytes :]),
                    )
                )
            return batches

    def read_run(self, offset: int, bytes_max: int, records_max: int) -> StoredRun | None:
        """What `read` returns, as one run: the payloads joined in one copy (None at the end).

        Offsets are dense, so record i of the run is offset `base_offset + i`;
        the consume path serves slices of it without a Python object per
        stored batch. Same bounds and errors as `read`.
        """
        if self._at_end(offset):
            return None
        with self._env.read() as txn:
            payloads, base_offset, last_base, next_offset = self._scan(
                txn, offset, bytes_max, records_max
            )
            payload = b"".join(payloads)
        last_start = len(payload) - len(payloads[-1])
        return StoredRun(base_offset, next_offset - base_offset, payload, last_base, last_start)

    def _at_end(self, offset: int) -> bool:
        self._check_open()
        state = self._state
        start, end = state.start_offset, state.end_offset
        if offset < start or offset > end:
            raise OffsetOutOfRangeError(start, end, offset)
        return offset == end

    def _scan(
        self,
        txn: ReadTxn,
        offset: int,
        bytes_max: int,
        records_max: int,
        whole_batches: bool = False,
    ) -> tuple[list[Value], int, int, int]:
        """`scan_rows` from the batch that holds `offset` to the visible index (log_scan.py)."""
        group_id = self.group_id
        end = self._state.end_offset
        first_index = self._first_index(txn, offset)
        rows_max = min(self._visible_index + 1 - first_index, READ_ENTRIES_MAX)
        if rows_max <= 0:
            # Index rows carry no checksum of their own: damage shows here.
            raise CorruptEntryError(
                f"group {group_id}: offset {offset} maps to index {first_index},"
                f" past the visible index {self._visible_index}"
            )
        return scan_rows(
            txn, group_id, first_index, rows_max, offset, end, bytes_max, records_max, whole_batches
        )

    def _first_index(self, txn: ReadTxn, offset: int) -> int:
        """The Raft index of the visible batch that holds `offset`."""
        unindexed = self._unindexed
        if unindexed and offset >= unindexed[0][0]:
            # Visible, but its index rows are not written yet.
            at = bisect.bisect_right(unindexed, offset, key=lambda row: row[0]) - 1
            return unindexed[at][1]
        group_id = self.group_id
        row = txn.floor(
            Db.OFFSET_INDEX, keys.offset_key(group_id, offset), keys.group_key(group_id)
        )
        if row is None:
            raise CorruptEntryError(f"group {group_id}: no offset index row at or below {offset}")
        return keys.unpack_u64(bytes(row[1]))

    def offset_for_timestamp(self, timestamp_ms: int) -> int:
        self._check_open()
        group_id = self.group_id
        with self._env.read() as txn:
            row = txn.ceiling(
                Db.TIME_INDEX,
                keys.time_seek_key(group_id, timestamp_ms),
                keys.group_end(group_id),
            )
        state = self._state
        if row is None:
            # The answer may be in the visible tail whose time index rows are
            # not written yet: start there (earlier, never later, than exact).
            return min(self._indexed_end_offset, state.end_offset)
        _, _, base_offset = keys.parse_time_key(row[0])
        if base_offset >= state.end_offset:
            return state.end_offset
        # While a retention delete is queued its rows are still visible; the
        # answer is then the start (earlier, never later, than the exact one).
        return max(base_offset, state.start_offset)

    def due_delayed(
        self, now_ms: int, after: DelayedRecord | None, limit: int
    ) -> list[DelayedRecord]:
        """Delayed records due at `now_ms`, in due order (then offset), after `after`.

        At most `limit` (and DUE_DELAYED_LIMIT_MAX) rows, read in one short
        read transaction; a caller pages on with the last row it got as
        `after`. Rows exist for applied (committed) records only, and stay
        until retention deletes their entries: whether a record was already
        handed out is the queue state's business. Records below the log's
        start (a retention delete still queued) are skipped.
        """
        self._check_open()
        if limit <= 0:
            return []
        limit = min(limit, DUE_DELAYED_LIMIT_MAX)
        group_id = self.group_id
        if after is None:
            start = keys.delay_key(group_id, 1, 0)
        else:
            # The row right after `after` in key order.
            start = keys.delay_key(group_id, after.deliver_at_ms, after.offset + 1)
        end = keys.delay_key(group_id, now_ms + 1, 0) if now_ms >= 0 else start
        start_offset = self._state.start_offset
        due: list[DelayedRecord] = []
        with self._env.read() as txn:
            for key, _ in txn.iterate(Db.DELAY_INDEX, start, end):
                _, deliver_at_ms, offset = keys.parse_delay_key(key)
                if offset >= start_offset:
                    due.append(DelayedRecord(deliver_at_ms, offset))
                    if len(due) == limit:
                        break
        return due

    def delayed_count(self) -> int:
        """Delayed records in the index (due or not), from its count row: one get.

        Counts what is applied and durable; retention's deletes lower it when
        they commit.
        """
        self._check_open()
        with self._env.read() as txn:
            value = txn.get(Db.DELAY_INDEX, keys.delay_count_key(self.group_id))
            return 0 if value is None else keys.unpack_u64(bytes(value))

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
            if self._state.end_offset > offset:
                return
            if self._data_waiter is None:
                self._data_waiter = asyncio.get_running_loop().create_future()
            # Shielded: one waiter's cancellation must not cancel the shared future.
            await asyncio.shield(self._data_waiter)

    async def truncate_prefix(self, retention_bytes: int | None, retention_ms: int | None) -> int:
        """Single-node retention: deletes whole applied entries, oldest first, beyond the limits.

        Returns how many entries it deleted (at most RETENTION_ENTRIES_MAX). The
        logical start moves when the delete is submitted, before it commits
        (readers then get OffsetOutOfRange for those offsets); if the delete
        fails because storage is full, the start moves back. A Raft group
        compacts through its core instead (see `RetentionPlan`).
        """
        if self.raft_owned:
            raise StorageError(f"group {self.group_id} is replicated by Raft: compact through it")
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
        state = self._state
        state.first_index = plan.first_index
        state.start_offset = plan.start_offset
        state.size_bytes -= plan.deleted_bytes
        await committed
        return plan.deleted_entries

    def plan_retention(
        self, retention_bytes: int | None, retention_ms: int | None
    ) -> RetentionPlan | None:
        """Chooses the applied prefix to delete (retention.py); changes nothing."""
        self._check_open()
        return plan_retention(
            self._env, self.group_id, self._state, retention_bytes, retention_ms, self._clock_ms()
        )

    def _truncate_op(self, plan: RetentionPlan) -> TruncatePrefixOp:
        state = self._state
        meta = dataclasses.replace(
            state.group_meta(),
            first_index=plan.first_index,
            first_offset=plan.start_offset,
            size_bytes=state.size_bytes - plan.deleted_bytes,
        )
        return TruncatePrefixOp(
            self.group_id,
            plan.first_index,
            plan.start_offset,
            encode_group_meta(meta),
            applied_index=state.applied_submitted,
            on_commit=self._on_truncated,
            on_fail=functools.partial(
                self._on_truncate_failed, state.first_index, state.start_offset, plan
            ),
        )

    def _on_truncated(self) -> None:
        self._truncating = False

    def _on_truncate_failed(self, first_index: int, start_offset: int, plan: RetentionPlan) -> None:
        # Only one truncation runs at a time, so nothing moved the start since.
        state = self._state
        assert state.first_index == plan.first_index
        state.first_index = first_index
        state.start_offset = start_offset
        state.size_bytes += plan.deleted_bytes
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
