"""LmdbRaftStorage: the Raft core's `Storage` for one group, on the node's LMDB env.

The Raft log is the partition log (no second copy): entry rows in `log`, hard
state in `hardstate`, first index, applied index and the snapshot (with its
configuration) in `group_meta`. For a partition group the group's
`PartitionLog` shares the rows and the numbers (`LogState`); its offsets
become visible to readers as soon as their entries are known committed
(`apply_entries()`) and their log rows are committed on this node, which
for a leader is usually at once and for a follower at the latest when the
turn that wrote them commits. The index rows and the applied index follow
in the writer turn `apply_entries()` joins.

Writes are asynchronous. The protocol's writes (`append`, `set_hard_state`,
`truncate_prefix`, `apply_snapshot`) are synchronous calls made by the host
while it handles a `Ready`: each queues one op to the node's group-commit
writer and makes the new state visible to reads at once, through an overlay
of entries the writer has not committed yet (bounded by the writer's queue
budget, and by the Raft core's own limits on unstable entries). `flush()`
returns a future that resolves once everything submitted so far is durable
(a vote always fsynced, DESIGN §4); the host calls `advance()` only then.

A failed write (storage full, writer dead) poisons this object: every later
call raises the error. What committed before is intact on disk; the host
reopens the group with `NodeStorage.raft_storage()`, which reloads it.

Restart reads O(1) rows (`state.load_group`), and the term cache answers
`term(i)` near the tail without a read, so elections never touch the log.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
from collections.abc import Sequence

from ..raft.rawnode import Ready
from ..raft.types import EMPTY_CONF, ConfState, Entry, EntryType, HardState, Snapshot, SnapshotMeta
from . import keys
from .codec import (
    BATCH_HEADER_BYTES,
    GROUP_META_BYTES,
    ROW_HEADER_BYTES,
    BatchKind,
    GroupMeta,
    decode_batch_header,
    decode_hard_state,
    decode_partition_snapshot,
    decode_row,
    decode_row_header,
    encode_group_meta,
    encode_hard_state,
    encode_row,
    encode_snapshot,
    entry_next_offset,
    partition_snapshot_producers,
    partition_snapshot_queues,
    payload_bytes_of,
)
from .delays import DELAY_ROW_BYTES, batch_delays
from .errors import CompactedError, CorruptEntryError, StorageError, UnavailableError
from .lmdbenv import Db, LmdbEnv
from .log import PRODUCER_APPLY_BYTES_MAX, PartitionLog
from .ops import (
    INDEX_ROW_BYTES,
    PRODUCER_KEY_BYTES,
    HardStateOp,
    IndexRow,
    InstallSnapshotOp,
    LogWriteOp,
    TruncatePrefixOp,
)
from .producers import (
    ProducerEntry,
    ProducerTable,
    decode_table,
    encode_entry,
)
from .queues import QUEUE_KEY_BYTES, QueueTable
from .queues import decode_table as decode_queue_table
from .state import LoadedGroup, LogState
from .termcache import TermCache
from .writer import GroupCommitWriter, WriteOp

HARD_STATE_BYTES = 25


def _retrieve(future: asyncio.Future[None]) -> None:
    # Failures reach the host through flush() and the poisoned state; this
    # keeps asyncio from logging every failed op future nobody awaited.
    if not future.cancelled():
        future.exception()


class LmdbRaftStorage:
    """One Raft group's durable log, hard state and snapshot (implements raft `Storage`)."""

    def __init__(
        self,
        group_id: int,
        env: LmdbEnv,
        writer: GroupCommitWriter,
        loaded: LoadedGroup,
        log: PartitionLog | None,
        conf: ConfState = EMPTY_CONF,
    ) -> None:
        self.group_id = group_id
        self._env = env
        self._writer = writer
        self._loop = writer.loop
        self._state: LogState = loaded.state if log is None else log._state
        self._log = log
        if log is not None:
            log.raft_owned = True
        state = self._state
        if loaded.snapshot is not None:
            meta, data = loaded.snapshot
            self._snapshot = Snapshot(meta, data)
        elif state.first_index > 1:
            raise StorageError(
                f"group {group_id} was truncated without a snapshot (single-node retention)"
            )
        else:
            self._snapshot = Snapshot(SnapshotMeta(0, 0, conf))
        with env.read() as txn:
            raw = txn.get(Db.HARDSTATE, keys.group_key(group_id))
            self._hard_state = HardState() if raw is None else decode_hard_state(raw)
        # Entries submitted to the writer and not committed yet, oldest first,
        # with the sequence number of their op and the offset after each. They
        # are a suffix of the log: appends replace a suffix, ops commit FIFO.
        self._pending: list[tuple[int, Entry, int]] = []
        self._op_seq = 0
        self._terms = TermCache(state.next_index)
        if state.next_index > state.first_index:
            self._terms.append(state.next_index - 1, state.last_term)
        # The offset after the newest entry submitted for applying.
        self._applied_next_offset = state.end_offset
        # Entries submitted for applying (so committed) whose log rows are not
        # committed here yet, (index, offset after it), oldest first; and the
        # highest index made visible to readers. A leader may count a quorum
        # of followers before its own write lands, and a follower may learn
        # that entries are committed in the Ready that writes them: neither
        # becomes visible before its row can be read back.
        self._unrevealed: collections.deque[tuple[int, int]] = collections.deque()
        self._visible_index = state.applied_index
        self._credit_bytes = 0
        self._last_future: asyncio.Future[None] | None = None
        self._failed: StorageError | None = None
        self.term_cache_misses = 0

    # ---- reads (the Storage protocol) -------------------------------------------

    def hard_state(self) -> HardState:
        return self._hard_state

    def first_index(self) -> int:
        return self._state.first_index

    def last_index(self) -> int:
        return self._state.next_index - 1

    def snapshot(self) -> Snapshot:
        return self._snapshot

    def term(self, index: int) -> int:
        self._check()
        state = self._state
        if index == state.first_index - 1:
            return self._snapshot.meta.term
        if index < state.first_index:
            raise CompactedError(index)
        if index >= state.next_index:
            raise UnavailableError(index)
        term = self._terms.term(index)
        if term is not None:
            return term
        pending = self._pending_entry(index)
        if pending is not None:
            return pending[1].term
        self.term_cache_misses += 1
        with self._env.read() as txn:
            row = txn.get(Db.LOG, keys.log_key(self.group_id, index))
            if row is None:
                raise CorruptEntryError(f"group {self.group_id}: entry {index} is missing")
            return decode_row_header(row).term

    def entries(self, lo: int, hi: int, bytes_max: int) -> list[Entry]:
        self._check()
        state = self._state
        if lo < state.first_index:
            raise CompactedError(lo)
        if hi > state.next_index:
            raise UnavailableError(hi)
        out: list[Entry] = []
        size = 0
        pending_lo = self._pending_lo()
        if lo < min(hi, pending_lo):
            stored_hi = min(hi, pending_lo)
            group_id = self.group_id
            with self._env.read() as txn:
                scan = txn.iterate(
                    Db.LOG, keys.log_key(group_id, lo), keys.log_key(group_id, stored_hi)
                )
                for expected, (key, value) in enumerate(scan, start=lo):
                    _, index = keys.parse_log_key(key)
                    if index != expected:
                        raise CorruptEntryError(f"group {group_id}: entry {expected} is missing")
                    size += len(value) - ROW_HEADER_BYTES
                    if out and size > bytes_max:
                        return out
                    out.append(decode_row(value, index))
            if len(out) != stored_hi - lo:
                raise CorruptEntryError(f"group {group_id}: entry {lo + len(out)} is missing")
        for _, entry, _ in self._pending[max(0, lo - pending_lo) : max(0, hi - pending_lo)]:
            size += len(entry.data)
            if out and size > bytes_max:
                break
            out.append(entry)
        return out

    # ---- writes (the Storage protocol): queued, visible at once -----------------

    def set_hard_state(self, hard_state: HardState) -> None:
        self._check()
        # sync_required: fsynced before it resolves even in async durability.
        self._submit(HardStateOp(self.group_id, encode_hard_state(hard_state)))
        self._hard_state = hard_state

    def append(self, entries: list[Entry] | tuple[Entry, ...]) -> None:
        self._check()
        if not entries:
            return
        state = self._state
        first = entries[0].index
        assert state.first_index <= first <= state.next_index, "append leaves a gap"
        truncate_from: int | None = None
        next_offset = state.next_offset
        size_bytes = state.size_bytes
        if first < state.next_index:
            # A follower's conflicting suffix (never an applied entry: applied
            # entries are committed, and Raft never replaces those).
            assert first > state.applied_submitted, "replacing an applied entry"
            truncate_from = first
            size_bytes -= self._payload_bytes(first, state.next_index)
            next_offset = self._next_offset_after(first - 1)
        rows: list[tuple[int, bytes]] = []
        accepted: list[tuple[Entry, int]] = []
        expected = first
        for entry in entries:
            assert entry.index == expected, "entries are not contiguous"
            expected += 1
            if state.partition:
                next_offset = entry_next_offset(entry, next_offset)
                size_bytes += payload_bytes_of(entry.type, entry.data)
            rows.append((entry.index, encode_row(entry.type, entry.term, next_offset, entry.data)))
            accepted.append((entry, next_offset))
        op = LogWriteOp(
            self.group_id,
            rows,
            truncate_from=truncate_from,
            group_meta=None,
        )
        seq = self._submit(op)
        if truncate_from is not None:
            self._drop_pending_from(truncate_from)
            self._terms.truncate_from(truncate_from)
        for entry, after in accepted:
            self._pending.append((seq, entry, after))
            self._terms.append(entry.index, entry.term)
        last = entries[-1]
        state.next_index = last.index + 1
        state.next_offset = next_offset
        state.size_bytes = size_bytes
        state.last_term = last.term

    def truncate_prefix(self, snapshot: Snapshot) -> None:
        self._check()
        state = self._state
        index = snapshot.meta.index
        if index < state.first_index:
            return
        assert index < state.next_index, "truncating past the last index"
        assert index <= state.applied_submitted, "compacting entries that are not applied"
        assert self.term(index) == snapshot.meta.term, "snapshot term disagrees with the log"
        first_offset = self._next_offset_after(index)
        if state.partition:
            assert decode_partition_snapshot(snapshot.data)[0] == first_offset, (
                "a partition snapshot must name the offset after its index"
            )
        deleted_bytes = self._payload_bytes(state.first_index, index + 1)
        meta = dataclasses.replace(
            state.group_meta(),
            first_index=index + 1,
            first_offset=first_offset,
            size_bytes=state.size_bytes - deleted_bytes,
        )
        op = TruncatePrefixOp(
            self.group_id,
            index + 1,
            first_offset,
            encode_group_meta(meta),
            applied_index=state.applied_submitted,
            repair_time_index=state.partition,
            snapshot=encode_snapshot(snapshot.meta, snapshot.data),
        )
        self._submit(op)
        state.first_index = index + 1
        state.start_offset = first_offset
        state.size_bytes -= deleted_bytes
        self._snapshot = snapshot
        if index + 1 >= state.next_index:
            self._terms.reset(state.next_index)
        else:
            self._terms.compact_to(index + 1)

    def apply_snapshot(self, snapshot: Snapshot) -> None:
        self._check()
        state = self._state
        index = snapshot.meta.index
        assert index >= state.first_index - 1, "snapshot older than ours"
        assert index >= state.applied_submitted, "snapshot behind the applied index"
        next_offset = 0
        producer_rows: list[tuple[int, bytes | None]] = []
        queue_rows: list[tuple[bytes, bytes | None]] = []
        if state.partition:
            next_offset = decode_partition_snapshot(snapshot.data)[0]
            assert next_offset >= state.end_offset, "snapshot moves the high watermark back"
            encoded = partition_snapshot_producers(snapshot.data)
            table = decode_table(encoded) if encoded else ProducerTable((), next_offset)
            # The leader's table may be newer than the snapshot's index: the
            # entries between are replayed onto it and change nothing.
            table.applied_next_offset = max(table.applied_next_offset, next_offset)
            state.producers.replace(table)
            producer_rows = [(pid, encode_entry(entry)) for pid, entry in table.items()]
            producer_rows.append((0, keys.pack_u64(table.applied_next_offset)))
            queue_rows = self._install_queues(snapshot)
        meta = GroupMeta(index + 1, next_offset, 0, index, state.partition)
        op = InstallSnapshotOp(
            self.group_id,
            encode_group_meta(meta),
            encode_snapshot(snapshot.meta, snapshot.data),
            producer_rows=producer_rows,
            queue_rows=queue_rows,
        )
        self._submit(op)
        # Nothing below the snapshot is readable any more (its rows are going),
        # so readers see the new start and end at once.
        state.first_index = state.next_index = index + 1
        state.start_offset = state.next_offset = next_offset
        state.size_bytes = 0
        state.last_term = snapshot.meta.term
        state.applied_submitted = index
        self._applied_next_offset = next_offset
        self._pending.clear()
        self._unrevealed.clear()
        self._visible_index = max(self._visible_index, index)
        self._terms.reset(index + 1)
        self._snapshot = snapshot
        if self._log is not None:
            state.applied_index = max(state.applied_index, index)
            self._log.on_applied(index, next_offset)
        else:
            state.applied_index = index
            state.end_offset = next_offset

    def _install_queues(self, snapshot: Snapshot) -> list[tuple[bytes, bytes | None]]:
        """Replaces the queue table by the snapshot's; returns the rows to write."""
        encoded = partition_snapshot_queues(snapshot.data)
        table = decode_queue_table(encoded) if encoded else QueueTable()
        # The leader's table may be newer than the snapshot's index: the
        # entries between are replayed onto it and change nothing.
        table.covered_index = max(table.covered_index, snapshot.meta.index)
        self._state.queues.replace(table)
        group_id = self.group_id
        rows: list[tuple[bytes, bytes | None]] = [
            (keys.queue_key(group_id, name), table.row(name)) for name in table.names()
        ]
        rows.append((keys.queue_covered_key(group_id), keys.pack_u64(table.covered_index)))
        return rows

    # ---- the host's side ----------------------------------------------------------

    @property
    def partition_log(self) -> PartitionLog | None:
        """The offset view of this group (None for groups that are not partitions)."""
        return self._log

    @property
    def producers(self) -> ProducerTable:
        """The partition's producer table as of `applied_submitted` (producers.py)."""
        return self._state.producers

    @property
    def queues(self) -> QueueTable:
        """The partition's queue groups as of `applied_submitted` (queues.py)."""
        return self._state.queues

    @property
    def applied_index(self) -> int:
        """The highest index whose apply is durable (pass it to `RawNode(applied=...)`)."""
        return self._state.applied_index

    @property
    def applied_submitted(self) -> int:
        """The highest index handed to `apply_entries` (durable or not): a new
        RawNode over this storage resumes after it (`RawNode(applied=...)`)."""
        return self._state.applied_submitted

    @property
    def rows_committed_index(self) -> int:
        """The highest index whose log row is committed here (readable by others)."""
        return self._pending_lo() - 1

    @property
    def visible_index(self) -> int:
        """The highest index visible to readers: committed, its log row committed
        here; its apply (index rows, applied index) may not be durable yet."""
        return self._visible_index

    @property
    def next_offset(self) -> int:
        """The offset after the log's tail as written (the leader proposes from it)."""
        return self._state.next_offset

    @property
    def failed(self) -> StorageError | None:
        return self._failed

    def ready_bytes(self, ready: Ready) -> int:
        """What handling `ready` (persist and apply) charges to the writer's queue budget."""
        total = 0
        if ready.snapshot is not None:
            total += _snapshot_op_bytes(ready.snapshot)
        if ready.entries:
            total += WriteOp.reserved_bytes(
                sum(ROW_HEADER_BYTES + len(e.data) for e in ready.entries)
            )
        if ready.hard_state is not None:
            total += WriteOp.reserved_bytes(HARD_STATE_BYTES)
        if ready.truncate is not None:
            total += _snapshot_op_bytes(ready.truncate)
        if ready.committed_entries:
            index_rows = 0
            producer_bytes = 0
            if self._state.partition:
                queues = self._state.queues
                decoded = []
                for e in ready.committed_entries:
                    if e.type is not EntryType.NORMAL:
                        continue
                    batch = decode_batch_header(e.data)
                    if batch.kind is BatchKind.QUEUE_CONTROL:
                        # Decoded twice (here and when applied): these entries
                        # are one per queue group and leader turn, not per record.
                        found = queues.decode(
                            e.index, memoryview(e.data)[BATCH_HEADER_BYTES:], quiet=True
                        )
                        if found is not None:
                            decoded.append(found)
                    elif batch.takes_offsets:
                        index_rows += 1
                        if batch.producer is not None:
                            producer_bytes += PRODUCER_APPLY_BYTES_MAX
                        if batch.delayed:
                            # At most one delay row per record (no parse here).
                            producer_bytes += DELAY_ROW_BYTES * batch.record_count
                if decoded:
                    producer_bytes += queues.apply_bytes_max(decoded)
            total += WriteOp.reserved_bytes(INDEX_ROW_BYTES * index_rows + producer_bytes)
        return total

    async def reserve(self, size_bytes: int) -> None:
        """Waits until `size_bytes` of writes fit in the writer's budget, then holds them.

        The host reserves `ready_bytes(ready)` before handling a Ready, so the
        synchronous writes never find the queue full; `flush()` gives back
        what was not used. Writes without a reservation go through only while
        the queue has room (and raise StorageError otherwise).
        """
        self._check()
        await self._writer.reserve(size_bytes)
        self._credit_bytes += size_bytes

    def try_reserve(self, size_bytes: int) -> bool:
        """`reserve()` without waiting: True if the bytes were taken now.

        The multi-Raft host handles many groups in one turn and must not let
        one group's wait hold the others back; a group that cannot reserve
        keeps its Ready for the next turn.
        """
        self._check()
        if not self._writer.try_reserve(size_bytes):
            return False
        self._credit_bytes += size_bytes
        return True

    def flush(self) -> asyncio.Future[None]:
        """A future that resolves once every write submitted so far is durable.

        Fails with the storage error if any of them failed.
        """
        if self._credit_bytes:
            credit, self._credit_bytes = self._credit_bytes, 0
            self._writer.release(credit)
        done: asyncio.Future[None] = self._loop.create_future()
        last = self._last_future
        if self._failed is not None:
            done.set_exception(self._failed)
        elif last is None:
            done.set_result(None)
        else:
            # Turns commit in FIFO order: the newest op durable means all are.
            # A failure of any op fails every op queued behind it too.
            last.add_done_callback(lambda source: _copy_outcome(source, done))
        return done

    async def sync(self) -> None:
        """Waits until everything submitted so far is durable."""
        await self.flush()

    def apply_entries(self, entries: Sequence[Entry]) -> asyncio.Future[None]:
        """Marks committed `entries` applied: writes their offset/time index rows and
        the applied index in one writer turn.

        `entries` continue the applied index (a Ready's `committed_entries`).
        They are committed, so each becomes visible (the PartitionLog's
        `end_offset`, the high watermark, moves past it and waiting consumers
        wake) as soon as its log row is committed here: at once for rows
        written in an earlier turn, else when their turn commits. The index
        rows do not gate visibility: a crash before they are durable loses
        nothing, since a restart re-applies the durable log to the same
        offsets. The returned future resolves when the apply is durable.
        """
        self._check()
        done: asyncio.Future[None] = self._loop.create_future()
        if not entries:
            done.set_result(None)
            return done
        state = self._state
        assert entries[0].index == state.applied_submitted + 1, "applying out of order"
        assert entries[-1].index < state.next_index, "applying entries that are not stored"
        index_rows: list[IndexRow] = []
        producers = state.producers
        changed: dict[int, ProducerEntry | None] = {}
        queues = state.queues
        queues_changed: dict[str, None] = {}
        next_offset = self._applied_next_offset
        expected = entries[0].index
        for entry in entries:
            assert entry.index == expected, "applied entries are not contiguous"
            expected += 1
            if state.partition and entry.type is EntryType.NORMAL:
                batch = decode_batch_header(entry.data)
                if batch.kind is BatchKind.QUEUE_CONTROL:
                    name = queues.apply(entry.index, memoryview(entry.data)[BATCH_HEADER_BYTES:])
                    if name is not None:
                        queues_changed[name] = None
                elif batch.takes_offsets:
                    assert batch.base_offset == next_offset, "applied offsets are not dense"
                    index_rows.append(
                        IndexRow(
                            entry.index,
                            batch.base_offset,
                            batch.max_timestamp_ms,
                            # Only flagged batches are parsed (delays.py).
                            batch_delays(
                                memoryview(entry.data)[batch.header_bytes :],
                                batch.base_offset,
                                batch.record_count,
                            )
                            if batch.delayed
                            else (),
                        )
                    )
                    next_offset = batch.next_offset
                    changes = producers.apply(
                        batch.producer,
                        batch.base_offset,
                        batch.record_count,
                        batch.append_time_ms,
                    )
                    if changes:
                        changed.update(changes.rows)
            if entry.index > self._visible_index:  # else revealed early (reveal_committed)
                self._unrevealed.append((entry.index, next_offset))
        applied = entries[-1].index
        state.applied_submitted = applied
        self._applied_next_offset = next_offset
        self._reveal()
        op = LogWriteOp(
            self.group_id,
            (),
            index_rows=index_rows,
            group_meta=encode_group_meta(state.group_meta()),
            producer_rows=[
                (pid, None if entry is None else encode_entry(entry))
                for pid, entry in changed.items()
            ],
            queue_rows=[
                (keys.queue_key(self.group_id, name), queues.row(name)) for name in queues_changed
            ],
            on_commit=lambda: self._on_applied(applied, next_offset),
        )
        self._submit(op)
        assert op.future is not None
        op.future.add_done_callback(lambda f: _copy_outcome(f, done))
        return done

    def reveal_committed(self, entries: Sequence[Entry]) -> None:
        """Makes committed `entries` visible now, before `apply_entries` gets them.

        The host calls it when it learns of a commit while the Ready that
        will apply these entries is not taken yet. `entries` continue the
        applied ones with nothing waiting to be revealed, and their log rows
        are committed here; `apply_entries` later writes their index rows
        without revealing them again.
        """
        state = self._state
        if self._log is None or not entries:
            return
        assert not self._unrevealed, "entries are waiting to be revealed"
        assert entries[0].index == state.applied_submitted + 1 == self._visible_index + 1
        assert entries[-1].index <= self.rows_committed_index, "revealing rows not committed"
        revealed: list[tuple[int, int]] = []
        next_offset = self._applied_next_offset
        for entry in entries:
            if entry.type is EntryType.NORMAL:
                next_offset = entry_next_offset(entry, next_offset)
            revealed.append((entry.index, next_offset))
        self._visible_index = entries[-1].index
        self._log.on_committed(revealed)

    def close(self, error: StorageError) -> None:
        """Stops this storage object: later calls raise `error`."""
        self._poison(error)

    # ---- internals ------------------------------------------------------------------

    def _reveal(self) -> None:
        """Makes the committed entries whose log rows are committed here visible."""
        unrevealed = self._unrevealed
        stored_hi = self._pending_lo()
        if not unrevealed or unrevealed[0][0] >= stored_hi:
            return
        revealed: list[tuple[int, int]] = []
        while unrevealed and unrevealed[0][0] < stored_hi:
            revealed.append(unrevealed.popleft())
        self._visible_index = revealed[-1][0]
        if self._log is not None:
            self._log.on_committed(revealed)

    def _on_applied(self, applied: int, end_offset: int) -> None:
        self._visible_index = max(self._visible_index, applied)
        if self._log is not None:
            self._log.on_applied(applied, end_offset)
        else:
            state = self._state
            state.applied_index = max(state.applied_index, applied)
            state.end_offset = max(state.end_offset, end_offset)

    def _submit(self, op: WriteOp) -> int:
        """Charges `op` to the reservation (or free room) and queues it; returns its seq."""
        size = op.size_bytes
        if self._credit_bytes >= size:
            self._credit_bytes -= size
        elif not self._writer.try_reserve(size):
            raise StorageError(
                f"group {self.group_id}: the write queue is full; reserve() before handling a Ready"
            )
        self._op_seq += 1
        seq = self._op_seq
        then = op.on_commit

        def on_commit() -> None:
            self._on_op_committed(seq)
            if then is not None:
                then()

        op.on_commit = on_commit
        try:
            future = self._writer.submit(op)
        except StorageError as exc:
            self._poison(exc)
            raise
        future.add_done_callback(self._on_op_done)
        self._last_future = future
        return seq

    def _on_op_committed(self, seq: int) -> None:
        pending = self._pending
        cut = 0
        while cut < len(pending) and pending[cut][0] <= seq:
            cut += 1
        if cut:
            del pending[:cut]
            self._reveal()

    def _on_op_done(self, future: asyncio.Future[None]) -> None:
        _retrieve(future)
        if not future.cancelled() and future.exception() is not None:
            error = future.exception()
            assert isinstance(error, StorageError)
            self._poison(error)

    def _poison(self, error: StorageError) -> None:
        if self._failed is None:
            self._failed = error
            if self._log is not None:
                self._log.close(error)

    def _check(self) -> None:
        if self._failed is not None:
            raise self._failed

    def _pending_lo(self) -> int:
        return self._pending[0][1].index if self._pending else self._state.next_index

    def _pending_entry(self, index: int) -> tuple[int, Entry, int] | None:
        lo = self._pending_lo()
        if lo <= index < lo + len(self._pending):
            return self._pending[index - lo]
        return None

    def _drop_pending_from(self, index: int) -> None:
        lo = self._pending_lo()
        del self._pending[max(0, index - lo) :]

    def _next_offset_after(self, index: int) -> int:
        """The offset that follows entry `index` (first_index - 1 <= index < next_index)."""
        state = self._state
        if not state.partition:
            return 0
        if index == state.first_index - 1:
            return state.start_offset
        if index == state.next_index - 1:
            return state.next_offset
        pending = self._pending_entry(index)
        if pending is not None:
            return pending[2]
        with self._env.read() as txn:
            row = txn.get(Db.LOG, keys.log_key(self.group_id, index))
            if row is None:
                raise CorruptEntryError(f"group {self.group_id}: entry {index} is missing")
            return decode_row_header(row).next_offset

    def _payload_bytes(self, lo: int, hi: int) -> int:
        """Record payload bytes of entries [lo, hi) (what size_bytes counts)."""
        if not self._state.partition or lo >= hi:
            return 0
        total = 0
        pending_lo = self._pending_lo()
        if lo < pending_lo:
            group_id = self.group_id
            with self._env.read() as txn:
                scan = txn.iterate(
                    Db.LOG, keys.log_key(group_id, lo), keys.log_key(group_id, min(hi, pending_lo))
                )
                for _, value in scan:
                    header = decode_row_header(value)
                    total += payload_bytes_of(header.entry_type, value, ROW_HEADER_BYTES)
        for _, entry, _ in self._pending[max(0, lo - pending_lo) : max(0, hi - pending_lo)]:
            total += payload_bytes_of(entry.type, entry.data)
        return total


def _snapshot_op_bytes(snapshot: Snapshot) -> int:
    body = 21 + 4 * len(snapshot.meta.conf.members()) + len(snapshot.data) + 4
    # Installing a partition snapshot also writes its producer and queue tables
    # as rows, a little larger than their encoding inside the snapshot (a key
    # each instead of a length): charged twice, with the two covered rows.
    producer_rows = 2 * len(snapshot.data) + 2 * PRODUCER_KEY_BYTES + 2 * QUEUE_KEY_BYTES
    return WriteOp.reserved_bytes(GROUP_META_BYTES + body + producer_rows)


def _copy_outcome(source: asyncio.Future[None], target: asyncio.Future[None]) -> None:
    if target.done():
        return
    if source.cancelled():
        target.cancel()
    elif source.exception() is not None:
        error = source.exception()
        assert error is not None
        target.set_exception(error)
    else:
        target.set_result(None)


__all__ = ["INDEX_ROW_BYTES", "LmdbRaftStorage"]
