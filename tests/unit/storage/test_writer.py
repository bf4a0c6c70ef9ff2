"""Group-commit writer: batching, the byte bound, durability modes, failure, drop, meta."""

from __future__ import annotations

import asyncio
import pathlib
import threading

import pytest

from weir.cluster.storage import Durability, LogClosedError, NodeStorage, StorageError
from weir.cluster.storage.ops import MetaWriteOp
from weir.cluster.storage.writer import GroupCommitWriter, Turn, WriteOp

from .helpers import STEP_TIMEOUT_S, payload_for, raw_rows, run, storage

GROUP = 11


class BlockingOp(WriteOp):
    """Holds the writer thread inside a turn until released: a slow disk on demand."""

    def __init__(self) -> None:
        super().__init__(0)
        self.entered = threading.Event()
        self.release = threading.Event()

    def apply(self, turn: Turn) -> None:
        self.entered.set()
        assert self.release.wait(STEP_TIMEOUT_S)


class ExplodingOp(WriteOp):
    def __init__(self) -> None:
        super().__init__(0)

    def apply(self, turn: Turn) -> None:
        raise RuntimeError("injected disk failure")


def _writer(s: NodeStorage) -> GroupCommitWriter:
    writer = s._writer
    assert writer is not None
    return writer


def test_concurrent_appends_share_commits(tmp_path: pathlib.Path) -> None:
    appends = 400

    async def main() -> None:
        async with storage(tmp_path) as s:
            log = s.partition_log(GROUP)
            before = s.stats()["writer_commits"]
            tickets = await asyncio.gather(
                *(log.append(payload_for(i, 200), 1, i) for i in range(appends))
            )
            await asyncio.gather(*(t.durable for t in tickets))
            commits = s.stats()["writer_commits"] - before
            assert s.stats()["writer_ops_committed"] >= appends
            assert commits <= appends // 10, f"{commits} commits for {appends} appends"
            assert sorted(t.base_offset for t in tickets) == list(range(appends))
            assert log.end_offset == appends

    run(main)


def test_one_commit_covers_many_partitions(tmp_path: pathlib.Path) -> None:
    async def main() -> None:
        async with storage(tmp_path) as s:
            writer = _writer(s)
            blocker = BlockingOp()
            blocked = asyncio.create_task(writer.run(blocker))
            await asyncio.to_thread(blocker.entered.wait, STEP_TIMEOUT_S)
            tickets = [await s.partition_log(g).append(b"p", 1, 1) for g in range(50)]
            before = s.stats()["writer_commits"]
            blocker.release.set()
            await asyncio.gather(blocked, *(t.durable for t in tickets))
            # The blocked turn's commit plus one for all 50 partitions.
            assert s.stats()["writer_commits"] - before == 2

    run(main)


def test_queue_is_bounded_in_bytes_and_appends_wait(tmp_path: pathlib.Path) -> None:
    queue_bytes_max = 16 * 1024
    payload_bytes = 1024
    appends = 200

    async def main() -> None:
        async with storage(tmp_path, write_queue_bytes_max=queue_bytes_max) as s:
            writer = _writer(s)
            log = s.partition_log(GROUP)
            blocker = BlockingOp()
            blocked = asyncio.create_task(writer.run(blocker))
            await asyncio.to_thread(blocker.entered.wait, STEP_TIMEOUT_S)
            tasks = [
                asyncio.create_task(log.append(payload_for(i, payload_bytes), 1, i))
                for i in range(appends)
            ]
            await asyncio.sleep(0.05)
            returned = sum(t.done() for t in tasks)
            stats = s.stats()
            # The writer is stuck: only what fits in the budget got in; the rest wait.
            assert 0 < returned < appends
            assert returned * payload_bytes < queue_bytes_max
            assert stats["write_queue_bytes"] <= queue_bytes_max
            assert stats["write_queue_waits"] > 0
            peak_seen = stats["write_queue_bytes"]
            blocker.release.set()
            while not all(t.done() for t in tasks):
                peak_seen = max(peak_seen, s.stats()["write_queue_bytes"])
                await asyncio.sleep(0.001)
            tickets = [t.result() for t in tasks]
            await asyncio.gather(blocked, *(t.durable for t in tickets))
            assert s.stats()["write_queue_bytes_peak"] <= queue_bytes_max
            assert peak_seen <= queue_bytes_max
            assert [t.base_offset for t in tickets] == list(range(appends))
            assert log.read(appends - 1, 1)[0].payload == payload_for(appends - 1, payload_bytes)
            assert s.stats()["write_queue_bytes"] == 0

    run(main)


def test_a_write_larger_than_the_queue_is_refused(tmp_path: pathlib.Path) -> None:
    async def main() -> None:
        async with storage(tmp_path, write_queue_bytes_max=4096) as s:
            with pytest.raises(StorageError):
                await s.partition_log(GROUP).append(b"x" * 8192, 1, 1)
            assert s.partition_log(GROUP).next_offset == 0

    run(main)


