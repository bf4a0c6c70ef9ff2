"""A full map or disk fails the writes of that moment, not the node.

The writer goes on, no partition log is closed, failed appends leave no gap
in offsets, and the storage's health follows: `write_error` is set while
writes fail and cleared by the first write that commits again.
"""

from __future__ import annotations

import asyncio
import contextlib
import pathlib
import time

import pytest

from weir.cluster.storage import NodeStorage, StorageError, StorageFullError
from weir.cluster.storage.writer import GroupCommitWriter, Turn, WriteOp

from .helpers import STEP_TIMEOUT_S, payload_for, run, storage
from .test_writer import BlockingOp, _writer

FULL = 41
HEALTHY = 42
# Small enough to fill in well under a second, large enough for the databases.
MAP_SIZE_BYTES = 1 << 20
PAYLOAD_BYTES = 8 * 1024


class FullOp(WriteOp):
    """Fails its turn the way a full map does (the writer cannot tell the difference)."""

    def __init__(self) -> None:
        super().__init__(0)

    def apply(self, turn: Turn) -> None:
        raise StorageFullError("injected: map full")


async def _fill_until_full(s: NodeStorage, group: int) -> int:
    """Appends to `group` one batch at a time until the map is full; returns the end offset."""
    log = s.partition_log(group)
    for i in range(10_000):
        ticket = await log.append(payload_for(i, PAYLOAD_BYTES), 1, i)
        try:
            await ticket.durable
        except StorageFullError:
            return log.end_offset
    raise AssertionError("the map never filled")


def test_map_full_fails_the_write_not_the_node(tmp_path: pathlib.Path) -> None:
    async def main() -> None:
        async with storage(
            tmp_path, map_size_bytes=MAP_SIZE_BYTES, write_probe_interval_ms=10
        ) as s:
            reports: list[StorageError | None] = []
            recovered = asyncio.Event()

            def on_health(error: StorageError | None) -> None:
                reports.append(error)
                if error is None:
                    recovered.set()

            s.add_health_listener(on_health)
            healthy = s.partition_log(HEALTHY)
            await (await healthy.append(b"before", 1, 1)).durable

            full_end = await _fill_until_full(s, FULL)

            full_log = s.partition_log(FULL)
            assert isinstance(s.write_error, StorageFullError)
            assert len(reports) == 1 and isinstance(reports[0], StorageFullError)
            assert s.stats()["writer_failed"] == 0
            assert s.stats()["writer_turns_failed"] >= 1
            # Nothing was closed; the failed append's offset was handed back.
            assert not full_log.closed and not healthy.closed
            assert full_log.next_offset == full_log.end_offset == full_end
            assert [b.payload for b in healthy.read(0, 1 << 20)] == [b"before"]
            assert full_log.read(full_end - 1, 1 << 20)[0].payload == payload_for(
                full_end - 1, PAYLOAD_BYTES
            )
            with pytest.raises(StorageFullError):
                await (await healthy.append(payload_for(0, PAYLOAD_BYTES), 1, 1)).durable

            # Deleting the big log frees pages; the probe notices on its own.
            await s.drop_partition_log(FULL)
            await asyncio.wait_for(recovered.wait(), STEP_TIMEOUT_S)
            assert s.write_error is None
            assert reports[-1] is None and len(reports) == 2
            ticket = await healthy.append(b"after", 1, 2)
            await ticket.durable
            assert ticket.base_offset == 1, "no gap where the failed append was"
            assert [b.payload for b in healthy.read(0, 1 << 20)] == [b"before", b"after"]

        async with storage(tmp_path, map_size_bytes=MAP_SIZE_BYTES) as s:
            reopened = s.partition_log(HEALTHY)
            assert (reopened.start_offset, reopened.end_offset) == (0, 2)

    run(main)


