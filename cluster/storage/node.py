"""NodeStorage: the node's LMDB environment, its writer and its partition logs.

One environment per node with named databases shared by every partition
(DESIGN §4), so one write transaction and one fsync cover every partition a
writer turn touches.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import logging
import pathlib
import time
from collections.abc import Callable, Iterator
from types import TracebackType

from ..raft.types import EMPTY_CONF, ConfState, HardState
from . import keys
from .codec import decode_hard_state, encode_hard_state
from .datadir import DataDirLock
from .errors import LogClosedError, StorageError
from .lmdbenv import Db, LmdbEnv
from .log import PartitionLog
from .meta import MetaStore
from .ops import DropGroupOp, HardStateOp, MetaWriteOp
from .queues import QUEUE_GROUPS_PER_PARTITION_MAX_DEFAULT
from .raft_storage import LmdbRaftStorage
from .state import LogState, load_group
from .writer import GroupCommitWriter

logger = logging.getLogger(__name__)

MAP_SIZE_BYTES_DEFAULT = 64 * 2**30
WRITE_QUEUE_BYTES_MAX_DEFAULT = 64 * 2**20
TXN_BYTES_MAX_DEFAULT = 16 * 2**20
ASYNC_SYNC_INTERVAL_MS_DEFAULT = 5
# While writes fail because storage is full, a tiny write this often finds out
# when space came back (a topic delete, retention, a grown disk), so that
# health turns SERVING again without waiting for a client to try.
WRITE_PROBE_INTERVAL_MS_DEFAULT = 1000
# Rows one drop chunk (one writer turn) deletes at most. Deleting a 64-partition
# topic in one transaction held every other write for up to 28 s (issue 9);
# 10,000 row deletes take a few tens of milliseconds.
DROP_ROWS_PER_TURN_MAX = 10_000
# The probe's row, in a namespace of its own so it never shows in MetaStore scans.
PROBE_NAMESPACE = "weir.storage"
PROBE_KEY = b"write-probe"


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


class Durability(enum.StrEnum):
    # fsync at every commit, before any write of the turn is acknowledged.
    SYNC = "sync"
    # Commit without fsync; a background env.sync() every async_sync_interval_ms.
    ASYNC = "async"


@dataclasses.dataclass(frozen=True, slots=True)
class StorageConfig:
    path: pathlib.Path
    durability: Durability = Durability.SYNC
    map_size_bytes: int = MAP_SIZE_BYTES_DEFAULT
    write_queue_bytes_max: int = WRITE_QUEUE_BYTES_MAX_DEFAULT
    txn_bytes_max: int = TXN_BYTES_MAX_DEFAULT
    async_sync_interval_ms: int = ASYNC_SYNC_INTERVAL_MS_DEFAULT
    write_probe_interval_ms: int = WRITE_PROBE_INTERVAL_MS_DEFAULT
    clock_ms: Callable[[], int] = wall_clock_ms
    # The leader's bound on queue groups per partition (queues.py).
    queue_groups_per_partition_max: int = QUEUE_GROUPS_PER_PARTITION_MAX_DEFAULT


def _lock_and_open(
    path: pathlib.Path, map_size_bytes: int, fsync_on_commit: bool
) -> tuple[DataDirLock, LmdbEnv]:
    """Takes the data folder's lock, then opens LMDB under it (blocking)."""
    lock = DataDirLock.acquire(path)
    try:
        env = LmdbEnv.open(path, map_size_bytes, fsync_on_commit)
    except BaseException:
        lock.release()
        raise
    return lock, env


