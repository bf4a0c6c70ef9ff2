"""Group-commit writer: one thread owns every LMDB write transaction.

The event loop submits write operations and gets asyncio futures. Each turn
the writer thread drains what is queued (up to `txn_bytes_max`), applies it
in ONE write transaction, commits once (one fsync in sync durability covers
every partition and every op of the turn), then resolves the whole turn with
ONE `loop.call_soon_threadsafe` call. Few py-lmdb calls per commit matter:
each call may wait out the interpreter's switch interval while the loop is
busy, so puts are batched per database (`putmulti`).

Memory is bounded in bytes: an op holds its reservation from submission until
its turn commits, and `reserve()` waits (FIFO) while the total would exceed
`write_queue_bytes_max` (DESIGN §7.5). Byte accounting lives on the loop only,
so it needs no lock; the thread only sees the op deque.

A full map or disk (`StorageFullError`) is not fatal: the turn's transaction
is aborted, its ops and every op queued behind it fail (their `on_fail`
callbacks undo, newest first, what the loop had already assigned to them,
such as offsets), submissions are refused until the loop has done so, and the
thread goes on. Any other failure kills the thread: every queued and
in-flight op and every later submission fails with a StorageError, and there
is no state in which a waiter hangs.
"""

from __future__ import annotations

import abc
import asyncio
import collections
import contextlib
import logging
import threading
from collections.abc import Callable, Iterator

from .errors import StorageError, StorageFullError
from .lmdbenv import Db, LmdbEnv, WriteTxn

logger = logging.getLogger(__name__)

# Fixed accounting charge per op on top of its payload: keys, index rows and
# Python object overhead, so that many tiny ops are bounded too.
OP_OVERHEAD_BYTES = 256

# Marks a group whose running-max timestamp the writer has not loaded yet.
_UNKNOWN = object()


class WriteOp(abc.ABC):
    """One unit of work for the writer. `apply` runs in the writer thread."""

    __slots__ = ("future", "on_commit", "on_fail", "size_bytes", "sync_required")

    # Heavy ops (range deletes) are bounded in rows, not bytes; a turn holds
    # at most one, so that one turn's work (and the time other groups' writes
    # wait for it) stays bounded too.
    heavy = False

    def __init__(
        self,
        size_bytes: int,
        on_commit: Callable[[], None] | None = None,
        *,
        on_fail: Callable[[], None] | None = None,
        sync_required: bool = False,
    ) -> None:
        self.size_bytes = WriteOp.reserved_bytes(size_bytes)
        # Runs on the event loop after the commit, before the future resolves,
        # so in-memory state (end_offset) moves before any waiter wakes.
        self.on_commit = on_commit
        # Runs on the event loop when the op's turn failed without killing the
        # writer (storage full): undoes what was assigned to the op when it
        # was submitted. Failed ops are undone newest first.
        self.on_fail = on_fail
        # The op must be on disk before its future resolves even in async
        # durability (votes, DESIGN §4): its turn ends with an fsync.
        self.sync_required = sync_required
        self.future: asyncio.Future[None] | None = None

    @staticmethod
    def reserved_bytes(content_bytes: int) -> int:
        """What an op with `content_bytes` of keys and values counts against the queue bound."""
        return content_bytes + OP_OVERHEAD_BYTES

    @abc.abstractmethod
    def apply(self, turn: Turn) -> None: ...