def test_cancelled_append_while_waiting_releases_its_place(tmp_path: pathlib.Path) -> None:
    async def main() -> None:
        async with storage(tmp_path, write_queue_bytes_max=4096) as s:
            writer = _writer(s)
            log = s.partition_log(GROUP)
            blocker = BlockingOp()
            blocked = asyncio.create_task(writer.run(blocker))
            await asyncio.to_thread(blocker.entered.wait, STEP_TIMEOUT_S)
            first = await log.append(b"a" * 3000, 1, 1)
            waiting = asyncio.create_task(log.append(b"b" * 3000, 1, 1))
            await asyncio.sleep(0.01)
            waiting.cancel()
            blocker.release.set()
            await asyncio.gather(blocked, first.durable)
            with pytest.raises(asyncio.CancelledError):
                await waiting
            second = await log.append(b"c" * 3000, 1, 1)
            await second.durable
            assert second.base_offset == 1  # the cancelled append took no offset
            assert s.stats()["write_queue_bytes"] == 0

    run(main)


def test_async_durability_commits_and_syncs_in_background(tmp_path: pathlib.Path) -> None:
    async def main() -> None:
        async with storage(tmp_path, durability=Durability.ASYNC, async_sync_interval_ms=2) as s:
            log = s.partition_log(GROUP)
            for i in range(50):
                await (await log.append(payload_for(i), 1, i)).durable
            await asyncio.sleep(0.05)
            assert s.stats()["writer_syncs"] > 0
        async with storage(tmp_path, durability=Durability.ASYNC) as s:
            log = s.partition_log(GROUP)
            assert log.end_offset == 50
            assert log.read(49, 1)[0].payload == payload_for(49)

    run(main)


def test_writer_death_fails_every_waiter(tmp_path: pathlib.Path) -> None:
    async def main() -> None:
        async with storage(tmp_path) as s:
            writer = _writer(s)
            log = s.partition_log(GROUP)
            await (await log.append(b"ok", 1, 1)).durable
            blocker = BlockingOp()
            blocked = asyncio.create_task(writer.run(blocker))
            await asyncio.to_thread(blocker.entered.wait, STEP_TIMEOUT_S)
            # Queued behind the blocker, so they share the turn that explodes.
            doomed = await log.append(b"lost", 1, 1)
            exploded = asyncio.create_task(writer.run(ExplodingOp()))
            waiting = asyncio.create_task(log.wait_for_data(1))
            await asyncio.sleep(0)
            blocker.release.set()
            await blocked
            with pytest.raises(StorageError):
                await doomed.durable
            with pytest.raises(StorageError):
                await exploded
            with pytest.raises(StorageError):
                await waiting
            with pytest.raises(StorageError):
                await log.append(b"later", 1, 1)
            with pytest.raises(StorageError):
                await s.meta.write([("ns", b"k", b"v")])
            assert s.stats()["writer_failed"] == 1
            assert log.end_offset == 1

    run(main)


def test_barrier_resolves_after_every_earlier_op_and_fails_with_them(
    tmp_path: pathlib.Path,
) -> None:
    async def main() -> None:
        async with storage(tmp_path) as s:
            writer = _writer(s)
            assert writer.barrier().done()  # nothing pending
            blocker = BlockingOp()
            blocked = asyncio.create_task(writer.run(blocker))
            await asyncio.to_thread(blocker.entered.wait, STEP_TIMEOUT_S)
            ticket = await s.partition_log(GROUP).append(b"p", 1, 1)
            barrier = s.writes_done()
            later = await s.partition_log(GROUP + 1).append(b"q", 1, 1)
            await asyncio.sleep(0.01)
            assert not barrier.done()
            blocker.release.set()
            await barrier
            # Everything submitted before the barrier committed before it resolved.
            assert blocked.done() or await blocked is None
            assert s.partition_log(GROUP).end_offset == 1
            await asyncio.gather(ticket.durable, later.durable)
            # A failure of an op the barrier covers fails the barrier.
            blocker = BlockingOp()
            blocked = asyncio.create_task(writer.run(blocker))
            await asyncio.to_thread(blocker.entered.wait, STEP_TIMEOUT_S)
            exploded = asyncio.create_task(writer.run(ExplodingOp()))
            await asyncio.sleep(0)
            barrier = writer.barrier()
            blocker.release.set()
            with pytest.raises(StorageError):
                await barrier
            with pytest.raises(StorageError):
                await exploded
            await blocked
            with pytest.raises(StorageError):
                await writer.barrier()

    run(main)


