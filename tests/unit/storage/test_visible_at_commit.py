"""A partition's committed entries are visible before their apply is durable.

DESIGN §4 "Committed-only reads": the high watermark follows what this
replica knows is committed and holds in its log; the offset and time index
rows (and the applied index) follow in the same or a later writer turn.
These tests hold the writer (`NodeStorage.hold_writes()`) so the apply
cannot commit while they look, and kill a process before it does.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
from collections.abc import Iterator

import pytest

from weir.cluster.raft import HardState
from weir.cluster.storage import keys
from weir.cluster.storage.lmdbenv import Db

from .raft_helpers import LoopStorage, batch_entries, batch_entry

pytestmark = pytest.mark.timeout(60)

GROUP = 4
REPO_ROOT = pathlib.Path(__file__).resolve().parents[3]


@pytest.fixture
def env(tmp_path: pathlib.Path) -> Iterator[LoopStorage]:
    loop_storage = LoopStorage(tmp_path)
    yield loop_storage
    loop_storage.close()


def _index_rows(env: LoopStorage) -> list[int]:
    node_env = env.node._env
    assert node_env is not None
    with node_env.read() as txn:
        return [keys.unpack_u64(bytes(v)) for _, v in txn.iterate(Db.OFFSET_INDEX, b"", None)]


def test_a_committed_entry_is_readable_before_its_apply_is_durable(env: LoopStorage) -> None:
    storage = env.node.raft_storage(GROUP)
    log = storage.partition_log
    assert log is not None
    storage.append(batch_entries(1, 6))
    env.wait(storage.sync())
    env.wait(storage.apply_entries(storage.entries(1, 3, 1 << 20)))  # offsets 0-1 indexed
    waiter = env.loop.create_task(log.wait_for_data(2))
    env.settle()
    assert not waiter.done()
    with env.node.hold_writes():
        applied = storage.apply_entries(storage.entries(3, 5, 1 << 20))
        # Visible at once: the rows of entries 3-4 are already committed here.
        assert (log.end_offset, storage.visible_index, storage.applied_index) == (4, 4, 2)
        assert not applied.done()
        assert _index_rows(env) == [1, 2]
        assert [b.base_offset for b in log.read(0, 1 << 20)] == [0, 1, 2, 3]
        assert [b.base_offset for b in log.read(2, 1 << 20)] == [2, 3]
        assert [b.payload for b in log.read(3, 1 << 20)] == [bytes([4]) * 10]
        assert log.read(4, 1 << 20) == []  # committed-only: entry 5 is not
        # The time index knows only offsets 0-1: a lookup past them starts at
        # the first unindexed offset (earlier, never later).
        assert log.offset_for_timestamp(1003) == 2
        assert log.offset_for_timestamp(1002) == 1
    env.wait(waiter)
    env.wait(applied)
    assert (log.end_offset, storage.applied_index) == (4, 4)
    assert _index_rows(env) == [1, 2, 3, 4]
    assert not log._unindexed
    assert [b.base_offset for b in log.read(1, 1 << 20)] == [1, 2, 3]
    assert log.offset_for_timestamp(1003) == 2


def test_control_entries_in_the_unindexed_tail_are_skipped(env: LoopStorage) -> None:
    storage = env.node.raft_storage(GROUP)
    log = storage.partition_log
    assert log is not None
    storage.append(
        [batch_entry(1, 1, 0, records=3), *[batch_entry(i, 1, i + 1) for i in range(2, 5)]]
    )
    env.wait(storage.sync())
    with env.node.hold_writes():
        storage.apply_entries(storage.entries(1, 5, 1 << 20))
        assert log.end_offset == 6
        assert [b.base_offset for b in log.read(1, 1 << 20)] == [0, 3, 4, 5]
        assert [b.base_offset for b in log.read(4, 1 << 20)] == [4, 5]
    env.settle()


def test_a_follower_sees_an_entry_only_once_its_row_is_committed(env: LoopStorage) -> None:
    storage = env.node.raft_storage(GROUP)
    log = storage.partition_log
    assert log is not None
    with env.node.hold_writes():
        # One Ready: entries 1-3 arrive, the leader's commit index covers 1-2.
        storage.append(batch_entries(1, 4))
        storage.set_hard_state(HardState(1, 1, 2))
        storage.apply_entries(storage.entries(1, 3, 1 << 20))
        durable = storage.flush()
        assert (log.end_offset, storage.visible_index) == (0, 0)
        assert log.read(0, 1 << 20) == []
    env.wait(durable)
    assert (log.end_offset, storage.visible_index, storage.applied_index) == (2, 2, 2)
    assert [b.base_offset for b in log.read(0, 1 << 20)] == [0, 1]  # 3 is not committed


def test_a_crash_before_the_apply_is_durable_rereads_the_same_records(
    tmp_path: pathlib.Path,
) -> None:
    child = subprocess.run(
        [sys.executable, "-m", "tests.unit.storage.crash_before_apply", str(tmp_path)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        check=False,
    )
    assert child.returncode == -9, child.stderr
    seen = json.loads(child.stdout)
    assert (seen["end_offset"], seen["applied_index"]) == (3, 0)
    env = LoopStorage(tmp_path)
    try:
        storage = env.node.raft_storage(5)
        log = storage.partition_log
        assert log is not None
        # Nothing of the apply reached the disk: the node re-applies its log.
        assert (storage.applied_index, storage.hard_state().commit, log.end_offset) == (0, 3, 0)
        assert _index_rows(env) == []
        env.wait(storage.apply_entries(storage.entries(1, 4, 1 << 20)))
        again = [[b.base_offset, b.payload.hex()] for b in log.read(0, 1 << 20)]
        assert again == seen["batches"]
        assert log.end_offset == 3
    finally:
        env.close()


def test_entries_revealed_early_are_readable_and_applied_later_without_a_second_reveal(
    env: LoopStorage,
) -> None:
    # The host reveals entries it learns are committed while their Ready is
    # not taken yet (driver._apply_committed); the Ready's apply then writes
    # their index rows and must neither reveal them twice nor move offsets.
    storage = env.node.raft_storage(GROUP)
    log = storage.partition_log
    assert log is not None
    storage.append(batch_entries(1, 6))
    env.wait(storage.sync())
    assert storage.rows_committed_index == 5
    waiter = env.loop.create_task(log.wait_for_data(0))
    storage.reveal_committed(storage.entries(1, 4, 1 << 20))
    env.settle()
    assert waiter.done()
    assert (log.end_offset, storage.visible_index, storage.applied_index) == (3, 3, 0)
    assert [b.base_offset for b in log.read(0, 1 << 20)] == [0, 1, 2]
    assert _index_rows(env) == []
    env.wait(storage.apply_entries(storage.entries(1, 5, 1 << 20)))
    assert (log.end_offset, storage.visible_index, storage.applied_index) == (4, 4, 4)
    assert _index_rows(env) == [1, 2, 3, 4]
    assert [b.base_offset for b in log.read(0, 1 << 20)] == [0, 1, 2, 3]


def test_only_entries_whose_rows_are_committed_can_be_revealed_early(env: LoopStorage) -> None:
    storage = env.node.raft_storage(GROUP)
    with env.node.hold_writes():
        storage.append(batch_entries(1, 3))
        assert storage.rows_committed_index == 0
        with pytest.raises(AssertionError, match="rows not committed"):
            storage.reveal_committed(storage.entries(1, 2, 1 << 20))
    env.wait(storage.sync())
    assert storage.rows_committed_index == 2