def test_failed_turn_fails_everything_queued_behind_it_and_undoes_offsets(
    tmp_path: pathlib.Path,
) -> None:
    async def main() -> None:
        async with storage(tmp_path, write_probe_interval_ms=10) as s:
            writer = _writer(s)
            log = s.partition_log(FULL)
            other = s.partition_log(HEALTHY)
            await (await log.append(b"a", 1, 1)).durable
            blocker = BlockingOp()
            blocked = asyncio.create_task(writer.run(blocker))
            await asyncio.to_thread(blocker.entered.wait, STEP_TIMEOUT_S)
            # One turn (the blocker holds the thread while these queue up).
            before = [await log.append(b"b", 2, 2), await other.append(b"x", 1, 2)]
            full = asyncio.create_task(writer.run(FullOp()))
            await asyncio.sleep(0)
            after = [await log.append(b"c", 3, 3), await other.append(b"y", 1, 3)]
            meta = asyncio.create_task(s.meta.write([("ns", b"k", b"v")]))
            await asyncio.sleep(0)
            assert (log.next_offset, other.next_offset) == (6, 2)
            blocker.release.set()
            await blocked
            for ticket in (*before, *after):
                with pytest.raises(StorageFullError):
                    await ticket.durable
            for task in (full, meta):
                with pytest.raises(StorageFullError):
                    await task
            # Back to what is committed, in every log the turn touched.
            assert (log.next_offset, log.end_offset, log.next_raft_index) == (1, 1, 2)
            assert (other.next_offset, other.end_offset, other.next_raft_index) == (0, 0, 1)
            assert log.size_bytes == 1 and other.size_bytes == 0
            assert isinstance(s.write_error, StorageFullError)
            # The next write commits (nothing is really full) and clears health.
            ticket = await log.append(b"d", 1, 4)
            await ticket.durable
            assert ticket.base_offset == 1
            assert s.write_error is None
            assert [b.payload for b in log.read(0, 100)] == [b"a", b"d"]

    run(main)


def test_failed_retention_delete_moves_the_start_back(tmp_path: pathlib.Path) -> None:
    async def main() -> None:
        async with storage(tmp_path) as s:
            writer = _writer(s)
            log = s.partition_log(FULL)
            for i in range(4):
                await (await log.append(b"r" * 10, 1, i)).durable
            blocker = BlockingOp()
            blocked = asyncio.create_task(writer.run(blocker))
            await asyncio.to_thread(blocker.entered.wait, STEP_TIMEOUT_S)
            retention = asyncio.create_task(s.enforce_retention(FULL, 20, None))
            await asyncio.sleep(0)
            # Moved at once, before the delete commits.
            assert (log.start_offset, log.size_bytes) == (2, 20)
            full = asyncio.create_task(writer.run(FullOp()))
            await asyncio.sleep(0)
            blocker.release.set()
            await blocked
            for task in (retention, full):
                with pytest.raises(StorageFullError):
                    await task
            assert (log.start_offset, log.size_bytes) == (0, 40)
            assert len(log.read(0, 100)) == 4
            assert await s.enforce_retention(FULL, 20, None) == 2
            assert (log.start_offset, log.size_bytes) == (2, 20)

    run(main)


def test_submissions_are_refused_until_the_failed_turn_is_undone(
    tmp_path: pathlib.Path,
) -> None:
    async def main() -> None:
        async with storage(tmp_path) as s:
            writer = _writer(s)
            log = s.partition_log(FULL)
            blocker = BlockingOp()
            blocked = asyncio.create_task(writer.run(blocker))
            await asyncio.to_thread(blocker.entered.wait, STEP_TIMEOUT_S)
            full = asyncio.create_task(writer.run(FullOp()))
            await asyncio.sleep(0)
            # Hold the loop until the writer thread has failed the turn, so an
            # append submits before the loop has undone it.
            blocker.release.set()
            _wait_for_rejecting(writer)  # blocks the loop on purpose
            with pytest.raises(StorageFullError):
                await log.append(b"too early", 1, 1)
            assert log.next_offset == 0
            await blocked
            with pytest.raises(StorageFullError):
                await full
            ticket = await log.append(b"later", 1, 1)
            await ticket.durable
            assert ticket.base_offset == 0

    run(main)


def _wait_for_rejecting(writer: GroupCommitWriter) -> None:
    deadline = time.monotonic() + STEP_TIMEOUT_S
    while writer._rejecting is None:
        assert time.monotonic() < deadline, "the writer never failed the turn"
        time.sleep(0.001)


def test_close_while_failing_stops_the_probe(tmp_path: pathlib.Path) -> None:
    async def main() -> None:
        async with storage(tmp_path, write_probe_interval_ms=60_000) as s:
            with contextlib.suppress(StorageFullError):
                await _writer(s).run(FullOp())
            assert s.write_error is not None
        # Leaving the block cancelled the probe that was sleeping a minute.

    run(main)
