"""LmdbRaftStorage beyond the conformance suite: reopen, crashes, suffix
truncation, compaction, the term cache, bounded reads, O(1) loading, and the
apply path (the high watermark moves when entries are known committed)."""

from __future__ import annotations

import os
import pathlib
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from weir.cluster.raft import (
    ConfState,
    Entry,
    EntryType,
    HardState,
    MemoryStorage,
    Snapshot,
    SnapshotMeta,
)
from weir.cluster.storage import (
    LmdbRaftStorage,
    StorageError,
    encode_control,
    encode_partition_snapshot,
    keys,
)
from weir.cluster.storage.codec import decode_batch_header, entry_next_offset
from weir.cluster.storage.lmdbenv import Db

from .raft_helpers import LoopStorage, batch_entries, batch_entry

pytestmark = pytest.mark.timeout(60)

GROUP = 3
CONF = ConfState(frozenset({1, 2, 3}))
REPO_ROOT = pathlib.Path(__file__).resolve().parents[3]
CRASH_ACKS_MIN = 40
CRASH_WAIT_S = 20.0


@pytest.fixture
def env(tmp_path: pathlib.Path) -> Iterator[LoopStorage]:
    loop_storage = LoopStorage(tmp_path)
    yield loop_storage
    loop_storage.close()


def _rows(env: LoopStorage, db: Db) -> list[tuple[bytes, bytes]]:
    """Every row of a database, through the open environment."""
    node_env = env.node._env
    assert node_env is not None
    with node_env.read() as txn:
        return [(k, bytes(v)) for k, v in txn.iterate(db, b"", None)]


def _apply(env: LoopStorage, storage: LmdbRaftStorage, index: int) -> None:
    lo = storage._state.applied_submitted + 1
    env.wait(storage.apply_entries(storage.entries(lo, index + 1, 1 << 30)))


def test_reopen_returns_the_same_state(env: LoopStorage) -> None:
    storage = env.node.raft_storage(GROUP, conf=CONF)
    storage.append([*batch_entries(1, 8), Entry(2, 8, EntryType.NOOP)])
    storage.append([batch_entry(9, 2, 7), Entry(2, 10, EntryType.NORMAL, encode_control(b"c"))])
    storage.set_hard_state(HardState(2, 1, 9))
    _apply(env, storage, 6)
    storage.truncate_prefix(Snapshot(SnapshotMeta(3, 1, CONF), encode_partition_snapshot(3, b"s")))
    env.wait(storage.sync())
    before = (
        storage.first_index(),
        storage.last_index(),
        storage.hard_state(),
        storage.snapshot(),
        storage.entries(4, 11, 1 << 30),
        storage.applied_index,
        storage.next_offset,
    )
    log = storage.partition_log
    assert log is not None
    log_before = (log.start_offset, log.end_offset, log.size_bytes, log.next_raft_index)
    assert log_before == (3, 6, 50, 11)  # batches 4-7 and 9
    env.reopen()
    again = env.node.raft_storage(GROUP)
    after = (
        again.first_index(),
        again.last_index(),
        again.hard_state(),
        again.snapshot(),
        again.entries(4, 11, 1 << 30),
        again.applied_index,
        again.next_offset,
    )
    assert after == before
    log = again.partition_log
    assert log is not None
    assert (log.start_offset, log.end_offset, log.size_bytes, log.next_raft_index) == log_before
    assert [b.base_offset for b in log.read(3, 1 << 20)] == [3, 4, 5]


def test_crash_mid_way_leaves_a_consistent_prefix(tmp_path: pathlib.Path) -> None:
    child = subprocess.Popen(
        [sys.executable, "-m", "tests.unit.storage.crash_raft_writer", str(tmp_path)],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )
    acked_commit = 0
    acks = 0
    deadline = time.monotonic() + CRASH_WAIT_S
    try:
        assert child.stdout is not None
        while acks < CRASH_ACKS_MIN and time.monotonic() < deadline:
            line = child.stdout.readline()
            if not line:
                break
            _, _, commit = line.split()
            acked_commit = max(acked_commit, int(commit))
            acks += 1
        # Killed mid-stream: later rounds are in flight, more acks may be buffered.
        os.kill(child.pid, signal.SIGKILL)
        rest, _ = child.communicate(timeout=10)
        for line in rest.splitlines():
            if line.strip():
                acked_commit = max(acked_commit, int(line.split()[2]))
    finally:
        if child.poll() is None:
            os.kill(child.pid, signal.SIGKILL)
            child.wait()
    assert acks >= CRASH_ACKS_MIN, "the child wrote too little before the deadline"
    env = LoopStorage(tmp_path)
    try:
        storage = env.node.raft_storage(9)
        hard = storage.hard_state()
        last = storage.last_index()
        assert acked_commit <= hard.commit <= last
        assert acked_commit <= storage.applied_index <= hard.commit
        entries = storage.entries(1, last + 1, 1 << 40)
        assert [e.index for e in entries] == list(range(1, last + 1))
        next_offset, term = 0, 0
        for entry in entries:
            assert entry.term >= term
            term = entry.term
            next_offset = entry_next_offset(entry, next_offset)  # dense offsets
        assert storage.next_offset == next_offset
        # Index rows exist exactly for the applied entries.
        index_rows = _rows(env, Db.OFFSET_INDEX)
        applied = storage.applied_index
        assert [keys.unpack_u64(v) for _, v in index_rows] == list(range(1, applied + 1))
        log = storage.partition_log
        assert log is not None
        assert log.end_offset == decode_batch_header(entries[applied - 1].data).next_offset
        assert log.read(0, 1 << 30)[0].base_offset == 0
    finally:
        env.close()