class Turn:
    """What an op may do inside the turn's write transaction.

    Puts are buffered per database and written with one `putmulti` each at the
    end of the turn (sorted, which LMDB likes). Ops that read or delete ranges
    call `barrier()` first so they see every earlier op's puts.
    """

    def __init__(self, txn: WriteTxn, time_heads: dict[int, object]) -> None:
        self.txn = txn
        self._puts: dict[Db, dict[bytes, bytes]] = {}
        self._time_heads = time_heads

    def put(self, db: Db, key: bytes, value: bytes) -> None:
        pending = self._puts.get(db)
        if pending is None:
            pending = self._puts[db] = {}
        pending[key] = value

    def delete(self, db: Db, key: bytes) -> None:
        pending = self._puts.get(db)
        if pending is not None:
            pending.pop(key, None)
        self.txn.delete(db, key)

    def get(self, db: Db, key: bytes) -> bytes | None:
        """A row as this turn left it so far: its buffered put, else the transaction's."""
        pending = self._puts.get(db)
        if pending is not None:
            value = pending.get(key)
            if value is not None:
                return value
        found = self.txn.get(db, key)
        return None if found is None else bytes(found)

    def barrier(self) -> None:
        self.flush()

    def flush(self) -> None:
        for db, pending in self._puts.items():
            if pending:
                self.txn.put_many(db, sorted(pending.items()))
        self._puts.clear()

    def time_head(self, group_id: int, load: Callable[[WriteTxn], int | None]) -> int | None:
        """The group's running max timestamp over retained entries (None: no entries)."""
        head = self._time_heads.get(group_id, _UNKNOWN)
        if head is _UNKNOWN:
            head = load(self.txn)
            self._time_heads[group_id] = head
        assert head is None or isinstance(head, int)
        return head

    def set_time_head(self, group_id: int, head: int | None) -> None:
        self._time_heads[group_id] = head

    def forget_time_head(self, group_id: int) -> None:
        self._time_heads.pop(group_id, None)