class NodeStorage:
    """`async with NodeStorage(config) as storage:` opens, and on exit drains and closes."""

    def __init__(self, config: StorageConfig) -> None:
        self._config = config
        self._env: LmdbEnv | None = None
        self._lock: DataDirLock | None = None
        self._writer: GroupCommitWriter | None = None
        self._meta: MetaStore | None = None
        self._logs: dict[int, PartitionLog] = {}
        self._rafts: dict[int, LmdbRaftStorage] = {}
        # Groups whose drop has not finished: their logs cannot be opened.
        self._dropping: dict[int, int] = {}
        self._drop_chunks = 0
        self._drop_chunk_rows_peak = 0
        # Why writes fail right now (None while they succeed), and who wants
        # to know when that changes (the node flips gRPC health from it).
        self._write_error: StorageError | None = None
        self._health_listeners: list[Callable[[StorageError | None], None]] = []
        self._probe_task: asyncio.Task[None] | None = None
        self._probe_wanted = asyncio.Event()

    async def __aenter__(self) -> NodeStorage:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def open(self) -> None:
        if self._env is not None:
            raise StorageError("storage is already open")
        config = self._config
        sync = config.durability is Durability.SYNC
        # Opening touches the disk (creates files, maps them): off the loop.
        lock, env = await asyncio.to_thread(
            _lock_and_open, pathlib.Path(config.path), config.map_size_bytes, sync
        )
        self._lock = lock
        writer = GroupCommitWriter(
            env,
            asyncio.get_running_loop(),
            queue_bytes_max=config.write_queue_bytes_max,
            txn_bytes_max=config.txn_bytes_max,
            sync_interval_ms=None if sync else config.async_sync_interval_ms,
        )
        writer.add_failure_listener(self._on_writer_failed)
        writer.add_write_state_listener(self._on_write_state)
        writer.start()
        self._env, self._writer = env, writer
        self._meta = MetaStore(env, writer)
        self._probe_task = asyncio.create_task(self._probe_writes(writer), name="storage-probe")

    async def close(self) -> None:
        env, writer = self._env, self._writer
        if env is None or writer is None:
            return
        probe, self._probe_task = self._probe_task, None
        if probe is not None:
            probe.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await probe
        await writer.close()
        closed = LogClosedError("storage closed")
        for raft in self._rafts.values():
            raft.close(closed)
        self._rafts.clear()
        for log in self._logs.values():
            log.close(closed)
        self._logs.clear()
        env.close()
        self._env = self._writer = self._meta = None
        # Released last: nobody may open the folder while our env is still mapped.
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    @property
    def write_error(self) -> StorageError | None:
        """Why writes fail now (map full, disk full, writer died); None while they succeed."""
        return self._write_error

    def add_health_listener(self, callback: Callable[[StorageError | None], None]) -> None:
        """Calls `callback(error)` on the loop when writes start failing, `callback(None)`
        when they succeed again. Only changes are reported, not every failed write."""
        self._health_listeners.append(callback)

    def remove_health_listener(self, callback: Callable[[StorageError | None], None]) -> None:
        with contextlib.suppress(ValueError):
            self._health_listeners.remove(callback)

    def _set_write_error(self, error: StorageError | None) -> None:
        previous = self._write_error
        self._write_error = error
        if (previous is None) == (error is None):
            return
        for listener in tuple(self._health_listeners):
            try:
                listener(error)
            except Exception:
                # A broken listener must not stop storage from reporting to the others.
                logger.exception("storage health listener failed")

    @property
    def meta(self) -> MetaStore:
        if self._meta is None:
            raise StorageError("storage is not open")
        return self._meta

    def partition_log(self, group_id: int) -> PartitionLog:
        """Opens (or creates) the group's log; cached, so every caller shares one."""
        log = self._logs.get(group_id)
        if log is not None:
            return log
        env, writer = self._open_parts()
        if writer.failed is not None:
            raise writer.failed
        if group_id in self._dropping:
            # Later chunks of the drop would delete whatever it appended.
            raise LogClosedError(f"partition log of group {group_id} is being dropped")
        loaded = load_group(env, group_id, partition=True)
        log = self._new_log(group_id, env, writer, loaded.state)
        self._logs[group_id] = log
        return log

    def raft_storage(
        self, group_id: int, *, conf: ConfState = EMPTY_CONF, partition: bool = True
    ) -> LmdbRaftStorage:
        """Opens (or returns) the Raft storage of a group, loading O(1) rows.

        `partition` groups keep offsets: their NORMAL entries hold batches
        (codec.py) and `partition_log(group_id)` is their offset view, fed at
        apply time. Other groups (the controller) store opaque entries.
        `conf` is the configuration of a new group's empty snapshot. A storage
        whose writes failed is reloaded from what committed (the host makes a
        new RawNode over it).
        """
        raft = self._rafts.get(group_id)
        if raft is not None and raft.failed is None:
            if (raft.partition_log is not None) != partition:
                raise StorageError(f"group {group_id} is open with partition={not partition}")
            return raft
        env, writer = self._open_parts()
        if writer.failed is not None:
            raise writer.failed
        if group_id in self._dropping:
            raise LogClosedError(f"group {group_id} is being dropped")
        log = self._logs.get(group_id)
        if log is not None and (log.closed or raft is not None):
            # The old view shared the poisoned state; readers reopen it.
            del self._logs[group_id]
            log = None
        loaded = load_group(env, group_id, partition)
        if partition and log is None:
            log = self._new_log(group_id, env, writer, loaded.state)
            self._logs[group_id] = log
        raft = LmdbRaftStorage(group_id, env, writer, loaded, log, conf)
        self._rafts[group_id] = raft
        return raft

    def _new_log(
        self, group_id: int, env: LmdbEnv, writer: GroupCommitWriter, state: LogState
    ) -> PartitionLog:
        config = self._config
        return PartitionLog(
            group_id,
            env,
            writer,
            state,
            config.clock_ms,
            queue_groups_max=config.queue_groups_per_partition_max,
        )

    @contextlib.contextmanager
    def hold_writes(self) -> Iterator[None]:
        """Ops submitted inside this (synchronous) block go to the writer together.

        One writer turn then covers all of them: one transaction, one fsync.
        The Raft host persists every group of its turn inside one hold.
        """
        _, writer = self._open_parts()
        with writer.hold():
            yield

    def writes_done(self) -> asyncio.Future[None]:
        """Resolves once every write submitted so far is committed (see `GroupCommitWriter.barrier`)."""
        _, writer = self._open_parts()
        return writer.barrier()

    async def drop_partition_log(self, group_id: int) -> None:
        _, writer = self._open_parts()
        dropped = LogClosedError(f"partition log of group {group_id} was dropped")
        raft = self._rafts.pop(group_id, None)
        if raft is not None:
            raft.close(dropped)
        log = self._logs.pop(group_id, None)
        if log is not None:
            log.close(dropped)
        self._dropping[group_id] = self._dropping.get(group_id, 0) + 1
        try:
            # One bounded chunk per op, each submitted after the previous one
            # committed: other groups' appends and meta writes go in between.
            while True:
                op = DropGroupOp(group_id, DROP_ROWS_PER_TURN_MAX)
                await writer.run(op)
                self._drop_chunks += 1
                self._drop_chunk_rows_peak = max(self._drop_chunk_rows_peak, op.deleted_rows)
                if op.finished:
                    break
        finally:
            self._dropping[group_id] -= 1
            if not self._dropping[group_id]:
                del self._dropping[group_id]

    async def save_hard_state(self, group_id: int, state: HardState) -> None:
        """Stores the group's Raft hard state; returns once it is on disk (any durability)."""
        _, writer = self._open_parts()
        await writer.run(HardStateOp(group_id, encode_hard_state(state)))

    def load_hard_state(self, group_id: int) -> HardState | None:
        """The group's last saved hard state; None if it never saved one (or was dropped)."""
        env, _ = self._open_parts()
        with env.read() as txn:
            value = txn.get(Db.HARDSTATE, keys.group_key(group_id))
            return None if value is None else decode_hard_state(value)

    async def enforce_retention(
        self, group_id: int, retention_bytes: int | None, retention_ms: int | None
    ) -> int:
        """Deletes whole oldest entries beyond the limits; returns how many were deleted."""
        self._open_parts()
        return await self.partition_log(group_id).truncate_prefix(retention_bytes, retention_ms)

    def writer_stats(self) -> dict[str, int]:
        """The writer's counters only (no LMDB call): cheap enough for every host turn."""
        _, writer = self._open_parts()
        return writer.stats()

    def stats(self) -> dict[str, int]:
        env, writer = self._open_parts()
        stats = env.stats()
        stats.update(writer.stats())
        stats["partition_logs_open"] = len(self._logs)
        stats["drop_chunks"] = self._drop_chunks
        stats["drop_chunk_rows_peak"] = self._drop_chunk_rows_peak
        return stats

    def _open_parts(self) -> tuple[LmdbEnv, GroupCommitWriter]:
        if self._env is None or self._writer is None:
            raise StorageError("storage is not open")
        return self._env, self._writer

    def _on_write_state(self, error: StorageError | None) -> None:
        """The writer's non-fatal state: a turn failed (storage full) or one committed."""
        if self._writer is not None and self._writer.failed is not None:
            return
        self._set_write_error(error)
        if error is not None:
            self._probe_wanted.set()

    async def _probe_writes(self, writer: GroupCommitWriter) -> None:
        """Owned by this storage (cancelled by close): probes while writes fail."""
        interval_s = self._config.write_probe_interval_ms / 1000
        probe_key = keys.meta_key(PROBE_NAMESPACE, PROBE_KEY)
        while True:
            await self._probe_wanted.wait()
            self._probe_wanted.clear()
            while writer.failing is not None and writer.failed is None:
                # A timer, not an event: nothing tells us that space came back.
                await asyncio.sleep(interval_s)
                # A commit clears the failure through _on_write_state; a
                # failure keeps it (and a dead writer ends the loop above).
                with contextlib.suppress(StorageError):
                    await writer.run(MetaWriteOp([(probe_key, b"")], []))

    def _on_writer_failed(self, error: StorageError) -> None:
        for raft in self._rafts.values():
            raft.close(error)
        for log in self._logs.values():
            log.close(error)
        self._set_write_error(error)
