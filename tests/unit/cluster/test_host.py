"""RaftHost on one node (a one-voter group, real LMDB in tmp_path, no peers).

What needs no network: a failed write reopens the group, a dead driver fails
every waiter and its owner sees it, a committed record is readable and
acknowledged before its apply is durable, retention compacts through Raft,
a stopped host refuses work. Three-node behaviour is in
tests/integration/test_host_cluster.py.
"""

from __future__ import annotations

import asyncio
import pathlib
import random
import threading

import pytest

from weir.cluster.host import (
    HostStoppedError,
    NotLeaderError,
    OutcomeUnknownError,
    RaftHost,
)
from weir.cluster.raft.types import Entry
from weir.cluster.storage import NodeStorage, StorageConfig, StorageError
from weir.cluster.storage.ops import LogWriteOp
from weir.cluster.storage.writer import WriteOp

from .host_fixtures import config, eventually, leading_host, run

pytestmark = pytest.mark.timeout(30)


def test_a_failed_write_reopens_the_group_from_disk(tmp_path: pathlib.Path) -> None:
    async def main() -> None:
        async with leading_host(tmp_path) as (storage, host):
            first = host.append_batch(1, b"kept", 2, 0)
            assert await first.committed == 0
            storage.raft_storage(1).close(StorageError("injected write failure"))
            # The next input finds the poisoned storage and reopens it: a
            # new RawNode, a follower until it wins its election again.
            with pytest.raises(NotLeaderError):
                host.append_batch(1, b"refused", 1, 0)
            await eventually(lambda: host.is_leader(1))
            assert host.stats().reopens == 1
            second = host.append_batch(1, b"after", 3, 0)
            assert await second.committed == 2
            batches = host.partition_log(1).read(0, 1 << 20)
            assert [(b.base_offset, b.payload) for b in batches] == [
                (0, b"kept"),
                (2, b"after"),
            ]

    run(main)


def test_a_dead_driver_fails_every_waiter_and_its_owner_sees_it(tmp_path: pathlib.Path) -> None:
    def on_apply(entry: Entry) -> object:
        if entry.data == b"boom":
            raise RuntimeError("state machine bug")
        return entry.index

    async def main() -> None:
        async with NodeStorage(StorageConfig(path=tmp_path)) as storage:
            host = RaftHost(config(), storage, random.Random(1))
            tickets = []
            with pytest.raises(ExceptionGroup) as caught:
                async with host:
                    host.start_group(0, [1], partition=False, on_apply=on_apply)
                    await eventually(lambda: host.is_leader(0))
                    assert await host.propose(0, b"fine") > 0
                    host.start_group(1, [1], partition=True)
                    await eventually(lambda: host.is_leader(1))
                    # Group 1 cannot commit this one before the driver dies:
                    # nothing has been persisted for it yet.
                    tickets.append(host.append_batch(1, b"pending", 1, 0))
                    tickets.append(host.submit(0, b"boom"))
                    await asyncio.sleep(10)  # cancelled when the driver dies
            assert caught.group_contains(RuntimeError, match="state machine bug")
            boom = tickets[1].committed
            assert boom.done() and isinstance(boom.exception(), OutcomeUnknownError)
            for ticket in tickets:
                assert ticket.committed.done()
            with pytest.raises(HostStoppedError):
                host.submit(0, b"after")

    run(main)


def test_a_committed_record_is_read_and_acknowledged_before_its_apply_is_durable(
    tmp_path: pathlib.Path,
) -> None:
    # DESIGN §4 "Committed-only reads": visibility follows the commit, and
    # the index rows written on apply do not gate it. The writer is held at
    # the first turn that writes index rows, so the apply cannot be durable.
    held = threading.Event()
    release = threading.Event()

    async def main() -> None:
        async with leading_host(tmp_path) as (storage, host):
            _, writer = storage._open_parts()
            commit = writer._commit

            def held_commit(ops: list[WriteOp]) -> None:
                if any(isinstance(op, LogWriteOp) and op.index_rows for op in ops):
                    held.set()
                    release.wait(20)
                commit(ops)

            writer._commit = held_commit  # type: ignore[method-assign]
            log = host.partition_log(1)
            try:
                ticket = host.append_batch(1, b"early", 2, 0)
                assert await ticket.committed == 0
                assert await ticket.leader_durable == 0
                raft = storage.raft_storage(1)
                assert raft.applied_index < ticket.index <= raft.visible_index
                # The apply's turn reaches the writer, which holds it: the
                # reads below run while the index rows cannot be committed.
                assert await asyncio.to_thread(held.wait, 5)
                assert raft.applied_index < ticket.index
                assert log.end_offset == 2
                assert [(b.base_offset, b.payload) for b in log.read(0, 1 << 20)] == [(0, b"early")]
            finally:
                release.set()
            await eventually(lambda: host.applied_index(1) >= ticket.index)
            assert [b.base_offset for b in log.read(1, 1 << 20)] == [0]

    try:
        run(main)
    finally:
        release.set()


def test_retention_compacts_through_raft(tmp_path: pathlib.Path) -> None:
    async def main() -> None:
        async with leading_host(tmp_path) as (_, host):
            for _ in range(10):
                await host.append_batch(1, b"x" * 100, 1, 0).committed
            plan = host.compact_partition(1, retention_bytes=300, retention_ms=None)
            assert plan is not None and plan.start_offset == 7
            log = host.partition_log(1)
            await eventually(lambda: log.start_offset == 7)
            assert log.read(7, 1 << 20)[0].base_offset == 7
            assert (await host.append_batch(1, b"y", 1, 0).committed) == 10

    run(main)


def test_a_stopped_host_refuses_work_and_stop_group_resolves_waiters(
    tmp_path: pathlib.Path,
) -> None:
    async def main() -> None:
        async with NodeStorage(StorageConfig(path=tmp_path)) as storage:
            host = RaftHost(config(), storage, random.Random(1))
            async with host:
                host.start_group(0, [1], partition=False)
                await eventually(lambda: host.is_leader(0))
                ticket = host.submit(0, b"x")
                host.stop_group(0)
                with pytest.raises(OutcomeUnknownError):
                    await ticket.committed
                assert host.groups() == []
            with pytest.raises(HostStoppedError):
                host.start_group(0, [1], partition=False)

    run(main)


def test_a_driver_that_dies_holding_a_reservation_gives_it_back(tmp_path: pathlib.Path) -> None:
    """Storage closes after a driver died between reserving and flushing (it hung on SIGTERM)."""

    async def main() -> None:
        storage = NodeStorage(StorageConfig(path=tmp_path))
        await storage.__aenter__()
        host = RaftHost(config(), storage, random.Random(1))
        with pytest.raises(ExceptionGroup) as caught:
            async with host:
                host.start_group(1, [1], partition=True)
                await eventually(lambda: host.is_leader(1))
                group_storage = host._driver.groups[1].storage

                def broken_append(entries: object) -> None:
                    raise RuntimeError("bug after reserving")

                group_storage.append = broken_append  # type: ignore[method-assign]
                host.append_batch(1, b"pending", 1, 0)
                await asyncio.sleep(10)  # cancelled when the driver dies
        assert caught.group_contains(RuntimeError, match="bug after reserving")
        async with asyncio.timeout(5):
            await storage.__aexit__(None, None, None)

    run(main)
