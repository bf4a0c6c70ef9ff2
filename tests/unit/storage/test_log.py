"""PartitionLog: appends, reads, offsets, timestamps, waiting for data."""

from __future__ import annotations

import asyncio
import pathlib

import pytest

from weir.cluster.storage import EntryType, OffsetOutOfRangeError, PartitionLog

from .helpers import payload_for, run, storage

GROUP = 3


async def _append_batches(log: PartitionLog, counts: list[int], size: int = 300) -> list[int]:
    """Appends one batch per count, waits until all are durable, returns base offsets."""
    tickets = []
    for count in counts:
        base = log.next_offset
        tickets.append(await log.append(payload_for(base, size), count, 1000 + base))
    await asyncio.gather(*(t.durable for t in tickets))
    return [t.base_offset for t in tickets]


def test_append_read_round_trip_byte_for_byte(tmp_path: pathlib.Path) -> None:
    payload = bytes(range(256)) * 40 + b"\x00\xff tail"

    async def main() -> None:
        async with storage(tmp_path) as s:
            log = s.partition_log(GROUP)
            ticket = await log.append(payload, 17, 123_456)
            assert ticket.base_offset == 0
            await ticket.durable
            [batch] = log.read(0, 2**20)
            assert batch.payload == payload
            assert (batch.base_offset, batch.record_count, batch.max_timestamp_ms) == (
                0,
                17,
                123_456,
            )
            assert (log.start_offset, log.end_offset, log.next_offset) == (0, 17, 17)
            assert log.size_bytes == len(payload)

    run(main)


def test_offsets_are_dense_across_many_appends(tmp_path: pathlib.Path) -> None:
    counts = [1 + (i * 7) % 13 for i in range(300)]

    async def main() -> None:
        async with storage(tmp_path) as s:
            log = s.partition_log(GROUP)
            bases = await _append_batches(log, counts, size=40)
            expected = 0
            for base, count in zip(bases, counts, strict=True):
                assert base == expected
                expected += count
            assert log.end_offset == log.next_offset == expected
            # Reading everything back, batch after batch, yields the same sequence.
            seen, offset = [], 0
            while offset < log.end_offset:
                batches = log.read(offset, 1000)
                seen.extend((b.base_offset, b.record_count) for b in batches)
                offset = batches[-1].base_offset + batches[-1].record_count
            assert seen == list(zip(bases, counts, strict=True))

    run(main)


def test_read_mid_batch_returns_containing_batch(tmp_path: pathlib.Path) -> None:
    async def main() -> None:
        async with storage(tmp_path) as s:
            log = s.partition_log(GROUP)
            await _append_batches(log, [10, 10, 10])
            for offset in (10, 11, 15, 19):
                batches = log.read(offset, 1)
                assert [b.base_offset for b in batches] == [10]
                assert batches[0].payload == payload_for(10)
            assert log.read(29, 1)[0].base_offset == 20

    run(main)


def test_bytes_max_is_respected_but_one_batch_always_returned(tmp_path: pathlib.Path) -> None:
    async def main() -> None:
        async with storage(tmp_path) as s:
            log = s.partition_log(GROUP)
            await _append_batches(log, [5] * 10, size=300)
            assert len(log.read(0, 1)) == 1  # smaller than one batch: still one
            assert len(log.read(0, 300)) == 1
            assert len(log.read(0, 899)) == 2
            assert len(log.read(0, 900)) == 3
            assert len(log.read(0, 10**9)) == 10
            assert sum(len(b.payload) for b in log.read(12, 1000)) <= 1000

    run(main)


def test_records_max_is_exact(tmp_path: pathlib.Path) -> None:
    async def main() -> None:
        async with storage(tmp_path) as s:
            log = s.partition_log(GROUP)
            await _append_batches(log, [5] * 10, size=300)
            noop = await log.append_control(EntryType.NOOP)
            await noop.durable
            await _append_batches(log, [1] * 10, size=300)

            def bases(offset: int, records_max: int, bytes_max: int = 10**9) -> list[int]:
                return [b.base_offset for b in log.read(offset, bytes_max, records_max)]

            assert bases(0, 1) == [0]
            assert bases(0, 5) == [0]
            assert bases(0, 6) == [0, 5]
            # Counted from the offset asked for, not from its batch's start.
            assert bases(3, 2) == [0]
            assert bases(3, 3) == [0, 5]
            assert bases(48, 3) == [45, 50]  # 48, 49, then 50 across the no-op
            assert bases(48, 4) == [45, 50, 51]
            assert bases(50, 4) == [50, 51, 52, 53]
            assert bases(0, 10**6) == bases(0, 10**6, 10**9) == [*range(0, 50, 5), *range(50, 60)]
            # bytes_max still bounds it, and one batch is always returned.
            assert bases(0, 100, 600) == [0, 5]
            assert bases(0, 100, 1) == [0]

    run(main)