def test_drop_partition_log_removes_every_row(tmp_path: pathlib.Path) -> None:
    async def main() -> None:
        async with storage(tmp_path) as s:
            for group in (GROUP, GROUP + 1):
                log = s.partition_log(group)
                for ts in (5, 3, 9):
                    await (await log.append(b"d" * 20, 2, ts)).durable
            await s.enforce_retention(GROUP, 30, None)
            dropped = s.partition_log(GROUP)
            waiter = asyncio.create_task(dropped.wait_for_data(100))
            await asyncio.sleep(0)
            await s.drop_partition_log(GROUP)
            with pytest.raises(LogClosedError):
                await waiter
            with pytest.raises(LogClosedError):
                await dropped.append(b"x", 1, 1)
            with pytest.raises(LogClosedError):
                dropped.read(0, 10)
            fresh = s.partition_log(GROUP)
            assert fresh is not dropped
            assert (fresh.start_offset, fresh.end_offset, fresh.size_bytes) == (0, 0, 0)
        prefix = GROUP.to_bytes(4, "big")
        for db in (b"log", b"offset_index", b"time_index", b"group_meta", b"hardstate"):
            assert not [k for k, _ in raw_rows(tmp_path, db) if k.startswith(prefix)], db
        other = (GROUP + 1).to_bytes(4, "big")
        assert len([k for k, _ in raw_rows(tmp_path, b"log") if k.startswith(other)]) == 3

    run(main)


def test_meta_store_put_scan_delete(tmp_path: pathlib.Path) -> None:
    async def main() -> None:
        async with storage(tmp_path) as s:
            meta = s.meta
            await meta.write(
                [
                    ("topics", b"orders", b"p=3"),
                    ("topics", b"payments", b"p=1"),
                    ("topicsx", b"orders", b"other namespace"),
                    ("offsets", b"g1/orders/0", b"42"),
                    ("offsets", b"g1/orders/1", b"7"),
                    ("offsets", b"g2/orders/0", b"1"),
                ]
            )
            assert meta.get("topics", b"orders") == b"p=3"
            assert meta.get("topics", b"nope") is None
            assert meta.scan("topics") == [(b"orders", b"p=3"), (b"payments", b"p=1")]
            assert [k for k, _ in meta.scan("offsets", b"g1/")] == [b"g1/orders/0", b"g1/orders/1"]
            commits = s.stats()["writer_commits"]
            # Deletes apply before puts, all in one transaction.
            await meta.write(
                puts=[("offsets", b"g1/orders/0", b"43"), ("topics", b"orders", b"p=6")],
                deletes=[("topics", b"payments"), ("offsets", b"g1/orders/0")],
            )
            assert s.stats()["writer_commits"] == commits + 1
            assert meta.scan("topics") == [(b"orders", b"p=6")]
            assert meta.get("offsets", b"g1/orders/0") == b"43"
        async with storage(tmp_path) as s:
            assert s.meta.get("offsets", b"g1/orders/0") == b"43"
            assert s.meta.scan("topicsx") == [(b"orders", b"other namespace")]

    run(main)


def test_meta_write_is_all_or_nothing(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = MetaWriteOp.apply

    def apply_then_fail(self: MetaWriteOp, turn: Turn) -> None:
        original(self, turn)
        turn.flush()  # the puts are in the transaction...
        raise RuntimeError("crash before commit")  # ...which is then aborted

    async def main() -> None:
        async with storage(tmp_path) as s:
            await s.meta.write([("ns", b"keep", b"1")])
            monkeypatch.setattr(MetaWriteOp, "apply", apply_then_fail)
            with pytest.raises(StorageError):
                await s.meta.write([("ns", b"a", b"1"), ("ns", b"b", b"2")], [("ns", b"keep")])
        monkeypatch.setattr(MetaWriteOp, "apply", original)
        async with storage(tmp_path) as s:
            assert s.meta.scan("ns") == [(b"keep", b"1")]

    run(main)


def test_shutdown_drains_pending_writes(tmp_path: pathlib.Path) -> None:
    async def main() -> None:
        async with storage(tmp_path) as s:
            log = s.partition_log(GROUP)
            tickets = [await log.append(payload_for(i), 1, i) for i in range(100)]
        # Leaving the block committed every queued append.
        assert all(t.durable.done() and t.durable.exception() is None for t in tickets)
        async with storage(tmp_path) as s:
            assert s.partition_log(GROUP).end_offset == 100
        with pytest.raises(StorageError):
            s.partition_log(GROUP)  # closed storage refuses work

    run(main)


def test_shutdown_waits_for_appends_granted_space_but_not_yet_submitted(
    tmp_path: pathlib.Path,
) -> None:
    async def main() -> None:
        s = storage(tmp_path, write_queue_bytes_max=4096)
        await s.open()
        writer = _writer(s)
        log = s.partition_log(GROUP)
        blocker = BlockingOp()
        blocked = asyncio.create_task(writer.run(blocker))
        await asyncio.to_thread(blocker.entered.wait, STEP_TIMEOUT_S)
        first = await log.append(b"a" * 3000, 1, 1)
        waiting = asyncio.create_task(log.append(b"b" * 3000, 1, 1))
        await asyncio.sleep(0.01)
        closing = asyncio.create_task(s.close())
        await asyncio.sleep(0.01)
        blocker.release.set()
        await asyncio.gather(blocked, first.durable, closing)
        second = await waiting
        assert second.durable.done() and second.durable.exception() is None
        async with storage(tmp_path) as reopened:
            assert reopened.partition_log(GROUP).end_offset == 2

    run(main)
