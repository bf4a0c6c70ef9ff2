"""Retention: whole oldest entries go, offsets keep their meaning, state persists."""

from __future__ import annotations

import asyncio
import pathlib

import pytest

from weir.cluster.storage import OffsetOutOfRangeError

from .helpers import FakeClock, payload_for, raw_rows, run, storage

GROUP = 9


def test_retention_by_bytes_deletes_whole_oldest_batches(tmp_path: pathlib.Path) -> None:
    async def main() -> None:
        async with storage(tmp_path) as s:
            log = s.partition_log(GROUP)
            for _ in range(10):
                await (await log.append(payload_for(log.next_offset, 100), 5, 1)).durable
            assert log.size_bytes == 1000
            # 350 bytes allowed: 7 batches of 100 must go (300 left), never part of one.
            assert await s.enforce_retention(GROUP, 350, None) == 7
            assert (log.start_offset, log.end_offset, log.size_bytes) == (35, 50, 300)
            with pytest.raises(OffsetOutOfRangeError) as info:
                log.read(34, 100)
            assert (info.value.start_offset, info.value.end_offset) == (35, 50)
            # Surviving offsets still name the same records.
            batch = log.read(37, 1)[0]
            assert (batch.base_offset, batch.payload) == (35, payload_for(35, 100))
            assert await s.enforce_retention(GROUP, 350, None) == 0
            assert await s.enforce_retention(GROUP, None, None) == 0
            # The next append continues the offset sequence.
            assert (await log.append(b"n", 1, 1)).base_offset == 50

    run(main)


def test_retention_by_age_uses_append_time(tmp_path: pathlib.Path) -> None:
    clock = FakeClock(10_000)

    async def main() -> None:
        async with storage(tmp_path, clock_ms=clock) as s:
            log = s.partition_log(GROUP)
            for step in range(5):
                clock.now_ms = 10_000 + step * 1000
                # Producer timestamps are irrelevant for age retention.
                await (await log.append(b"p" * 10, 2, 99_999_999)).durable
            clock.now_ms = 15_500
            # Older than 3 s: appended before 12_500, i.e. at 10_000, 11_000, 12_000.
            assert await s.enforce_retention(GROUP, None, 3000) == 3
            assert log.start_offset == 6
            assert [b.append_time_ms for b in log.read(6, 1000)] == [13_000, 14_000]
            clock.now_ms = 100_000
            assert await s.enforce_retention(GROUP, None, 3000) == 2
            # Everything is gone but the offset sequence continues.
            assert (log.start_offset, log.end_offset, log.size_bytes) == (10, 10, 0)
            assert log.read(10, 100) == []
            assert (await log.append(b"q", 1, 1)).base_offset == 10
        async with storage(tmp_path, clock_ms=clock) as s:
            log = s.partition_log(GROUP)
            assert (log.start_offset, log.end_offset) == (10, 11)

    run(main)


def test_retention_emptying_the_log_survives_reopen(tmp_path: pathlib.Path) -> None:
    async def main() -> None:
        async with storage(tmp_path) as s:
            log = s.partition_log(GROUP)
            for _ in range(3):
                await (await log.append(b"z" * 50, 4, 1)).durable
            assert await s.enforce_retention(GROUP, 0, None) == 3
        async with storage(tmp_path) as s:
            log = s.partition_log(GROUP)
            assert (log.start_offset, log.end_offset, log.next_offset, log.size_bytes) == (
                12,
                12,
                12,
                0,
            )
            ticket = await log.append(b"after", 1, 1)
            await ticket.durable
            assert ticket.base_offset == 12
            assert log.read(12, 10)[0].payload == b"after"

    run(main)


def test_retention_removes_index_rows_and_repairs_time_index(tmp_path: pathlib.Path) -> None:
    async def main() -> None:
        async with storage(tmp_path) as s:
            log = s.partition_log(GROUP)
            # Batch 0 holds a far-future timestamp: batches 10 and 20 are not
            # in the time index until batch 0 is deleted.
            tickets = [await log.append(b"t" * 10, 10, ts) for ts in (900, 50, 70, 1000)]
            await asyncio.gather(*(t.durable for t in tickets))
            assert log.offset_for_timestamp(60) == 0
            assert await s.enforce_retention(GROUP, 30, None) == 1
            assert log.offset_for_timestamp(40) == 10
            assert log.offset_for_timestamp(60) == 20
            assert log.offset_for_timestamp(71) == 30
            # A batch appended after the retention is indexed against the new max.
            await (await log.append(b"t", 1, 2000)).durable
            assert log.offset_for_timestamp(1500) == 40
        offsets = {int.from_bytes(k[4:12], "big") for k, _ in raw_rows(tmp_path, b"offset_index")}
        assert offsets == {10, 20, 30, 40}
        assert len(raw_rows(tmp_path, b"log")) == 4

    run(main)


def test_retention_after_queued_appends_keeps_time_index_exact(tmp_path: pathlib.Path) -> None:
    """Retention and appends queued in the same writer turn stay in FIFO order."""

    async def main() -> None:
        async with storage(tmp_path) as s:
            log = s.partition_log(GROUP)
            await (await log.append(b"a", 1, 500)).durable
            retention = asyncio.create_task(s.enforce_retention(GROUP, 0, None))
            await asyncio.sleep(0)
            # Queued behind the delete of the only (max 500) batch: must be indexed.
            await (await log.append(b"b", 1, 100)).durable
            assert await retention == 1
            assert log.offset_for_timestamp(50) == 1

    run(main)