def test_suffix_truncation_touches_only_unapplied_log_rows(env: LoopStorage) -> None:
    storage = env.node.raft_storage(GROUP, conf=CONF)
    storage.append(batch_entries(1, 11))
    env.wait(storage.sync())
    _apply(env, storage, 5)
    # A new leader's entries replace 7..10 (in flight, then durable).
    storage.append(batch_entries(7, 9, term=2))
    assert [storage.term(i) for i in (5, 6, 7, 8)] == [1, 1, 2, 2]
    assert storage.last_index() == 8 and storage.next_offset == 8
    env.wait(storage.sync())
    log_rows = _rows(env, Db.LOG)
    assert [keys.parse_log_key(k)[1] for k, _ in log_rows] == list(range(1, 9))
    index_rows = _rows(env, Db.OFFSET_INDEX)
    assert [keys.unpack_u64(v) for _, v in index_rows] == [1, 2, 3, 4, 5]
    log = storage.partition_log
    assert log is not None
    assert (log.end_offset, log.size_bytes) == (5, 80)
    with pytest.raises(AssertionError):
        storage.append(batch_entries(5, 6, term=3))  # entry 5 is applied


def test_compaction_keeps_the_configuration(env: LoopStorage) -> None:
    storage = env.node.raft_storage(GROUP, conf=CONF, partition=False)
    storage.append([Entry(1, i, EntryType.NORMAL, b"cmd%d" % i) for i in range(1, 9)])
    _apply(env, storage, 6)
    conf = ConfState(frozenset({1, 2}), frozenset({5}))
    storage.truncate_prefix(Snapshot(SnapshotMeta(6, 1, conf), b"controller state"))
    env.wait(storage.sync())
    env.reopen()
    again = env.node.raft_storage(GROUP, partition=False)
    assert again.snapshot() == Snapshot(SnapshotMeta(6, 1, conf), b"controller state")
    assert (again.first_index(), again.last_index(), again.term(6)) == (7, 8, 1)
    with pytest.raises(StorageError):
        env.node.raft_storage(GROUP, partition=True)  # an opaque group on disk


def test_term_cache_matches_a_model_across_truncations(env: LoopStorage) -> None:
    """Random appends with conflicts, compactions and reopens, checked against
    MemoryStorage; terms near the tail are answered without a read."""
    rng = random.Random(11)
    model = MemoryStorage(CONF)
    storage = env.node.raft_storage(GROUP, conf=CONF, partition=False)
    term = 1
    for step in range(300):
        last = model.last_index()
        applied = storage._state.applied_submitted
        first = last + 1
        if last > applied and rng.random() < 0.3:
            first = rng.randint(applied + 1, last)
        if rng.random() < 0.4:
            term += 1
        new = [
            Entry(term, i, EntryType.NORMAL, b"%d" % i)
            for i in range(first, first + rng.randint(1, 6))
        ]
        model.append(new)
        storage.append(new)
        if rng.random() < 0.2:
            _apply(env, storage, rng.randint(applied, model.last_index() - 1) or applied)
        if rng.random() < 0.05 and storage.applied_index >= model.first_index():
            snap = Snapshot(
                SnapshotMeta(storage.applied_index, model.term(storage.applied_index), CONF)
            )
            model.truncate_prefix(snap)
            storage.truncate_prefix(snap)
        if rng.random() < 0.1:
            env.wait(storage.sync())
        if rng.random() < 0.03:
            env.wait(storage.sync())
            env.reopen()
            storage = env.node.raft_storage(GROUP, conf=CONF, partition=False)
        lo, hi = model.first_index() - 1, model.last_index()
        misses = storage.term_cache_misses
        assert storage.term(hi) == model.term(hi), step
        assert storage.term_cache_misses == misses, "the last term needs no read"
        for index in range(lo, hi + 1):
            assert storage.term(index) == model.term(index), (step, index)
        assert storage.entries(model.first_index(), hi + 1, 1 << 30) == model.entries(
            model.first_index(), hi + 1, 1 << 30
        )