class GroupCommitWriter:
    """Owns the writer thread (and, in async durability, the background syncer)."""

    def __init__(
        self,
        env: LmdbEnv,
        loop: asyncio.AbstractEventLoop,
        *,
        queue_bytes_max: int,
        txn_bytes_max: int,
        sync_interval_ms: int | None,
    ) -> None:
        if queue_bytes_max <= OP_OVERHEAD_BYTES or txn_bytes_max <= 0:
            raise ValueError("queue_bytes_max and txn_bytes_max must be positive and usable")
        self._env = env
        self._loop = loop
        self._queue_bytes_max = queue_bytes_max
        self._txn_bytes_max = txn_bytes_max
        self._sync_interval_ms = sync_interval_ms
        # Shared with the thread, guarded by _cond.
        self._cond = threading.Condition()
        self._queue: collections.deque[WriteOp] = collections.deque()
        self._stopping = False
        # While > 0 the thread takes no turn (see hold()).
        self._holds = 0
        self._fatal: StorageError | None = None
        # Set by the thread when a turn failed because storage is full, cleared
        # by the loop once every failed op was undone: submissions in between
        # would get offsets that the undo is about to hand out again.
        self._rejecting: StorageError | None = None
        # Touched by the writer thread only.
        self._time_heads: dict[int, object] = {}
        # Counters written by the threads, read racily for stats (ints are atomic).
        self._commits = 0
        self._ops_committed = 0
        self._bytes_committed = 0
        self._syncs = 0
        # Loop side only.
        self._reserved_bytes = 0
        self._reserved_bytes_peak = 0
        self._queue_waits = 0
        self._outstanding_ops = 0
        self._space_waiters: collections.deque[tuple[int, asyncio.Future[None]]] = (
            collections.deque()
        )
        self._idle_waiters: list[asyncio.Future[None]] = []
        # Ops submitted and ops whose turn ended (committed or failed), in
        # submission order (turns are FIFO), and the barriers waiting on them.
        self._ops_submitted = 0
        self._ops_ended = 0
        self._barriers: collections.deque[tuple[int, asyncio.Future[None]]] = collections.deque()
        self._failed: StorageError | None = None
        self._failure_listeners: list[Callable[[StorageError], None]] = []
        # Non-fatal write failures (storage full): the latest one while writes
        # fail, None once a turn commits again.
        self._failing: StorageError | None = None
        self._write_state_listeners: list[Callable[[StorageError | None], None]] = []
        self._turns_failed = 0
        self._closing = False
        self._exited: asyncio.Future[None] = loop.create_future()
        self._thread = threading.Thread(target=self._run, name="weir-storage-writer", daemon=True)
        self._sync_stop = threading.Event()
        self._syncer: threading.Thread | None = None

    # ---- event loop side -------------------------------------------------

    def start(self) -> None:
        if self._sync_interval_ms is not None:
            self._syncer = threading.Thread(
                target=self._sync_loop, name="weir-storage-syncer", daemon=True
            )
            self._syncer.start()
        self._thread.start()

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The event loop that owns this writer's futures and callbacks."""
        return self._loop

    def add_failure_listener(self, listener: Callable[[StorageError], None]) -> None:
        self._failure_listeners.append(listener)

    def add_write_state_listener(self, listener: Callable[[StorageError | None], None]) -> None:
        """Hears `error` when a turn fails without killing the writer, None when one commits."""
        self._write_state_listeners.append(listener)

    @property
    def failed(self) -> StorageError | None:
        """The error that killed the writer; None while it runs."""
        return self._failed

    @property
    def failing(self) -> StorageError | None:
        """The last non-fatal write failure while writes fail; None once a turn commits."""
        return self._failing

    async def reserve(self, size_bytes: int) -> None:
        """Waits (FIFO) until `size_bytes` fit in the queue budget, then holds them."""
        if self._failed is not None:
            raise self._failed
        if self._closing:
            raise StorageError("storage is closing")
        if size_bytes > self._queue_bytes_max:
            raise StorageError(
                f"write of {size_bytes} bytes exceeds write_queue_bytes_max={self._queue_bytes_max}"
            )
        if not self._space_waiters and self._fits(size_bytes):
            self._take_space(size_bytes)
            return
        waiter: asyncio.Future[None] = self._loop.create_future()
        self._space_waiters.append((size_bytes, waiter))
        self._queue_waits += 1
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                # Space was granted in the same iteration we were cancelled.
                self.release(size_bytes)
            else:
                self._grant_space()
                self._check_idle()
            raise

    def try_reserve(self, size_bytes: int) -> bool:
        """Takes `size_bytes` of the queue budget now if they fit and nobody waits; never waits.

        For synchronous callers (the Raft storage protocol's writes): a write
        that does not fit is refused, never queued beyond the bound.
        """
        if self._failed is not None:
            raise self._failed
        if self._closing:
            raise StorageError("storage is closing")
        if self._space_waiters or not self._fits(size_bytes):
            return False
        self._take_space(size_bytes)
        return True

    def release(self, size_bytes: int) -> None:
        """Gives back a reservation that will not be submitted."""
        self._reserved_bytes -= size_bytes
        self._grant_space()
        self._check_idle()

    def submit(self, op: WriteOp) -> asyncio.Future[None]:
        """Queues `op` (whose size was reserved) for the next turn; never blocks."""
        future: asyncio.Future[None] = self._loop.create_future()
        op.future = future
        with self._cond:
            fatal = self._fatal
            if fatal is None and self._stopping:
                fatal = StorageError("storage writer has stopped")
            if fatal is None:
                fatal = self._rejecting
            if fatal is None:
                self._queue.append(op)
                self._cond.notify()
        if fatal is not None:
            self.release(op.size_bytes)
            raise fatal
        self._outstanding_ops += 1
        self._ops_submitted += 1
        return future

    def barrier(self) -> asyncio.Future[None]:
        """A future that resolves once every op submitted so far has committed.

        It fails (with the first error seen) if any op still pending now
        fails. It is resolved directly where the writer's turn completes, so
        its awaiter wakes one loop iteration after the commit; the Raft host
        waits on it once per turn rather than on a chain of per-group futures.
        The future belongs to its caller: cancelling it touches no op.
        """
        future: asyncio.Future[None] = self._loop.create_future()
        if self._failed is not None:
            future.set_exception(self._failed)
        elif self._ops_ended >= self._ops_submitted:
            future.set_result(None)
        else:
            self._barriers.append((self._ops_submitted, future))
        return future

    def _end_ops(self, count: int, error: StorageError | None) -> None:
        """`count` more ops ended: settle the barriers they complete (all of them on error)."""
        self._ops_ended += count
        barriers = self._barriers
        while barriers and (error is not None or barriers[0][0] <= self._ops_ended):
            _, future = barriers.popleft()
            if future.done():
                continue
            if error is None:
                future.set_result(None)
            else:
                future.set_exception(error)

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        """Keeps the thread from starting a turn while the block submits ops.

        The Raft host submits the writes of every group with work in one
        synchronous block; without the hold the thread could wake on the first
        op and commit it alone, so one host turn would cost two fsyncs. The
        block must not await: the thread waits for it.
        """
        with self._cond:
            self._holds += 1
        try:
            yield
        finally:
            with self._cond:
                self._holds -= 1
                self._cond.notify()

    async def run(self, op: WriteOp) -> None:
        """Reserve, submit and wait for the commit of one op."""
        await self.reserve(op.size_bytes)
        await self.submit(op)

    async def close(self) -> None:
        """Drains every submitted op, then stops the thread (final sync in async mode)."""
        self._closing = True
        while self._reserved_bytes or self._space_waiters:
            if self._failed is not None:
                break
            idle: asyncio.Future[None] = self._loop.create_future()
            self._idle_waiters.append(idle)
            await idle
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._thread.is_alive() or not self._exited.done():
            await self._exited
        self._thread.join()

    def stats(self) -> dict[str, int]:
        return {
            "writer_commits": self._commits,
            "writer_ops_committed": self._ops_committed,
            "writer_bytes_committed": self._bytes_committed,
            "writer_syncs": self._syncs,
            "write_queue_bytes": self._reserved_bytes,
            "write_queue_bytes_peak": self._reserved_bytes_peak,
            "write_queue_bytes_max": self._queue_bytes_max,
            "write_queue_waits": self._queue_waits,
            "write_queue_ops": self._outstanding_ops,
            "writer_failed": int(self._failed is not None),
            "writer_turns_failed": self._turns_failed,
            "writer_failing": int(self._failing is not None),
        }

    def _fits(self, size_bytes: int) -> bool:
        return self._reserved_bytes + size_bytes <= self._queue_bytes_max

    def _take_space(self, size_bytes: int) -> None:
        self._reserved_bytes += size_bytes
        self._reserved_bytes_peak = max(self._reserved_bytes_peak, self._reserved_bytes)

    def _grant_space(self) -> None:
        while self._space_waiters:
            size_bytes, waiter = self._space_waiters[0]
            if waiter.done():
                self._space_waiters.popleft()
                continue
            if not self._fits(size_bytes):
                return
            self._space_waiters.popleft()
            self._take_space(size_bytes)
            waiter.set_result(None)

    def _check_idle(self) -> None:
        # Reserved bytes cover granted-but-not-yet-submitted ops too, so close()
        # cannot stop the thread under an append that is about to submit.
        if self._reserved_bytes or any(not w.done() for _, w in self._space_waiters):
            return
        self._space_waiters.clear()
        waiters, self._idle_waiters = self._idle_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def _complete_turn(self, ops: list[WriteOp], error: StorageError | None) -> None:
        """Runs on the loop, once per turn: moves state, resolves futures, frees space."""
        if error is not None:
            self._fail(error)
        for op in ops:
            self._reserved_bytes -= op.size_bytes
            self._outstanding_ops -= 1
            future = op.future
            assert future is not None
            if error is None:
                if op.on_commit is not None:
                    op.on_commit()
                if not future.done():
                    future.set_result(None)
            elif not future.done():
                future.set_exception(error)
        self._end_ops(len(ops), error)
        self._grant_space()
        self._check_idle()
        if error is None and self._failing is not None:
            self._set_failing(None)

    def _complete_failed_turn(self, ops: list[WriteOp], error: StorageError) -> None:
        """Runs on the loop after a non-fatal failure: undo, fail, accept again."""
        self._turns_failed += 1
        # Newest first, so each undo sees the state its op left behind.
        for op in reversed(ops):
            if op.on_fail is not None:
                op.on_fail()
        for op in ops:
            self._reserved_bytes -= op.size_bytes
            self._outstanding_ops -= 1
            future = op.future
            assert future is not None
            if not future.done():
                future.set_exception(error)
        with self._cond:
            if self._rejecting is error:
                self._rejecting = None
        self._end_ops(len(ops), error)
        self._set_failing(error)
        self._grant_space()
        self._check_idle()

    def _set_failing(self, error: StorageError | None) -> None:
        self._failing = error
        for listener in tuple(self._write_state_listeners):
            listener(error)

    def _fail(self, error: StorageError) -> None:
        if self._failed is not None:
            return
        self._failed = error
        waiters = list(self._space_waiters)
        self._space_waiters.clear()
        for _, waiter in waiters:
            if not waiter.done():
                waiter.set_exception(error)
        for listener in self._failure_listeners:
            listener(error)
        idle, self._idle_waiters = self._idle_waiters, []
        for waiter in idle:
            if not waiter.done():
                waiter.set_result(None)

    # ---- writer thread side ----------------------------------------------

    def _post(self, callback: Callable[..., None], *args: object) -> None:
        # A closed loop (RuntimeError) means nobody is left to notify.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(callback, *args)

    def _take_turn(self) -> list[WriteOp]:
        """Pops ops for one transaction: at least one, then up to txn_bytes_max."""
        ops = [self._queue.popleft()]
        turn_bytes = ops[0].size_bytes
        heavy = ops[0].heavy
        while self._queue and turn_bytes + self._queue[0].size_bytes <= self._txn_bytes_max:
            if heavy and self._queue[0].heavy:
                break
            op = self._queue.popleft()
            turn_bytes += op.size_bytes
            heavy = heavy or op.heavy
            ops.append(op)
        return ops

    def _commit(self, ops: list[WriteOp]) -> None:
        try:
            with self._env.write() as txn:
                turn = Turn(txn, self._time_heads)
                for op in ops:
                    op.apply(turn)
                turn.flush()
                txn.commit()
        except StorageFullError:
            # The aborted turn may have moved cached running maxima; they are
            # reloaded from what is committed.
            self._time_heads.clear()
            raise
        if self._sync_interval_ms is not None and any(op.sync_required for op in ops):
            # Async durability still fsyncs a turn that holds a vote or other
            # hard state before anyone is told it is written (DESIGN §4).
            self._env.sync()
            self._syncs += 1
        self._commits += 1
        self._ops_committed += len(ops)
        self._bytes_committed += sum(op.size_bytes for op in ops)

    def _run(self) -> None:
        ops: list[WriteOp] = []
        error: StorageError | None = None
        try:
            while True:
                with self._cond:
                    while (
                        (not self._queue or self._holds)
                        and not self._stopping
                        and self._fatal is None
                    ):
                        self._cond.wait()
                    if self._fatal is not None:
                        raise self._fatal
                    if not self._queue:
                        break
                    ops = self._take_turn()
                try:
                    self._commit(ops)
                except StorageFullError as full:
                    logger.warning("storage write failed, %s; the writer goes on", full)
                    with self._cond:
                        # Everything queued was assigned offsets after the failed
                        # ops; it fails too so the loop can undo without gaps.
                        self._rejecting = full
                        ops.extend(self._queue)
                        self._queue.clear()
                    self._post(self._complete_failed_turn, ops, full)
                    ops = []
                    continue
                self._post(self._complete_turn, ops, None)
                ops = []
        except BaseException as exc:
            if isinstance(exc, StorageError):
                error = exc
            else:
                error = StorageError(f"storage writer died: {exc!r}")
                error.__cause__ = exc
            logger.exception("storage writer thread died; failing every pending write")
            with self._cond:
                if self._fatal is None:
                    self._fatal = error
                ops.extend(self._queue)
                self._queue.clear()
            self._post(self._complete_turn, ops, error)
        finally:
            self._stop_syncer(final_sync=error is None)
            self._post(self._set_exited)

    def _set_exited(self) -> None:
        if not self._exited.done():
            self._exited.set_result(None)

    def _stop_syncer(self, final_sync: bool) -> None:
        if self._syncer is None:
            return
        self._sync_stop.set()
        self._syncer.join()
        if final_sync:
            # Async durability: what was acknowledged reaches the disk before close.
            try:
                self._env.sync()
                self._syncs += 1
            except StorageError:
                logger.exception("final env sync failed")

    def _sync_loop(self) -> None:
        """Async durability: fsync in the background, bounding what a machine crash loses."""
        assert self._sync_interval_ms is not None
        interval_s = self._sync_interval_ms / 1000
        synced_commits = 0
        while not self._sync_stop.wait(interval_s):
            commits = self._commits
            if commits == synced_commits:
                continue
            try:
                self._env.sync()
            except StorageError as exc:
                with self._cond:
                    if self._fatal is None:
                        self._fatal = exc
                    self._cond.notify()
                return
            synced_commits = commits
            self._syncs += 1
