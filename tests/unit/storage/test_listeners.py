"""Listener APIs: partition-log growth listeners and the storage health listener."""

from __future__ import annotations

import asyncio
import contextlib
import pathlib

from weir.cluster.storage import EntryType, LogClosedError, StorageError

from .helpers import STEP_TIMEOUT_S, run, storage
from .test_writer import BlockingOp, ExplodingOp, _writer

GROUP = 21


def test_listener_runs_when_end_offset_grows_and_only_for_its_partition(
    tmp_path: pathlib.Path,
) -> None:
    async def main() -> None:
        async with storage(tmp_path) as s:
            log = s.partition_log(GROUP)
            other = s.partition_log(GROUP + 1)
            seen: list[int] = []
            other_seen: list[int] = []

            def on_grow() -> None:
                seen.append(log.end_offset)

            log.add_listener(on_grow)
            other.add_listener(lambda: other_seen.append(other.end_offset))
            ticket = await log.append(b"abc", 2, 5)
            # Queued, not committed: nothing grew yet.
            assert seen == []
            await ticket.durable
            # Called synchronously in the commit callback, after end_offset moved.
            assert seen == [2]
            await (await log.append(b"d", 1, 6)).durable
            assert seen == [2, 3]
            assert other_seen == []

            log.remove_listener(on_grow)
            log.remove_listener(on_grow)  # unknown: ignored
            await (await log.append(b"e", 1, 7)).durable
            assert seen == [2, 3]

    run(main)


def test_control_entries_do_not_call_listeners(tmp_path: pathlib.Path) -> None:
    async def main() -> None:
        async with storage(tmp_path) as s:
            log = s.partition_log(GROUP)
            calls: list[None] = []
            log.add_listener(lambda: calls.append(None))
            await (await log.append_control(EntryType.NOOP)).durable
            assert calls == []

    run(main)


def test_listener_runs_on_close_and_drop(tmp_path: pathlib.Path) -> None:
    async def main() -> None:
        async with storage(tmp_path) as s:
            log = s.partition_log(GROUP)
            closed: list[bool] = []
            log.add_listener(lambda: closed.append(log.closed))
            await s.drop_partition_log(GROUP)
            assert closed == [True]

        log2_calls: list[bool] = []
        async with storage(tmp_path) as s:
            log2 = s.partition_log(GROUP)
            log2.add_listener(lambda: log2_calls.append(log2.closed))
        # Closing the storage closes its logs.
        assert log2_calls == [True]

    run(main)


def test_listener_may_remove_itself_and_a_raising_one_does_not_stop_others(
    tmp_path: pathlib.Path,
) -> None:
    async def main() -> None:
        async with storage(tmp_path) as s:
            log = s.partition_log(GROUP)
            calls: list[str] = []

            def once() -> None:
                calls.append("once")
                log.remove_listener(once)

            def broken() -> None:
                raise RuntimeError("listener bug")

            log.add_listener(once)
            log.add_listener(broken)
            log.add_listener(lambda: calls.append("always"))
            await (await log.append(b"a", 1, 1)).durable
            await (await log.append(b"b", 1, 1)).durable
            assert calls == ["once", "always", "always"]

    run(main)


def test_wait_for_data_still_works_next_to_listeners(tmp_path: pathlib.Path) -> None:
    async def main() -> None:
        async with storage(tmp_path) as s:
            log = s.partition_log(GROUP)
            woke = asyncio.Event()
            log.add_listener(woke.set)
            waiter = asyncio.create_task(log.wait_for_data(0))
            await (await log.append(b"a", 1, 1)).durable
            await asyncio.wait_for(waiter, STEP_TIMEOUT_S)
            assert woke.is_set()

    run(main)


def test_write_error_is_none_while_writes_succeed(tmp_path: pathlib.Path) -> None:
    async def main() -> None:
        async with storage(tmp_path) as s:
            assert s.write_error is None
            await s.meta.write([("ns", b"k", b"v")])
            assert s.write_error is None

    run(main)


def test_health_listener_hears_the_writer_die(tmp_path: pathlib.Path) -> None:
    async def main() -> None:
        async with storage(tmp_path) as s:
            reports: list[StorageError | None] = []
            s.add_health_listener(reports.append)
            log = s.partition_log(GROUP)
            closed = asyncio.Event()
            log.add_listener(closed.set)
            writer = _writer(s)
            blocker = BlockingOp()
            blocked = asyncio.create_task(writer.run(blocker))
            await asyncio.to_thread(blocker.entered.wait, STEP_TIMEOUT_S)
            exploded = asyncio.create_task(writer.run(ExplodingOp()))
            await asyncio.sleep(0)
            blocker.release.set()
            await blocked
            with contextlib.suppress(StorageError):
                await exploded
            assert s.write_error is not None
            assert reports == [s.write_error]
            # A dead writer closes the logs, and their listeners hear it.
            await asyncio.wait_for(closed.wait(), STEP_TIMEOUT_S)
            assert log.closed

    run(main)


def test_removed_health_listener_is_not_called(tmp_path: pathlib.Path) -> None:
    async def main() -> None:
        async with storage(tmp_path) as s:
            reports: list[StorageError | None] = []
            s.add_health_listener(reports.append)
            s.remove_health_listener(reports.append)
            writer = _writer(s)
            with contextlib.suppress(StorageError):
                await writer.run(ExplodingOp())
            assert reports == []
            assert s.write_error is not None

    run(main)


def test_log_closed_error_reaches_listeners_state(tmp_path: pathlib.Path) -> None:
    async def main() -> None:
        async with storage(tmp_path) as s:
            log = s.partition_log(GROUP)
            errors: list[bool] = []
            log.add_listener(lambda: errors.append(log.closed))
            log.close(LogClosedError("test"))
            log.close(LogClosedError("again"))  # second close: no second call
            assert errors == [True]

    run(main)