def test_read_run_joins_payloads_of_consecutive_batches(tmp_path: pathlib.Path) -> None:
    async def main() -> None:
        async with storage(tmp_path) as s:
            log = s.partition_log(GROUP)
            first = await log.append(b"a" * 10, 3, 1)
            noop = await log.append_control(EntryType.NOOP)
            control = await log.append_control(EntryType.NORMAL, b"commit")
            second = await log.append(b"b" * 7, 1, 2)
            third = await log.append(b"c" * 5, 4, 3)
            await asyncio.gather(*(t.durable for t in (first, noop, control, second, third)))

            run_ = log.read_run(1, 10**6, 100)
            assert run_ is not None
            assert (run_.base_offset, run_.record_count) == (0, 8)
            assert run_.payload == b"a" * 10 + b"b" * 7 + b"c" * 5
            run_ = log.read_run(3, 10**6, 1)
            assert run_ is not None
            assert (run_.base_offset, run_.record_count, run_.payload) == (3, 1, b"b" * 7)
            run_ = log.read_run(4, 1, 100)
            assert run_ is not None
            assert (run_.base_offset, run_.record_count, run_.payload) == (4, 4, b"c" * 5)
            assert log.read_run(8, 100, 100) is None
            with pytest.raises(OffsetOutOfRangeError):
                log.read_run(9, 100, 100)

    run(main)


def test_a_read_visits_rows_once(tmp_path: pathlib.Path) -> None:
    """One cursor walk per read: the rows counted are the rows the read covers."""

    async def main() -> None:
        async with storage(tmp_path) as s:
            log = s.partition_log(GROUP)
            await _append_batches(log, [1] * 1000, size=100)
            env_reads = s.stats()["env_rows_read"]
            run_ = log.read_run(10, 10**9, 1000 - 10)
            assert run_ is not None and run_.record_count == 990
            # One index lookup and the 990 rows.
            assert s.stats()["env_rows_read"] - env_reads == 1 + 990

    run(main)


def test_out_of_range_offsets(tmp_path: pathlib.Path) -> None:
    async def main() -> None:
        async with storage(tmp_path) as s:
            log = s.partition_log(GROUP)
            assert log.read(0, 100) == []  # empty log: offset == end
            await _append_batches(log, [4, 4])
            assert log.read(8, 100) == []
            with pytest.raises(OffsetOutOfRangeError) as info:
                log.read(9, 100)
            assert (info.value.start_offset, info.value.end_offset) == (0, 8)
            with pytest.raises(OffsetOutOfRangeError):
                log.read(-1, 100)

    run(main)


def test_timestamp_lookup_with_unordered_producer_clocks(tmp_path: pathlib.Path) -> None:
    async def main() -> None:
        async with storage(tmp_path) as s:
            log = s.partition_log(GROUP)
            tickets = [await log.append(b"x" * 10, 10, ts) for ts in (100, 50, 200, 150, 300, 300)]
            await asyncio.gather(*(t.durable for t in tickets))
            assert log.offset_for_timestamp(-10) == 0
            assert log.offset_for_timestamp(60) == 0  # batch 0 (max 100) qualifies first
            assert log.offset_for_timestamp(100) == 0
            assert log.offset_for_timestamp(101) == 20  # batch 10 (max 50) is skipped
            assert log.offset_for_timestamp(160) == 20
            assert log.offset_for_timestamp(201) == 40
            assert log.offset_for_timestamp(300) == 40
            assert log.offset_for_timestamp(301) == log.end_offset == 60

    run(main)


def test_control_entries_take_no_offsets(tmp_path: pathlib.Path) -> None:
    async def main() -> None:
        async with storage(tmp_path) as s:
            log = s.partition_log(GROUP)
            first = await log.append(b"a" * 10, 3, 1)
            noop = await log.append_control(EntryType.NOOP)
            second = await log.append(b"b" * 10, 2, 2)
            await asyncio.gather(first.durable, noop.durable, second.durable)
            assert (first.base_offset, noop.base_offset, second.base_offset) == (0, 3, 3)
            assert log.next_raft_index == 4
            assert [b.payload for b in log.read(0, 100)] == [b"a" * 10, b"b" * 10]
            assert log.read(3, 100)[0].payload == b"b" * 10

    run(main)


def test_end_offset_moves_only_on_commit_and_wakes_waiters(tmp_path: pathlib.Path) -> None:
    async def main() -> None:
        async with storage(tmp_path) as s:
            log = s.partition_log(GROUP)
            waiter = asyncio.create_task(log.wait_for_data(0))
            await asyncio.sleep(0)
            assert not waiter.done()
            ticket = await log.append(b"abc", 1, 5)
            # Queued, not yet committed: assigned but invisible to readers.
            assert (log.next_offset, log.end_offset) == (1, 0)
            assert log.read(0, 10) == []
            await asyncio.wait_for(waiter, 5)
            assert ticket.durable.done()
            assert log.end_offset == 1
            await log.wait_for_data(0)  # already there: returns at once

    run(main)


def test_cancelled_waiter_does_not_disturb_others(tmp_path: pathlib.Path) -> None:
    async def main() -> None:
        async with storage(tmp_path) as s:
            log = s.partition_log(GROUP)
            first = asyncio.create_task(log.wait_for_data(0))
            second = asyncio.create_task(log.wait_for_data(0))
            await asyncio.sleep(0)
            first.cancel()
            await (await log.append(b"x", 1, 1)).durable
            await asyncio.wait_for(second, 5)
            assert first.cancelled()

    run(main)