def test_entries_are_bounded_by_bytes(env: LoopStorage) -> None:
    storage = env.node.raft_storage(GROUP, partition=False)
    sizes = [100, 5000, 100, 100, 20000, 100]
    storage.append([Entry(1, i, EntryType.NORMAL, b"x" * n) for i, n in enumerate(sizes, 1)])
    env.wait(storage.sync())
    storage.append([Entry(1, 7, EntryType.NORMAL, b"y" * 300)])  # still in flight
    assert [len(e.data) for e in storage.entries(1, 8, 5150)] == [100, 5000]
    assert [len(e.data) for e in storage.entries(5, 8, 10)] == [20000]
    assert [len(e.data) for e in storage.entries(3, 8, 1000)] == [100, 100]
    assert [len(e.data) for e in storage.entries(6, 8, 400)] == [100, 300]


def test_loading_a_large_log_reads_a_constant_number_of_rows(env: LoopStorage) -> None:
    storage = env.node.raft_storage(GROUP)
    for lo in range(1, 5001, 500):
        storage.append(batch_entries(lo, lo + 500))
        env.wait(storage.sync())
    _apply(env, storage, 4000)
    storage.set_hard_state(HardState(1, 1, 4000))
    env.wait(storage.sync())
    env.reopen()
    reads = env.node._env.reads  # type: ignore[union-attr]
    before = reads.rows
    again = env.node.raft_storage(GROUP)
    # group_meta, snapshot row, hard state, the last entry, the applied entry.
    assert reads.rows - before <= 6
    before = reads.rows
    # What an election needs: the last index and its term.
    assert (again.last_index(), again.term(again.last_index())) == (5000, 1)
    assert reads.rows == before
    assert again.partition_log is not None and again.partition_log.end_offset == 4000


def test_high_watermark_follows_commit_not_fsync(env: LoopStorage) -> None:
    storage = env.node.raft_storage(GROUP)
    log = storage.partition_log
    assert log is not None
    storage.append(batch_entries(1, 4))
    env.wait(storage.sync())
    # Durable, not applied: consumers see nothing.
    assert (log.next_offset, log.end_offset, log.read(0, 1 << 20)) == (3, 0, [])
    waiter = env.loop.create_task(log.wait_for_data(0))
    env.settle()
    assert not waiter.done()
    applied = storage.apply_entries(storage.entries(1, 3, 1 << 20))
    # Committed, rows durable: visible at once, before the index rows commit.
    assert (log.end_offset, storage.applied_index) == (2, 0)
    env.wait(waiter)
    env.wait(applied)
    assert (log.end_offset, storage.applied_index) == (2, 2)
    assert [b.payload for b in log.read(0, 1 << 20)] == [bytes([1]) * 10, bytes([2]) * 10]
    with pytest.raises(StorageError):
        env.wait(log.append(b"x", 1, 1))  # a Raft group takes proposals, not appends


def test_writes_are_bounded_by_the_queue_budget(tmp_path: pathlib.Path) -> None:
    env = LoopStorage(tmp_path, write_queue_bytes_max=64 * 1024)
    try:
        storage = env.node.raft_storage(GROUP, partition=False)
        big = [Entry(1, 1, EntryType.NORMAL, b"z" * 100_000)]
        with pytest.raises(StorageError):
            storage.append(big)  # no reservation and no room: refused, not queued
    finally:
        env.close()


def test_reserve_then_handle_a_ready_then_flush(env: LoopStorage) -> None:
    storage = env.node.raft_storage(GROUP)
    entries = batch_entries(1, 6)

    async def handle() -> None:
        from weir.cluster.raft import Ready

        ready = Ready(HardState(1, 1, 0), None, tuple(entries), None, None, (), ())
        await storage.reserve(storage.ready_bytes(ready))
        storage.append(list(ready.entries))
        assert ready.hard_state is not None
        storage.set_hard_state(ready.hard_state)
        assert storage._credit_bytes == 0  # the reservation was exact
        await storage.flush()

    env.wait(handle())
    assert env.node.stats()["write_queue_bytes"] == 0
    assert storage.hard_state() == HardState(1, 1, 0)


def test_a_closed_storage_refuses_calls(env: LoopStorage) -> None:
    storage = env.node.raft_storage(GROUP)
    storage.append(batch_entries(1, 2))
    env.wait(env.node.drop_partition_log(GROUP))
    with pytest.raises(StorageError):
        storage.term(1)
    with pytest.raises(StorageError):
        env.wait(storage.flush())
